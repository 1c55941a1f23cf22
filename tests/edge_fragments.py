"""The edge's Envoy configuration, written by hand as the fragments the program is to render into
Istio EnvoyFilters and routes: the API-key check (Lua), the body-based router as an external
processor, one route per model, the model list Envoy answers itself, and the answers for a
request that names no model or an unknown one. tests/edge_path.py assembles them into a bootstrap.

Filter order matters: the key check runs first, so no request body reaches the router unless its
key passed; the router's ext_proc then sees the request headers and the whole body (BUFFERED) once
and never the response, so the tokens stream back through Envoy alone.
"""

from __future__ import annotations

import hashlib
import re
import json
from pathlib import Path
from typing import Iterable, Optional

from tests.edge_path import MODEL_HEADER

LUA = "envoy.filters.http.lua"
EXT_PROC = "envoy.filters.http.ext_proc"
API_KEY_LUA = Path(__file__).with_name("edge_api_key.lua")


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_lua(digests: Iterable[str]) -> str:
    """The key check's Lua source with the accepted keys' SHA-256 digests (lowercase hex)."""
    digests = list(digests)
    bad = [d for d in digests if not re.fullmatch(r"[0-9a-f]{64}", d)]
    assert not bad, f"not a lowercase hex SHA-256 digest: {bad}"
    table = ", ".join(f'["{d}"] = true' for d in sorted(set(digests)))
    return f"local KEY_DIGESTS = {{{table}}}\n\n" + API_KEY_LUA.read_text()


def lua_filter(source: str) -> dict:
    return {"name": LUA, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": source}}}


def api_key_filter(digests: Iterable[str]) -> dict:
    return lua_filter(api_key_lua(digests))


def ext_proc_filter(cluster: str, timeout: str = "2s") -> dict:
    """The body-based router as Envoy's external processor: request headers and the buffered body
    go to it once; the response never does. A router that does not answer fails the request."""
    return {"name": EXT_PROC, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
        "failure_mode_allow": False,
        "message_timeout": timeout,
        "processing_mode": {
            "request_header_mode": "SEND", "request_body_mode": "BUFFERED", "request_trailer_mode": "SKIP",
            "response_header_mode": "SKIP", "response_body_mode": "NONE", "response_trailer_mode": "SKIP",
        },
    }}


_NO_EXT_PROC = {EXT_PROC: {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                           "disabled": True}}


def _json_response(status: int, body: dict) -> dict:
    return {"direct_response": {"status": status, "body": {"inline_string": json.dumps(body)}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"},
                                         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": "model", "code": code}}


def models_route(aliases: Iterable[str]) -> dict:
    """`GET /v1/models` answered by Envoy from the configuration, without asking the router."""
    listing = {"object": "list", "data": [{"id": a, "object": "model", "created": 0, "owned_by": "llm-platform"}
                                          for a in aliases]}
    return {"name": "models", "match": {"path": "/v1/models"}, **_json_response(200, listing),
            "typed_per_filter_config": _NO_EXT_PROC}


def model_route(alias: str, cluster: str, backend_key: Optional[str] = None) -> dict:
    """Requests whose body names `alias` go to `cluster`, with the backend's own key (the
    client's was removed by the key check). No route timeout: a generation streams as long as
    it takes (Envoy's default would cut it at 15 s)."""
    route = {"name": f"model-{alias}",
             "match": {"prefix": "/v1/", "headers": [{"name": MODEL_HEADER, "string_match": {"exact": alias}}]},
             "route": {"cluster": cluster, "timeout": "0s"}}
    if backend_key:
        route["request_headers_to_add"] = [{"header": {"key": "authorization", "value": f"Bearer {backend_key}"},
                                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return route


def unknown_model_route() -> dict:
    """The router named a model no route serves: 404, as OpenAI's API answers."""
    return {"name": "unknown-model", "match": {"prefix": "/v1/", "headers": [{"name": MODEL_HEADER,
                                                                             "present_match": True}]},
            **_json_response(404, _error("The model does not exist.", "model_not_found"))}


def no_model_route() -> dict:
    """A POST whose body names no model (the router set no header): 400."""
    return {"name": "no-model", "match": {"prefix": "/v1/", "headers": [{"name": ":method",
                                                                        "string_match": {"exact": "POST"}}]},
            **_json_response(400, _error("The request names no model.", "model_required"))}


def routes(backends: dict[str, tuple[str, Optional[str]]]) -> list[dict]:
    """Every route, in order: the model list, one per model ({alias: (cluster, backend key)}),
    then the answers for an unknown model and for none."""
    return [models_route(backends), *(model_route(a, c, k) for a, (c, k) in backends.items()),
            unknown_model_route(), no_model_route()]
