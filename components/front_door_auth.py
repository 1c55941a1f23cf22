"""The front door's custom auth (LiteLLM `general_settings.custom_auth`): the UI's own key opens the
inference routes alone, and needs no database.

It ships next to the proxy's config.yaml, where LiteLLM loads it by file: it imports only the
standard library, and LiteLLM when called (the program reads its constants). With
`custom_auth_settings.mode: auto`, a plain exception hands the request to LiteLLM's own auth
(master key, virtual keys); a ProxyException is the answer the client gets.
"""

from __future__ import annotations

import hmac
import os

UI_KEY_ENV = "LITELLM_UI_KEY"
UI_KEY_ALIAS = "open-webui"
# (method, path) the UI calls: its model list, chats, and embeddings for its knowledge base.
UI_ROUTES = frozenset({
    ("GET", "/models"), ("GET", "/v1/models"),
    ("POST", "/chat/completions"), ("POST", "/v1/chat/completions"),
    ("POST", "/embeddings"), ("POST", "/v1/embeddings"),
})
BEARER = "Bearer "


class NotTheUiKey(Exception):
    """Any other key: LiteLLM's own auth decides."""


def _is_ui_key(presented: str) -> bool:
    expected = os.environ.get(UI_KEY_ENV, "")
    # Bytes: compare_digest refuses non-ASCII str, and a client may send anything.
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


async def user_api_key_auth(request, api_key: str):
    from litellm.proxy._types import LitellmUserRoles, ProxyErrorTypes, ProxyException, UserAPIKeyAuth

    # LiteLLM passes the bearer token bare; strip the scheme should it ever not.
    key = (api_key or "").removeprefix(BEARER).strip()
    if not key or not _is_ui_key(key):
        raise NotTheUiKey()
    # The path the server dispatches on (request.url is rebuilt from the Host header and may differ).
    route = request.scope.get("path", "")
    if (request.method, route) not in UI_ROUTES:
        raise ProxyException(message=f"The UI's key may not call {request.method} {route}",
                             type=ProxyErrorTypes.auth_error, param="None", code=403)
    return UserAPIKeyAuth(api_key=key, key_alias=UI_KEY_ALIAS, user_role=LitellmUserRoles.INTERNAL_USER)
