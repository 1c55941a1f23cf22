"""The front door's custom auth (LiteLLM `general_settings.custom_auth`): the UI's own key opens the
inference routes alone, only when the UI's pod calls; a team's key opens the team's own models
alone; a budgeted team's key, once held to the same, goes on to LiteLLM's own auth, where it is a
virtual key with a budget. Only the budgeted keys need the database. Any key's POST naming a model
in the query string is refused: LiteLLM checks a virtual key's models against the body's `model`
but serves the query's.

It ships next to the proxy's config.yaml, where LiteLLM loads it by file: it imports only the
standard library, and LiteLLM when called (the program reads its constants). With
`custom_auth_settings.mode: auto`, a plain exception hands the request to LiteLLM's own auth
(master key, virtual keys); a ProxyException is the answer the client gets.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
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
# The teams' keys and models, as JSON: {"<team>": {"key": "...", "models": ["<alias>", ...]}}, and
# `"budget": true` for a team whose key is also one of the proxy's virtual keys.
TEAM_KEYS_ENV = "LITELLM_TEAM_KEYS"
TEAM_KEY_ALIAS_PREFIX = "team-"
# (method, path) a team's key may call: the model list (LiteLLM shows the key's models alone) and
# inference, whose body must name one of the team's models (LiteLLM's own model check does not
# hold a key a custom auth returns).
TEAM_LIST_ROUTES = frozenset({("GET", "/models"), ("GET", "/v1/models")})
# Body keys that make LiteLLM's router call another model than the body's `model`.
TEAM_REFUSED_BODY_KEYS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks",
                          "mock_testing_fallbacks", "router_settings_override", "model_list")
TEAM_INFERENCE_ROUTES = frozenset(
    ("POST", prefix + path) for prefix in ("", "/v1") for path in ("/chat/completions", "/completions", "/embeddings"))


class NotTheUiKey(Exception):
    """A key for LiteLLM's own auth to decide on: not the UI's, nor a team's without a budget."""


def _is_ui_key(presented: str) -> bool:
    expected = os.environ.get(UI_KEY_ENV, "")
    # Bytes: compare_digest refuses non-ASCII str, and a client may send anything.
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


def team_of(presented: str) -> "tuple[str, list[str], bool] | None":
    """The team whose key this is, its models, and whether the key has a budget; None for any
    other key. Every team's key is compared, so the time taken does not tell which came close."""
    found = None
    for team, entry in sorted(json.loads(os.environ.get(TEAM_KEYS_ENV) or "{}").items()):
        if hmac.compare_digest(presented.encode(), str(entry.get("key", "")).encode()) and entry.get("key"):
            found = (team, list(entry.get("models", [])), bool(entry.get("budget")))
    return found


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
    route = request.scope.get("path", "")
    # LiteLLM takes a `model` query parameter over the body's on its inference routes, after
    # checking the body's against a virtual key's models: refused for every key on every POST.
    if request.method == "POST" and "model" in request.query_params:
        raise ProxyException(message="Name the model in the request body, not in the query string",
                             type=ProxyErrorTypes.auth_error, param="model", code=403)
    team = team_of(key) if key else None
    if team is not None:
        if (request.method, route) in TEAM_INFERENCE_ROUTES:
            # The proxy parsed the body before calling here; this reads its cached copy.
            from litellm.proxy.common_utils.http_parsing_utils import _read_request_body

            body = await _read_request_body(request)
            model = body.get("model")
            if any(k in body for k in TEAM_REFUSED_BODY_KEYS):
                raise ProxyException(message="A team's key calls its model without fallbacks",
                                     type=ProxyErrorTypes.auth_error, param="model", code=403)
            if model not in team[1]:
                raise ProxyException(message=f"Team {team[0]}'s key may not call model {model!r}",
                                     type=ProxyErrorTypes.auth_error, param="model", code=403)
        elif (request.method, route) not in TEAM_LIST_ROUTES:
            raise ProxyException(message=f"A team's key may not call {request.method} {route}",
                                 type=ProxyErrorTypes.auth_error, param="None", code=403)
        if team[2]:
            # A virtual key too: LiteLLM's own auth holds it to its models and its budget.
            raise NotTheUiKey()
        # `models` also narrows the model list to the team's.
        return UserAPIKeyAuth(api_key=key, key_alias=TEAM_KEY_ALIAS_PREFIX + team[0], models=team[1],
                              user_role=LitellmUserRoles.INTERNAL_USER)
    if not key or not _is_ui_key(key):
        raise NotTheUiKey()
    if not from_the_ui(request.headers):
        raise ProxyException(message=NOT_FROM_THE_UI, type=ProxyErrorTypes.auth_error, param="None", code=403)
    # `route` is the path the server dispatches on (request.url is rebuilt from the Host header).
    if (request.method, route) not in UI_ROUTES:
        raise ProxyException(message=f"The UI's key may not call {request.method} {route}",
                             type=ProxyErrorTypes.auth_error, param="None", code=403)
    return UserAPIKeyAuth(api_key=key, key_alias=UI_KEY_ALIAS, user_role=LitellmUserRoles.INTERNAL_USER)
