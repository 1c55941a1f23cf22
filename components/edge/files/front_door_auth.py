"""The front door's custom auth (LiteLLM `general_settings.custom_auth`): the UI's own key opens the
inference routes alone, only when the UI's pod calls, and needs no database.

It ships next to the proxy's config.yaml, where LiteLLM loads it by file: it imports only the
standard library, and LiteLLM when called (the program reads its constants). With
`custom_auth_settings.mode: auto`, a plain exception hands the request to LiteLLM's own auth
(master key, virtual keys); a ProxyException is the answer the client gets.
"""

from __future__ import annotations

import hmac
import importlib.util
import os

if importlib.util.find_spec("litellm") is not None:
    # Loaded by the proxy: `custom_auth_settings.mode: auto` is applied by this package alone;
    # without it LiteLLM takes this function's answer for every key, refusing the master key, so
    # an image lacking it fails at start instead.
    import litellm_enterprise.proxy.auth.user_api_key_auth  # noqa: F401

UI_KEY_ENV = "LITELLM_UI_KEY"
# The UI's mesh identity (spiffe://<trust domain>/ns/<namespace>/sa/<service account>).
UI_PEER_ENV = "LITELLM_UI_PEER"
UI_KEY_ALIAS = "open-webui"
# The front door's sidecar appends its mTLS peer's certificate details (URI: the peer's SPIFFE
# id) as the last element of this header, and drops a client's on a connection without mTLS.
XFCC_HEADER = "x-forwarded-client-cert"
NOT_FROM_THE_UI = "The UI's key is accepted only from the UI"
# (method, path) the UI calls: its model list and chats. Not embeddings: Open WebUI (0.11) embeds
# its knowledge base with a local model unless RAG_EMBEDDING_ENGINE says otherwise, and its
# OpenAI engine would send RAG_OPENAI_API_KEY, not this key; only its pass-through for API
# clients (`/api/v1/embeddings`) would present this key there.
UI_ROUTES = frozenset({
    ("GET", "/models"), ("GET", "/v1/models"),
    ("POST", "/chat/completions"), ("POST", "/v1/chat/completions"),
})
BEARER = "Bearer "


class NotTheUiKey(Exception):
    """Any other key: LiteLLM's own auth decides."""


def _is_ui_key(presented: str) -> bool:
    expected = os.environ.get(UI_KEY_ENV, "")
    # Bytes: compare_digest refuses non-ASCII str, and a client may send anything.
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


class _Unbalanced(ValueError):
    """A quote left open: the header cannot be told apart into elements."""


def _split(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside double quotes (XFCC quotes values holding , ; or =); a
    quote left open raises, since it would hide the elements after it."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted:
        raise _Unbalanced(text)
    parts.append("".join(current))
    return parts


def last_peer_uris(xfcc: str) -> list[str]:
    """The URI values of the header's last element: the front door's own sidecar's peer."""
    pairs = (p.partition("=") for p in _split(_split(xfcc, ",")[-1], ";"))
    return [value.strip().strip('"') for key, _, value in pairs if key.strip().lower() == "uri"]


def from_the_ui(headers) -> bool:
    expected = os.environ.get(UI_PEER_ENV, "")
    values = headers.getlist(XFCC_HEADER)
    # One header line: a second one would be the client's, beside what the sidecar wrote.
    try:
        return bool(expected) and len(values) == 1 and last_peer_uris(values[0]) == [expected]
    except _Unbalanced:
        return False


async def user_api_key_auth(request, api_key: str):
    from litellm.proxy._types import LitellmUserRoles, ProxyErrorTypes, ProxyException, UserAPIKeyAuth

    # LiteLLM passes the bearer token bare; strip the scheme should it ever not.
    key = (api_key or "").removeprefix(BEARER).strip()
    if not key or not _is_ui_key(key):
        raise NotTheUiKey()
    if not from_the_ui(request.headers):
        raise ProxyException(message=NOT_FROM_THE_UI, type=ProxyErrorTypes.auth_error, param="None", code=403)
    # The path the server dispatches on (request.url is rebuilt from the Host header and may differ).
    route = request.scope.get("path", "")
    if (request.method, route) not in UI_ROUTES:
        raise ProxyException(message=f"The UI's key may not call {request.method} {route}",
                             type=ProxyErrorTypes.auth_error, param="None", code=403)
    return UserAPIKeyAuth(api_key=key, key_alias=UI_KEY_ALIAS, user_role=LitellmUserRoles.INTERNAL_USER)
