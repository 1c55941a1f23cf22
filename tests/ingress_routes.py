"""What the ingress answers a request with, read from the program's Gateway API objects as istiod
programs the gateway's pods from them:

- the Gateway's listeners on the request's port whose `hostname` matches its host (none set:
  any host); none: no virtual host answers (a 404, or no TLS handshake on HTTPS);
- the HTTPRoutes attached to such a listener: a parentRef naming the Gateway (and the listener,
  where it names a section or port), from a namespace the listener allows (`Same` unless it says
  otherwise), with `hostnames` matching the host (none set: the listener's);
- their rules in the Gateway API's precedence, which istiod keeps: an exact path before a
  prefix, the longer prefix first, then a method match, then more header matches, then more
  query matches, then the routes' order and each route's own rule order. A PathPrefix matches
  whole segments (`/v1` matches `/v1` and `/v1/models`, not `/v1beta`); a rule without
  matches matches every path;
- routes of other gateways on the same host and port (the VirtualService istiod derives from an
  Ingress, cert-manager's HTTP-01 solver) are merged into the same virtual host, after which the
  virtual host moves catch-all routes (every path, no other condition) last
  (pilot/pkg/networking/core/gateway.go, route.SortVHostRoutes);
- the first match wins: a RequestRedirect filter answers `redirect:<scheme>`; a backendRef in
  another namespace is used only if a ReferenceGrant there lets HTTPRoutes of the route's
  namespace name Services (istiod answers 500 otherwise: `refused:<namespace>/<name>`); else the
  backend's cluster DNS name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from tools import mock_engine as harness
from tools.charts import plain

GROUP = "gateway.networking.k8s.io"


def of_kind(rec: harness.Recording, kind: str) -> list[harness.Registration]:
    """The Gateway API objects of `kind`, whichever version the program writes them in."""
    return [r for r in rec.registrations
            if r.type.startswith(f"kubernetes:{GROUP}/") and r.type.rsplit(":", 1)[1] == kind]


def objects(rec: harness.Recording, kind: str) -> list[dict]:
    return [plain(r.inputs) for r in of_kind(rec, kind)]


def gateway(rec: harness.Recording) -> dict:
    (gw,) = objects(rec, "Gateway")
    return gw


def listeners(rec: harness.Recording) -> list[dict]:
    return gateway(rec)["spec"]["listeners"]


def bound_service(gw: dict) -> list[tuple[str, str]]:
    """(name, namespace) of each Service the Gateway is bound to by a Hostname address: its
    cluster DNS name, or a short name, which istiod completes with the Gateway's namespace."""
    out = []
    for address in gw["spec"].get("addresses") or []:
        assert address.get("type", "IPAddress") == "Hostname", address
        parts = address["value"].split(".")
        assert len(parts) == 1 or address["value"].endswith(".svc.cluster.local"), address
        out.append((parts[0], parts[1] if len(parts) > 1 else gw["metadata"]["namespace"]))
    return out


def http_route(rec: harness.Recording, name: str = "llm-routes") -> dict:
    (route,) = [r for r in objects(rec, "HTTPRoute") if r["metadata"]["name"] == name]
    return route


def rules(rec: harness.Recording, name: str = "llm-routes") -> dict[str, dict]:
    """The rules of one HTTPRoute by name, in the route's order."""
    return {r["name"]: r for r in http_route(rec, name)["spec"]["rules"]}


def backend_host(ref: Mapping, route_namespace: str) -> str:
    assert ref.get("group", "") == "" and ref.get("kind", "Service") == "Service", ref
    return f"{ref['name']}.{ref.get('namespace', route_namespace)}.svc.cluster.local"


def _host_matches(pattern: Optional[str], host: str) -> bool:
    if pattern is None:
        return True
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return pattern == host


def _attached(route: dict, gw: dict, listener: dict) -> bool:
    route_ns = route["metadata"]["namespace"]
    allowed = ((listener.get("allowedRoutes") or {}).get("namespaces") or {}).get("from", "Same")
    if allowed == "Same" and route_ns != gw["metadata"]["namespace"]:
        return False
    for ref in route["spec"].get("parentRefs") or []:
        if (ref.get("group", GROUP), ref.get("kind", "Gateway")) != (GROUP, "Gateway"):
            continue
        if ref["name"] != gw["metadata"]["name"] or ref.get("namespace", route_ns) != gw["metadata"]["namespace"]:
            continue
        if ref.get("sectionName") not in (None, listener["name"]) or ref.get("port") not in (None, listener["port"]):
            continue
        return True
    return False


def _path_matches(path_match: Mapping, path: str) -> bool:
    value = path_match["value"]
    if path_match.get("type", "PathPrefix") == "Exact":
        return path == value
    assert path_match.get("type", "PathPrefix") == "PathPrefix", path_match
    prefix = value.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _matches(match: Mapping, method: str, path: str, headers: Mapping[str, str]) -> bool:
    if not _path_matches(match.get("path") or {"type": "PathPrefix", "value": "/"}, path):
        return False
    if match.get("method") not in (None, method):
        return False
    lowered = {k.lower(): v for k, v in headers.items()}
    for h in match.get("headers") or []:
        assert h.get("type", "Exact") == "Exact", h
        if lowered.get(h["name"].lower()) != h["value"]:
            return False
    return not match.get("queryParams")


def _precedence(match: Mapping) -> tuple:
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}
    return (path.get("type", "PathPrefix") != "Exact", -len(path["value"]), "method" not in match,
            -len(match.get("headers") or []), -len(match.get("queryParams") or []))


def _catch_all(match: Optional[Mapping]) -> bool:
    if match is None:
        return True
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}
    return (path.get("type", "PathPrefix") == "PathPrefix" and path["value"] == "/"
            and not match.get("headers") and not match.get("method") and not match.get("queryParams"))


def _granted(rec: harness.Recording, route_ns: str, ref: Mapping) -> bool:
    ns = ref.get("namespace", route_ns)
    if ns == route_ns:
        return True
    for grant in objects(rec, "ReferenceGrant"):
        if grant["metadata"]["namespace"] != ns:
            continue
        spec = grant["spec"]
        if not any(f["group"] == GROUP and f["kind"] == "HTTPRoute" and f["namespace"] == route_ns
                   for f in spec.get("from") or []):
            continue
        if any(t.get("group", "") == "" and t["kind"] == "Service" and t.get("name") in (None, ref["name"])
               for t in spec.get("to") or []):
            return True
    return False


@dataclass(frozen=True)
class Other:
    """A route of another gateway on the same host and port: an exact path or a prefix, and the
    Service host it goes to."""

    path: str
    host: str
    exact: bool = True


def answer(rec: harness.Recording, port: int, host: str, path: str, method: str = "GET",
           headers: Optional[Mapping[str, str]] = None, others: Iterable[Other] = ()) -> Optional[str]:
    """What the ingress does with `method path` on `port` for `Host: host` (see the module's
    docstring). None: nothing answers it."""
    gw = gateway(rec)
    path = path.split("?", 1)[0]
    candidates: list[tuple[tuple, int, int, Optional[dict], str, dict]] = []
    bound = [lst for lst in gw["spec"]["listeners"] if lst["port"] == port and _host_matches(lst.get("hostname"), host)]
    if not bound:
        return None
    for order, route in enumerate(objects(rec, "HTTPRoute")):
        if not any(_attached(route, gw, lst) for lst in bound):
            continue
        names = route["spec"].get("hostnames")
        if names and not any(_host_matches(n, host) for n in names):
            continue
        for index, rule in enumerate(route["spec"].get("rules") or []):
            for match in rule.get("matches") or [None]:
                key = _precedence(match or {})
                candidates.append((key, order, index, match, route["metadata"]["namespace"], rule))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    merged: list[tuple[Optional[dict], Any]] = [(c[3], (c[4], c[5])) for c in candidates]
    for other in others:
        merged.append(({"path": {"type": "Exact" if other.exact else "PathPrefix", "value": other.path}}, other.host))
    merged.sort(key=lambda m: _catch_all(m[0]))  # stable: catch-alls last
    for match, target in merged:
        if not _matches(match or {}, method, path, headers or {}):
            continue
        if isinstance(target, str):
            return target
        route_ns, rule = target
        redirect = next((f["requestRedirect"] for f in rule.get("filters") or [] if f["type"] == "RequestRedirect"), None)
        if redirect is not None:
            return f"redirect:{redirect.get('scheme', 'http')}"
        (ref,) = rule["backendRefs"]
        if not _granted(rec, route_ns, ref):
            return f"refused:{ref.get('namespace', route_ns)}/{ref['name']}"
        return backend_host(ref, route_ns)
    return None
