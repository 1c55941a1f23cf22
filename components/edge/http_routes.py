"""The Gateway API's HTTPRoute rules as the edge writes them: a leaf of plain data, shared by the
gateway (pages, the catch-all API rule) and the model routing (the models' own rules).

Istio names a rule's Envoy route after the rule's `name` (which must be unique on the gateway), and
orders rules by how specific their matches are — exact path before prefix, the longer prefix
first, then the rule with more header matches — then by their order in the route."""

from __future__ import annotations

from typing import Mapping, Sequence

import pulumi

API_PREFIX = "/v1"


def service_ref(host: pulumi.Input[str], port: int) -> dict:
    """A backendRef to a Service given by its cluster DNS name (`<name>.<namespace>.svc...`)."""
    parts = pulumi.Output.from_input(host).apply(lambda h: h.split("."))
    return {"kind": "Service", "name": parts.apply(lambda p: p[0]), "namespace": parts.apply(lambda p: p[1]),
            "port": port}


def prefix_match(prefix: str, headers: Mapping[str, str] | None = None) -> dict:
    match: dict = {"path": {"type": "PathPrefix", "value": prefix}}
    if headers:
        match["headers"] = [{"type": "Exact", "name": k, "value": v} for k, v in headers.items()]
    return match


def rule(name: str, match: dict, backend: dict, remove_response_headers: Sequence[str] = (),
         stream: bool = False) -> dict:
    """One rule to one backend; `stream`: no request timeout (a generation streams as long as it
    takes; Istio reads "0s" as none, as it does a missing one)."""
    entry: dict = {"name": name, "matches": [match], "backendRefs": [backend]}
    if remove_response_headers:
        entry["filters"] = [{"type": "ResponseHeaderModifier",
                             "responseHeaderModifier": {"remove": list(remove_response_headers)}}]
    if stream:
        entry["timeouts"] = {"request": "0s"}
    return entry
