"""Envoy configuration for the edge benchmark and the key check's unit tests: the program's own
key check and external-processor filters (components/edge/model_routing.py) with routes written
here by hand (one per model with its backend key, the model list, 404 and 400 answers), so one
path can be measured step by step. tests/edge_istio.py builds the ingress's whole configuration
from the program's objects instead.

Filter order matters: the key check runs first, so no request body reaches the router unless its
key passed; the router's ext_proc then sees the request headers and the whole body (BUFFERED) once
and never the response, so the tokens stream back through Envoy alone.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

from components.edge import model_routing as routing
from tests.edge_path import MODEL_HEADER

def key_digest(key: str) -> str:
    return routing.key_digest("", key)


def api_key_lua(digests: Iterable[str]) -> str:
    """The program's key check (files/api_key.lua) with an empty salt and the given digests: every
    request under /v1 needs one of those keys, nothing goes on to a front door, no model list."""
    return routing.key_check_source(salt="", digests=list(digests), open_api=False, front_door=False, models=None)


lua_filter = routing.lua_filter
ext_proc_filter = routing.ext_proc_filter


def api_key_filter(digests: Iterable[str]) -> dict:
    return lua_filter(api_key_lua(digests))




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
            "typed_per_filter_config": routing.NO_EXT_PROC}


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
