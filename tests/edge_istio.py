"""The ingress's Envoy configuration built from the program's own objects, as istiod builds it for
the gateway's pods: the EnvoyFilter's HTTP-filter patches inserted before the router in their
order, the VirtualService's `http` routes in their order (Istio names an Envoy route after the
`http` entry, and its clusters `outbound|<port>||<host>`), the EnvoyFilter's route patches merged
into the routes they name and its listener patches into the listener. Each Service the routes or filters name is mapped to a loopback port.

What istiod adds besides (its own filters, mTLS to the upstreams, stats) is left out: the claims
tested on this are about which request goes where, with which key, and what streams back.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from components.edge import front_door as front_door_parts
from components.edge import model_routing as routing
from tests import edge_path as edge

# What istiod sets on every gateway's HTTP connection manager that changes how a request flows:
# `Expect: 100-continue` passed on to the upstream, WebSocket upgrades allowed.
ISTIO_GATEWAY_HCM = {"proxy_100_continue": True, "upgrade_configs": [{"upgrade_type": "websocket"}]}


def cluster_name(host: str, port: int) -> str:
    return f"outbound|{int(port)}||{host}"


def _string_match(spec: Mapping) -> dict:
    (kind, value), = spec.items()
    return {kind if kind in ("exact", "prefix") else "safe_regex": value if kind != "regex" else {"regex": value}}


def _routes(http: Iterable[Mapping]) -> list[dict]:
    routes = []
    for entry in http:
        action: dict
        if "directResponse" in entry:
            direct = entry["directResponse"]
            action = {"direct_response": {"status": direct["status"], "body": {"inline_string": direct["body"]["string"]}}}
        else:
            destinations = entry["route"]
            assert len(destinations) == 1, f"{entry['name']}: one destination per route here"
            dest = destinations[0]["destination"]
            # Istio sets no timeout on a route without one (Envoy's own default would be 15 s).
            action = {"route": {"cluster": cluster_name(dest["host"], dest["port"]["number"]),
                                "timeout": entry.get("timeout", "0s")}}
        response = entry.get("headers", {}).get("response", {})
        for match in entry["match"]:
            assert "port" not in match, "plain HTTP only here"
            uri = match["uri"]
            envoy_match: dict = {"prefix": uri["prefix"]} if "prefix" in uri else {"path": uri["exact"]}
            headers = dict(match.get("headers") or {})
            if "method" in match:
                headers[":method"] = match["method"]
            if headers:
                envoy_match["headers"] = [{"name": name, "string_match": _string_match(m)} for name, m in headers.items()]
            route = {"name": entry["name"], "match": envoy_match, **action}
            if response.get("remove"):
                route["response_headers_to_remove"] = list(response["remove"])
            if response.get("set"):
                route["response_headers_to_add"] = [
                    {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for k, v in response["set"].items()]
            routes.append(route)
    return routes


def _merge(target: dict, patch: Mapping) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def ingress_bootstrap(envoy_filter: Mapping, virtual_service: Mapping, ports: Mapping[str, int],
                      http2: Iterable[str] = ()) -> dict:
    """A bootstrap for the harness's Envoy from an EnvoyFilter's and a VirtualService's specs;
    `ports` maps each cluster name (cluster_name) to the loopback port standing in for it,
    `http2` names the clusters that speak gRPC."""
    filters, route_patches, listener_patches, hcm_patches = [], [], [], []
    for patch in envoy_filter["configPatches"]:
        match = patch["match"]
        assert match["context"] == "GATEWAY"
        if patch["applyTo"] == "NETWORK_FILTER":
            assert patch["patch"]["operation"] == "MERGE"
            assert match["listener"]["filterChain"]["filter"] == {"name": "envoy.filters.network.http_connection_manager"}
            hcm_patches.append(patch["patch"]["value"]["typed_config"])
        elif patch["applyTo"] == "LISTENER":
            assert patch["patch"]["operation"] == "MERGE" and set(match) == {"context"}, patch
            listener_patches.append(patch["patch"]["value"])
        elif patch["applyTo"] == "HTTP_FILTER":
            sub = match["listener"]["filterChain"]["filter"]
            assert sub["name"] == "envoy.filters.network.http_connection_manager"
            assert sub["subFilter"]["name"] == edge.ROUTER["name"] and patch["patch"]["operation"] == "INSERT_BEFORE"
            filters.append(patch["patch"]["value"])
        elif patch["applyTo"] == "HTTP_ROUTE":
            assert patch["patch"]["operation"] == "MERGE"
            route_patches.append((match["routeConfiguration"]["vhost"]["route"]["name"], patch["patch"]["value"]))
        else:
            raise AssertionError(f"a patch this translation does not know: {patch['applyTo']}")
    routes = _routes(virtual_service["http"])
    for name, value in route_patches:
        # Istio applies a patch to every route of that name; one naming none is not an error there.
        for route in routes:
            if route["name"] == name:
                _merge(route, value)
    wanted = {f["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
              for f in filters if "grpc_service" in f["typed_config"]}
    wanted |= {r["route"]["cluster"] for r in routes if "route" in r}
    missing = sorted(c for c in wanted if c not in ports)
    assert not missing, f"no stand-in for {missing}"
    grpc = set(http2)
    clusters = [edge.static_cluster(name, ports[name], http2=name in grpc) for name in sorted(wanted)]
    config = edge.bootstrap(filters, routes, clusters)
    for listener in config["static_resources"]["listeners"]:  # every listener of the gateway
        for value in listener_patches:
            _merge(listener, value)
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm.update(ISTIO_GATEWAY_HCM)
        for value in hcm_patches:
            _merge(hcm, {k: v for k, v in value.items() if k != "@type"})
    return config


def stand_in_ports(virtual_service: Mapping, models: Mapping[str, int], front_door: int, pages: int) -> dict[str, int]:
    """Each cluster the routes name, mapped to the loopback port standing in for it: a model's
    route (or the one route for every model) to its server, the front door's to `front_door`, the
    rest (the UI's and Grafana's pages) to `pages`."""
    ports = {}
    for entry in virtual_service["http"]:
        if "route" not in entry:  # answered by the ingress itself
            continue
        dest = entry["route"][0]["destination"]
        name = entry["name"]
        if name.startswith("model-"):
            port = models[name.removeprefix("model-")]
        elif name == routing.SERVED_ROUTE:
            (port,) = set(models.values())
        elif dest["host"].startswith(f"{front_door_parts.NAME}."):
            port = front_door
        else:
            port = pages
        ports[cluster_name(dest["host"], dest["port"]["number"])] = port
    return ports
