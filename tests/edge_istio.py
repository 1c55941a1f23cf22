"""The ingress's Envoy configuration built from the program's own objects, as istiod builds it for
the gateway's pods: the EnvoyFilter's HTTP-filter patches inserted first in the chain (each before
those applied earlier), the HTTPRoute's rules as Envoy routes (Istio names a route after its rule,
orders them exact path first, then the longer prefix, then the rule with more header matches,
then as written, and names clusters `outbound|<port>||<name>.<namespace>.svc.cluster.local`), the
EnvoyFilter's route patches merged into the routes they name and its listener patches into the
listener. Each Service the routes or filters name is mapped to a loopback port.

A rule whose backendRef is an InferencePool (the Inference Extension's, istiod started with
ENABLE_GATEWAY_API_INFERENCE_EXTENSION) becomes what istiod 1.30.3 builds for it on a gateway whose
pods carry the Gateway's name label (`gateway.networking.k8s.io/gateway-name`):
- One more HTTP filter, `envoy.filters.http.ext_proc` (`InferencePoolExtProc` in
  pilot/pkg/xds/filters/filters.go), added by `buildHTTPConnectionManager`
  (pilot/pkg/networking/core/listener_builder.go) only when that Gateway has a pool behind one of
  its routes (`HasInferencePool`). It sits among istiod's own filters, so after the EnvoyFilter's
  INSERT_FIRST filters and before the router. At the listener it is enabled and does nothing: it
  names a cluster `dummy`, sends neither headers nor bodies (header modes SKIP, body modes unset),
  fails open, waits up to 1000 s per message, and passes the `envoy.lb` dynamic-metadata namespace
  both ways.
- On the pool's route, an `ExtProcPerRoute` override under that filter's name (`TranslateRoute` in
  pilot/pkg/networking/core/route/route.go, from what `buildDestination` in
  pilot/pkg/config/kube/gateway/conversion.go reads off the pool's shadow Service): gRPC to
  `outbound|<endpointPickerRef port>||<picker Service>.<pool namespace>.svc.cluster.local`,
  headers and trailers sent both ways, both bodies FULL_DUPLEX_STREAMED, and `failure_mode_allow`
  true exactly when the pool's `failureMode` is FailOpen (the CRD's default is FailClose; istiod
  carries the mode on the shadow Service's labels: `extRefInfo` in inferencepool_collection.go).
  The rule's backendRef port is ignored. An HTTPRoute CORS filter on the same rule would drop the
  override (route.go rebuilds the map for it); the rules here have none.
- The route's cluster is the pool's shadow Service (`InferencePoolServiceName` and
  `translateShadowServiceToService` in inferencepool_collection.go): `<pool>-ip-<first 8 hex of
  SHA-256 of the pool's name>`, headless, selecting the pool's pods, port 54321 onto the first
  target port; cluster `outbound|54321||<shadow>.<namespace>.svc.cluster.local`, its endpoints the
  ready pods at their IP and target port. On a gateway istiod gives that cluster Envoy's
  `envoy.load_balancing_policies.override_host` policy (`applyOverrideHostPolicy` in
  pilot/pkg/networking/core/cluster_builder.go, called from cluster.go for services with
  inference-pool semantics on a router): the host comes from dynamic metadata `envoy.lb` /
  `x-gateway-destination-endpoint` (what the picker returns; no header source), the host that
  served is written back under `envoy.lb` / `x-gateway-destination-endpoint-served`, round robin
  when there is no such metadata or the address is not one of the cluster's endpoints;
  `lb_policy` CLUSTER_PROVIDED. Istio's cluster is EDS; here it is a STATIC cluster listing the
  same endpoints (`ports` gives them).

What istiod adds besides (its other filters, mTLS to the upstreams, stats) is left out: the claims
tested on this are about which request goes where, with which key, and what streams back.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Iterable, Mapping, Optional, Sequence, Union

from components.edge import front_door as front_door_parts
from components.edge import model_routing as routing
from tests import edge_path as edge

# What istiod sets on every gateway's HTTP connection manager that changes how a request flows:
# `Expect: 100-continue` passed on to the upstream, WebSocket upgrades allowed.
ISTIO_GATEWAY_HCM = {"proxy_100_continue": True, "upgrade_configs": [{"upgrade_type": "websocket"}]}


def cluster_name(host: str, port: int) -> str:
    return f"outbound|{int(port)}||{host}"


def _service_cluster(ref: Mapping) -> str:
    assert ref.get("kind", "Service") == "Service", ref
    return cluster_name(f"{ref['name']}.{ref['namespace']}.svc.cluster.local", ref["port"])


# --- inference pools -------------------------------------------------------------------------

POOL_GROUP = "inference.networking.k8s.io"
POOL_FILTER = "envoy.filters.http.ext_proc"
SHADOW_PORT = 54321
ENDPOINT_METADATA_NAMESPACE = "envoy.lb"
ENDPOINT_KEY = "x-gateway-destination-endpoint"
SERVED_KEY = "x-gateway-destination-endpoint-served"
_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_EXT_PROC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
# A Service name's limit, and the hash istiod appends to a pool's name for its shadow Service.
_NAME_LIMIT, _HASH_SIZE = 63, 8


def is_pool(ref: Mapping) -> bool:
    return ref.get("group") == POOL_GROUP and ref.get("kind") == "InferencePool"


def shadow_service(pool: str) -> str:
    """The headless Service istiod makes for a pool, named from the pool's name."""
    digest = hashlib.sha256(pool.encode()).hexdigest()[:_HASH_SIZE]
    return f"{pool[:_NAME_LIMIT - len('-ip-') - _HASH_SIZE]}-ip-{digest}"


def pool_cluster(name: str, namespace: str) -> str:
    """The cluster a rule to the pool `name` routes to (its shadow Service's first port)."""
    return cluster_name(f"{shadow_service(name)}.{namespace}.svc.cluster.local", SHADOW_PORT)


def picker_cluster(namespace: str, spec: Mapping) -> str:
    """The cluster of a pool's endpoint picker, from the pool's `endpointPickerRef` (its Service
    is looked for in the pool's namespace)."""
    ref = spec["endpointPickerRef"]
    assert ref.get("kind", "Service") == "Service", ref
    return cluster_name(f"{ref['name']}.{namespace}.svc.cluster.local", ref["port"]["number"])


def pool_filter() -> dict:
    """The listener's ext_proc filter istiod adds for a gateway with a pool: idle until a route's
    override turns it on."""
    return {"name": POOL_FILTER, "typed_config": {
        "@type": _EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": "dummy"}, "timeout": "10s"},
        "failure_mode_allow": True,
        "processing_mode": {"request_header_mode": "SKIP", "response_header_mode": "SKIP"},
        "message_timeout": "1000s",
        "metadata_options": {"receiving_namespaces": {"untyped": [ENDPOINT_METADATA_NAMESPACE]},
                             "forwarding_namespaces": {"untyped": [ENDPOINT_METADATA_NAMESPACE]}},
    }}


def pool_override(namespace: str, spec: Mapping) -> dict:
    """The per-route override on a pool's route: the picker, and the modes it answers in."""
    fail_open = spec["endpointPickerRef"].get("failureMode", "FailClose") == "FailOpen"
    return {"@type": _EXT_PROC_PER_ROUTE, "overrides": {
        "failure_mode_allow": fail_open,
        "grpc_service": {"envoy_grpc": {"cluster_name": picker_cluster(namespace, spec)}},
        "processing_mode": {
            "request_header_mode": "SEND", "request_body_mode": "FULL_DUPLEX_STREAMED", "request_trailer_mode": "SEND",
            "response_header_mode": "SEND", "response_body_mode": "FULL_DUPLEX_STREAMED",
            "response_trailer_mode": "SEND",
        },
    }}


def service_cluster(name: str, addresses: Sequence[tuple[str, int]]) -> dict:
    """A Service's cluster standing as its pods' addresses, balanced as istiod balances a cluster
    no DestinationRule configures (least request: `defaultLBAlgorithm` in
    pilot/pkg/networking/core/cluster_traffic_policy.go)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}
            for host, port in addresses]}]},
    }


def _metadata_key(key: str) -> dict:
    return {"key": ENDPOINT_METADATA_NAMESPACE, "path": [{"key": key}]}


def override_host_cluster(name: str, addresses: Sequence[tuple[str, int]]) -> dict:
    """A pool's cluster: its pods' addresses, the host the picker named in the request's dynamic
    metadata, round robin without one."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "CLUSTER_PROVIDED",
        "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                "override_host_sources": [{"metadata": _metadata_key(ENDPOINT_KEY)}],
                "selected_host_key": _metadata_key(SERVED_KEY),
                "fallback_policy": {"policies": [{"typed_extension_config": {
                    "name": "envoy.load_balancing_policies.round_robin",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"},
                }}]},
            },
        }}]},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}
            for host, port in addresses]}]},
    }


def _envoy_match(match: Mapping) -> dict:
    path = match.get("path", {"type": "PathPrefix", "value": "/"})
    value = path["value"]
    if path["type"] == "Exact":
        out: dict = {"path": value}
    else:
        assert path["type"] == "PathPrefix", path
        # A Gateway API prefix matches whole path segments: "/v1" is not a prefix of "/v1beta".
        out = {"prefix": "/"} if value == "/" else {"path_separated_prefix": value.rstrip("/")}
    headers = [{"name": h["name"], "string_match": {"exact": h["value"]}} for h in match.get("headers", ())]
    assert all(h.get("type", "Exact") == "Exact" for h in match.get("headers", ()))
    if "method" in match:
        headers.append({"name": ":method", "string_match": {"exact": match["method"]}})
    if headers:
        out["headers"] = headers
    return out


def _precedence(match: Mapping) -> tuple:
    path = match.get("path", {"type": "PathPrefix", "value": "/"})
    return (path["type"] != "Exact", -len(path["value"]), "method" not in match, -len(match.get("headers", ())))


def _routes(rules: Iterable[Mapping], pools: Mapping[str, Mapping]) -> list[dict]:
    entries = []
    for order, entry in enumerate(rules):
        filters = {f["type"]: f for f in entry.get("filters", ())}
        assert set(filters) <= {"ResponseHeaderModifier", "RequestRedirect"}, filters
        action: dict
        if "RequestRedirect" in filters:
            redirect = filters["RequestRedirect"]["requestRedirect"]
            action = {"redirect": {"scheme_redirect": redirect["scheme"],
                                   "response_code": {301: "MOVED_PERMANENTLY", 302: "FOUND"}[redirect["statusCode"]]}}
        else:
            backends = entry["backendRefs"]
            assert len(backends) == 1, f"{entry['name']}: one backend per rule here"
            # Istio sets no timeout on a rule without one, nor with "0s" (Envoy's own default
            # would be 15 s).
            timeout = entry.get("timeouts", {}).get("request", "0s")
            ref = backends[0]
            if is_pool(ref):
                key = f"{ref['namespace']}/{ref['name']}"
                assert key in pools, f"{entry['name']}: no InferencePool {key}"
                action = {"route": {"cluster": pool_cluster(ref["name"], ref["namespace"]), "timeout": timeout},
                          "typed_per_filter_config": {POOL_FILTER: pool_override(ref["namespace"], pools[key])}}
            else:
                action = {"route": {"cluster": _service_cluster(ref), "timeout": timeout}}
        for match in entry.get("matches") or [{}]:
            route = {"name": entry["name"], "match": _envoy_match(match), **copy.deepcopy(action)}
            modifier = filters.get("ResponseHeaderModifier", {}).get("responseHeaderModifier", {})
            if modifier.get("remove"):
                route["response_headers_to_remove"] = list(modifier["remove"])
            entries.append((_precedence(match), order, route))
    return [route for _, _, route in sorted(entries, key=lambda e: (e[0], e[1]))]


def _merge(target: dict, patch: Mapping) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


Addresses = Union[int, Sequence[tuple[str, int]]]


def ingress_bootstrap(envoy_filter: Mapping, http_route: Mapping, ports: Mapping[str, Addresses],
                      http2: Iterable[str] = (), pools: Optional[Mapping[str, Mapping]] = None) -> dict:
    """A bootstrap for the harness's Envoy from an EnvoyFilter's and an HTTPRoute's specs;
    `ports` maps each cluster name (cluster_name, pool_cluster, picker_cluster) to the loopback
    port standing in for it, or to the (host, port) addresses of a pool's or a Service's pods
    (service_cluster); `http2` names the
    clusters that speak gRPC; `pools` maps `<namespace>/<name>` to each InferencePool's spec."""
    filters, route_patches, listener_patches, hcm_patches, filter_merges = [], [], [], [], []
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
        elif patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "MERGE":
            chain = match["listener"]["filterChain"]["filter"]
            assert chain["name"] == "envoy.filters.network.http_connection_manager", chain
            filter_merges.append((chain["subFilter"]["name"], patch["patch"]["value"]))
        elif patch["applyTo"] == "HTTP_FILTER":
            chain = match["listener"]["filterChain"]["filter"]
            assert chain == {"name": "envoy.filters.network.http_connection_manager"}, chain
            assert patch["patch"]["operation"] == "INSERT_FIRST"
            filters.insert(0, patch["patch"]["value"])
        elif patch["applyTo"] == "HTTP_ROUTE":
            assert patch["patch"]["operation"] == "MERGE"
            route_patches.append((match["routeConfiguration"]["vhost"]["route"]["name"], patch["patch"]["value"]))
        else:
            raise AssertionError(f"a patch this translation does not know: {patch['applyTo']}")
    routes = _routes(http_route["rules"], pools or {})
    for name, value in route_patches:
        # Istio applies a patch to every route of that name; one naming none is not an error there.
        for route in routes:
            if route["name"] == name:
                _merge(route, value)
    wanted = {f["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
              for f in filters if "grpc_service" in f["typed_config"]}
    wanted |= {r["route"]["cluster"] for r in routes if "route" in r}
    pool_routes = [r for r in routes if POOL_FILTER in r.get("typed_per_filter_config", {})]
    wanted |= {r["typed_per_filter_config"][POOL_FILTER]["overrides"]["grpc_service"]["envoy_grpc"]["cluster_name"]
               for r in pool_routes}
    missing = sorted(c for c in wanted if c not in ports)
    assert not missing, f"no stand-in for {missing}"
    grpc = set(http2)
    pooled = {r["route"]["cluster"] for r in pool_routes}
    clusters = []
    for name in sorted(wanted):
        where = ports[name]
        if name in pooled:
            assert not isinstance(where, int), f"{name}: a pool's cluster lists its pods' addresses"
            clusters.append(override_host_cluster(name, where))
        elif isinstance(where, int):
            clusters.append(edge.static_cluster(name, where, http2=name in grpc))
        else:
            clusters.append(service_cluster(name, where))
    # istiod's own filters (the pools' one among them) come after every INSERT_FIRST patch; a
    # MERGE patch applies to the filter of its name, once istiod has built the chain.
    chain = [*filters, *([pool_filter()] if pool_routes else [])]
    for name, value in filter_merges:
        for f in chain:
            if f["name"] == name:
                _merge(f, {k: v for k, v in value.items() if k != "name"})
    config = edge.bootstrap(chain, routes, clusters)
    for listener in config["static_resources"]["listeners"]:  # every listener of the gateway
        for value in listener_patches:
            _merge(listener, value)
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm.update(ISTIO_GATEWAY_HCM)
        for value in hcm_patches:
            _merge(hcm, {k: v for k, v in value.items() if k != "@type"})
    return config


def stand_in_ports(http_route: Mapping, models: Mapping[str, Addresses], front_door: int,
                   pages: int) -> dict[str, Addresses]:
    """Each cluster the rules name, mapped to the loopback port standing in for it: a model's rule
    (or the one rule for every model) to its server (a port, or its pods' addresses), the front
    door's to `front_door`, the rest (the UI's and Grafana's pages) to `pages`. A rule to an
    InferencePool is left to the caller (its pods' addresses under pool_cluster, its picker under
    picker_cluster)."""
    ports: dict[str, Addresses] = {}
    for entry in http_route["rules"]:
        if "backendRefs" not in entry:  # answered by the ingress itself
            continue
        ref = entry["backendRefs"][0]
        name = entry["name"]
        if is_pool(ref):
            continue
        port: Addresses
        if name.startswith("model-"):
            port = models[name.removeprefix("model-")]
        elif name == routing.SERVED_ROUTE:
            (port,) = set(models.values())
        elif ref["name"] == front_door_parts.NAME:
            port = front_door
        else:
            port = pages
        ports[_service_cluster(ref)] = port
    return ports
