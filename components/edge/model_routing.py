"""ModelRouting: the tokens of the models this platform serves go from the model server to the
client through the ingress's Envoy alone, with no proxy process in between.

Per request, never per chunk, the ingress's Envoy
1. checks the key (a Lua filter against salted SHA-256 digests, so no key is written into a
   cluster object; the model servers check the same key again from their own Secret),
2. asks the body-based router (the Gateway API Inference Extension's BBR, an external processor
   that sees the request's headers and body once and never the response) which model the body
   names, and gets it back as a header,
3. routes on that header straight to the model's Service (the routes are the gateway's; see
   `model_routes`).
What it cannot settle goes on to the front door (LiteLLM) as before: keys it does not know (virtual
keys, the UI's key, which the front door takes only from the UI's pods), bodies BBR cannot read,
hosted providers, unknown models and models that scale to zero (the front door's request count is
what wakes them).

BBR's images are published for amd64 alone: where the cluster has no amd64 nodes (minikube on
Apple Silicon) there is no BBR, and the ingress routes a known key straight only to llama.cpp's
router, which reads the model's name itself, and only where nothing else shares the API.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.core.extension_pods import extension_deployment_spec
from components.core.published import ModelBackend
from components.core.replicas import one_at_a_time
from components.edge import endpoint_picker as epp, http_routes

# The body-based router, pinned to the Inference Extension release whose chart and CRDs this
# platform vendors; the image is distroless, amd64 only, and runs as its `nonroot` user
# (components/core/extension_pods.py).
BBR_VERSION = "v1.5.0"
BBR_IMAGE = f"registry.k8s.io/gateway-api-inference-extension/bbr:{BBR_VERSION}"
NAME = "body-based-router"
GRPC_PORT = 9004
HEALTH_PORT = 9005
METRICS_PORT = 9090
# BBR's manager insists on a REST config at start but, with only the body-field plugin, never
# calls the API server: it gets a kubeconfig naming none that answers instead of a token.
KUBECONFIG_DIR = "/etc/body-based-router"
KUBECONFIG_FILE = "kubeconfig"
# The header BBR sets from the body's `model` (its plugin's name for it), and the one the key
# check sets to mark a route: a key only the front door can check, or a known key where one route
# serves every model.
MODEL_HEADER = "X-Gateway-Model-Name"
ROUTE_HEADER = "x-llm-platform-route"
# Set by the key check to the holder of the key it admitted; a team's model's rule matches it.
KEY_HOLDER_HEADER = "x-llm-platform-key-holder"
# The holder of the stack's own client key.
STACK_KEY_HOLDER = "stack"
FRONT_DOOR_MARK = "front-door"
SERVED_MARK = "served"
# The API rules before the models': what the key check marks for the front door (keys only it can
# check, requests BBR cannot read), on which BBR is not asked, and, without BBR, the one for the
# one server of every model. The model list (`GET /v1/models`) is the front door's: an HTTPRoute
# cannot answer a request itself.
FRONT_DOOR_ROUTE, SERVED_ROUTE = "front-door", "served-models"
# The largest body sent to BBR (its gRPC messages are at most 4 MiB); a larger one, or one it
# cannot read, goes to the front door.
BBR_MAX_BODY_BYTES = 4_000_000
# Envoy's names for the filters; the key check runs first, BBR second, both before the router.
# BBR's is its own name, so per-route settings never reach another external processor.
LUA_FILTER = "envoy.filters.http.lua"
BBR_FILTER = "envoy.filters.http.ext_proc.bbr"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
# How long Envoy waits for BBR's answer; past it (or with BBR away) the request goes on without a
# model header, so to the front door: slower, never refused, never a route the body did not name.
BBR_TIMEOUT = "2s"
# What no external processor is sent (the body-based router, a pool's picker): they need a
# request's body and route, never the client's credentials.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "cookie")
# Envoy buffers a body whole for BBR, up to its listeners' per-connection buffer limit (1 MiB by
# default, and a larger body gets 413): raised on the ingress to hold the largest body it sends.
BODY_LIMIT_BYTES = 5 << 20
API_KEY_LUA = Path(__file__).with_name("files") / "api_key.lua"
ENVOY_FILTER_API = "networking.istio.io/v1alpha3"
# A stopping BBR pod stays up while the ingress learns it is gone (BBR stops serving at SIGTERM).
PRE_STOP_SECONDS = 5


def bbr_args(grpc_port: int = GRPC_PORT, health_port: int = HEALTH_PORT, metrics_port: int = METRICS_PORT) -> list[str]:
    """BBR's command line: plain gRPC (the mesh's mTLS protects it; BBR's own default is TLS with a
    self-signed certificate), the whole body in one message (not `--streaming`, which its chart
    sets: streamed, Envoy kept BBR on the stream to the end and spent four times the CPU per
    response chunk, measured by tests/edge_bench.py), no tracing or pprof, metrics without asking
    the API server who reads them, and only the plugin that copies the body's `model` into
    MODEL_HEADER (BBR's default set adds one that watches ConfigMaps for LoRA adapters' base
    models, which would need API access; this one needs none)."""
    plugin = {"fieldName": "model", "headerName": MODEL_HEADER}
    return [f"--grpc-port={grpc_port}", f"--grpc-health-port={health_port}", f"--metrics-port={metrics_port}",
            "--secure-serving=false", "--tracing=false", "--enable-pprof=false",
            "--metrics-endpoint-auth=false",
            "--plugin", f"body-field-to-header:model-extractor:{json.dumps(plugin, separators=(',', ':'))}"]


def idle_kubeconfig() -> str:
    """A kubeconfig naming an API server on a loopback port nothing listens on, with no credential."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "none", "user": {}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    }, indent=1)


def key_digest(salt: str, key: str) -> str:
    """What the key check compares: SHA-256 of the salt and the key, lowercase hex."""
    return hashlib.sha256((salt + key).encode()).hexdigest()


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def key_check_source(*, salt: str, digests: Mapping[str, str], open_api: bool, front_door: bool,
                     known_key_route: Optional[str] = None, body_router: bool = False) -> str:
    """The key check's Lua: its settings, then files/api_key.lua. `digests`: each accepted key's
    digest -> its holder (`STACK_KEY_HOLDER`, or a team's), which the routes may match."""
    if any(len(d) != 64 or set(d) - set("0123456789abcdef") for d in digests):
        raise ValueError("key digests must be lowercase hex SHA-256")
    if any(not re.fullmatch(r"[a-z0-9-]+", h) for h in digests.values()):
        raise ValueError("key holders must be DNS labels")
    table = ", ".join(f'["{d}"] = "{digests[d]}"' for d in sorted(digests))
    settings = [
        f"local KEY_SALT = {_lua_string(salt)}",
        f"local KEY_DIGESTS = {{{table}}}",
        f"local OPEN = {'true' if open_api else 'false'}",
        f"local FRONT_DOOR = {'true' if front_door else 'false'}",
        f"local KNOWN_KEY_ROUTE = {_lua_string(known_key_route) if known_key_route else 'nil'}",
        f"local BODY_ROUTER_MAX_BYTES = {BBR_MAX_BODY_BYTES if body_router else 'nil'}",
        f"local PICKER_HEADERS = {{{', '.join(_lua_string(h) for h in epp.CLIENT_MAY_NOT_SET)}}}",
        f"local KEY_HOLDER_HEADER = {_lua_string(KEY_HOLDER_HEADER)}",
    ]
    return "\n".join(settings) + "\n\n" + API_KEY_LUA.read_text()


def lua_filter(source: str) -> dict:
    return {"name": LUA_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": source}}}


def ext_proc_filter(cluster: str, timeout: str = BBR_TIMEOUT) -> dict:
    """BBR as Envoy's external processor: the request's headers and its whole body once, never the
    response nor the client's key. A router that does not answer lets the request on without a
    model header (to the front door)."""
    return {"name": BBR_FILTER, "typed_config": {
        "@type": EXT_PROC_TYPE,
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
        "failure_mode_allow": True,
        "message_timeout": timeout,
        "forward_rules": {"disallowed_headers": {"patterns": [{"exact": h} for h in CREDENTIAL_HEADERS]}},
        "processing_mode": {
            "request_header_mode": "SEND", "request_body_mode": "BUFFERED", "request_trailer_mode": "SKIP",
            "response_header_mode": "SKIP", "response_body_mode": "NONE", "response_trailer_mode": "SKIP",
        },
    }}


NO_BBR = {BBR_FILTER: {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", "disabled": True}}


def bbr_cluster(namespace: str) -> str:
    """Istio's name for the cluster of BBR's Service, as the ingress's Envoy knows it."""
    return f"outbound|{GRPC_PORT}||{NAME}.{namespace}.svc.cluster.local"


HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
# The name istiod gives its external processor for the inference pools' pickers.
POOL_FILTER = "envoy.filters.http.ext_proc"


def filter_patches(key_check: str, bbr_namespace: Optional[str], routes_without_bbr: Sequence[str]) -> list[dict]:
    """The EnvoyFilter's patches for the ingress: the key check, then BBR (where it runs), first of
    the HTTP filters, the listeners' buffer limit raised for BBR's bodies, `100-continue` answered
    by Envoy, and BBR switched off on `routes_without_bbr` (pages, and what goes to the front door
    anyway). First, because istiod puts an inference pool's endpoint picker among its own filters,
    before an EnvoyFilter's patches apply: the picker must see the route BBR's header chose. Nothing
    here changes with the models: a changed filter or listener makes Envoy drain the old one's
    connections."""
    chain = {"context": "GATEWAY", "listener": {"filterChain": {"filter": {"name": HCM_FILTER}}}}
    filters = [lua_filter(key_check)]
    if bbr_namespace is not None:
        filters.append(ext_proc_filter(bbr_cluster(bbr_namespace)))
    # Each INSERT_FIRST goes before the ones applied earlier: the last filter of the chain first.
    patches = [{"applyTo": "HTTP_FILTER", "match": chain, "patch": {"operation": "INSERT_FIRST", "value": f}}
               for f in reversed(filters)]
    if bbr_namespace is not None:
        patches.append({"applyTo": "LISTENER", "match": {"context": "GATEWAY"},
                        "patch": {"operation": "MERGE", "value": {"per_connection_buffer_limit_bytes": BODY_LIMIT_BYTES}}})
        # Istio's gateways pass `Expect: 100-continue` on to the upstream; with the headers held
        # until BBR has the body, none answers, and the client (curl, for any body over 1 MiB)
        # waits a second before it sends the body. Envoy answers it itself instead.
        patches.append({"applyTo": "NETWORK_FILTER",
                        "match": chain,
                        "patch": {"operation": "MERGE", "value": {"typed_config": {
                            "@type": HCM_TYPE, "proxy_100_continue": False}}}})
        # istiod's own external processor for the inference pools' pickers (on the listener only
        # where a pool is behind a route; a patch that matches nothing is no error) forwards every
        # request header: not the client's credentials.
        patches.append({"applyTo": "HTTP_FILTER",
                        "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {
                            "name": HCM_FILTER, "subFilter": {"name": POOL_FILTER}}}}},
                        "patch": {"operation": "MERGE", "value": {"name": POOL_FILTER, "typed_config": {
                            "@type": EXT_PROC_TYPE,
                            "forward_rules": {"disallowed_headers": {"patterns": [
                                {"exact": h} for h in CREDENTIAL_HEADERS]}}}}}})
        patches += [
            {"applyTo": "HTTP_ROUTE",
             "match": {"context": "GATEWAY", "routeConfiguration": {"vhost": {"route": {"name": route}}}},
             "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": NO_BBR}}}
            for route in routes_without_bbr
        ]
    return patches


@dataclass(frozen=True)
class RoutingPlan:
    """Which models the ingress routes straight, and how it tells them apart."""

    # The models it reaches straight (the rest go to the front door).
    straight: tuple[ModelBackend, ...]
    # Whether BBR picks the route from the body; else a known key is marked for the one Service
    # that serves every model in `straight`.
    body_router: bool

    @property
    def known_key_route(self) -> Optional[str]:
        return SERVED_MARK if self.straight and not self.body_router else None


def plan(backends: Sequence[ModelBackend], *, amd64_nodes: bool, others: bool, one_server: bool) -> RoutingPlan:
    """`backends`: the models that may be reached straight (not those at zero); `others`: whether
    other names share the API (hosted providers, models at zero); `one_server`: whether one server
    serves every model by name (llama.cpp's router, which refuses a name it does not serve);
    `amd64_nodes`: whether BBR can run. Without BBR only that one server is reached straight: a
    llama-server of one model answers whatever model a body names."""
    if amd64_nodes:
        return RoutingPlan(tuple(backends), body_router=bool(backends))
    return RoutingPlan(tuple(backends) if one_server and not others else (), body_router=False)


def _service(backend: ModelBackend) -> tuple[pulumi.Input[str], int]:
    assert backend.host is not None and backend.port is not None, f"{backend.alias}: no Service to route to"
    return backend.host, backend.port


def model_routes(routing: RoutingPlan, front_door: Optional[tuple[pulumi.Input[str], int]],
                 remove_response_headers: Sequence[str] = (), pools: Optional[Mapping[str, dict]] = None) -> list[dict]:
    """The gateway's API rules (HTTPRoute `rules`) besides its catch-all `/v1`: what the key check
    marked for the front door, and the models served straight: one rule per model on the header
    BBR set, or without BBR one rule for the one server on the key check's mark. Each matches
    `/v1` and one header, so each goes before the catch-all; no request matches two of them (a
    marked request is never given a model header: BBR is off on the front door's rule). A model
    in `pools` (alias -> backendRef) goes to its inference pool rather than its Service."""
    def marked(name: str, header: str, value: str, backend: dict) -> dict:
        return http_routes.rule(name, http_routes.prefix_match(http_routes.API_PREFIX, {header: value}),
                                backend, remove_response_headers, stream=True)

    pools = dict(pools or {})
    assert set(pools) <= {b.alias for b in routing.straight} and (routing.body_router or not pools), \
        f"pools for models not routed by the body: {sorted(pools)}"
    rules: list[dict] = []
    if front_door is not None:
        rules.append(marked(FRONT_DOOR_ROUTE, ROUTE_HEADER, FRONT_DOOR_MARK, http_routes.service_ref(*front_door)))
    if routing.body_router:
        # A model whose servers take one holder's key alone (a team's) is routed straight only for
        # that key; any other goes on to the catch-all, the front door.
        rules += [http_routes.rule(f"model-{b.alias}", http_routes.prefix_match(
                      http_routes.API_PREFIX, {MODEL_HEADER: b.alias, **({KEY_HOLDER_HEADER: b.key_holder}
                                                                         if b.key_holder else {})}),
                      pools.get(b.alias) or http_routes.service_ref(*_service(b)), remove_response_headers, stream=True)
                  for b in routing.straight]
    elif routing.straight:
        rules.append(marked(SERVED_ROUTE, ROUTE_HEADER, SERVED_MARK, http_routes.service_ref(*_service(routing.straight[0]))))
    return rules


class ModelRoutingArgs(TypedDict):
    # Where BBR runs: a namespace of the mesh that admits the ingress (the front door's).
    namespace: pulumi.Input[str]
    namespace_name: str
    # BBR's replicas: every straight request waits for one.
    replicas: int
    # The ingress: its namespace and pod labels (the EnvoyFilter's workload).
    ingress_namespace: str
    ingress_selector: dict[str, str]
    # The keys the ingress admits, by holder (the stack's client key as STACK_KEY_HOLDER, each
    # team's as the team), secrets; None: the API is open.
    keys: Optional[Mapping[str, pulumi.Output[str]]]
    # Whether a front door takes what the ingress cannot settle.
    front_door: bool
    plan: RoutingPlan
    # Gateway routes on which BBR is not asked (pages).
    page_routes: Sequence[str]
    # What Istio objects wait for (the CRDs and istiod's webhook).
    mesh_ready: Sequence[pulumi.Resource]
    # The model servers (or the router): the ingress passes the client key on only once they
    # accept it (on an upgrade they roll onto it first).
    servers: Sequence[pulumi.Resource]


class ModelRouting(pulumi.ComponentResource):
    envoy_filter: k8s.apiextensions.CustomResource

    def __init__(self, name: str, args: ModelRoutingArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:ModelRouting", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        routing = args["plan"]
        ready: list[pulumi.Resource] = [*args["mesh_ready"], *args["servers"]]
        if routing.body_router:
            ready += self._body_router(name, args, child)

        keys = args["keys"]
        holders = sorted(keys or {})
        salt = random.RandomPassword(f"{name}-key-salt", length=32, special=False, opts=child).result

        def source(values: list[str]) -> str:
            salt_value, *key_values = values
            return key_check_source(salt=salt_value,
                                    digests={key_digest(salt_value, k): h for h, k in zip(holders, key_values, strict=True)},
                                    open_api=keys is None, front_door=args["front_door"],
                                    known_key_route=routing.known_key_route, body_router=routing.body_router)

        # Digests and the salt only: nothing in the filter is a secret.
        lua = pulumi.Output.unsecret(pulumi.Output.all(salt, *(keys[h] for h in holders) if keys else ()).apply(source))
        bbr_namespace = args["namespace_name"] if routing.body_router else None
        without_bbr = [*args["page_routes"], FRONT_DOOR_ROUTE]
        self.envoy_filter = k8s.apiextensions.CustomResource(
            f"{name}-ingress-filters",
            api_version=ENVOY_FILTER_API,
            kind="EnvoyFilter",
            metadata={"name": "llm-model-routing", "namespace": args["ingress_namespace"],
                      "labels": {"app.kubernetes.io/part-of": "llm-platform"}},
            spec={"workloadSelector": {"labels": dict(args["ingress_selector"])},
                  "configPatches": lua.apply(lambda text: filter_patches(text, bbr_namespace, without_bbr))},
            # Istio objects need the CRDs and istiod's webhook; the ingress asks BBR once it is
            # ready, and passes the client key on only to servers that accept it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=ready),
        )
        self.register_outputs({})

    def _body_router(self, name: str, args: ModelRoutingArgs, child: pulumi.ResourceOptions) -> list[pulumi.Resource]:
        """BBR's Deployment and Service; returns what the filters wait for."""
        namespace = args["namespace"]
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "model-routing",
                  "app.kubernetes.io/part-of": "llm-platform"}
        meta = {"namespace": namespace, "labels": labels}
        replicas = args["replicas"]
        account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account", metadata={**meta, "name": NAME},
            automount_service_account_token=False, opts=child)
        kubeconfig = k8s.core.v1.ConfigMap(
            f"{name}-bbr-kubeconfig", metadata={**meta, "name": f"{NAME}-kubeconfig"},
            data={KUBECONFIG_FILE: idle_kubeconfig()}, opts=child)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-bbr",
            metadata={**meta, "name": NAME},
            spec=extension_deployment_spec(
                "bbr", BBR_IMAGE, bbr_args(),
                labels=labels, replicas=replicas, spread=True, service_account=account.metadata.name, api_token=False,
                env={"KUBECONFIG": f"{KUBECONFIG_DIR}/{KUBECONFIG_FILE}"},
                ports={"grpc": GRPC_PORT, "grpc-health": HEALTH_PORT},
                resources={"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
                readiness_probe={"grpc": {"port": HEALTH_PORT}, "periodSeconds": 5},
                liveness_probe={"grpc": {"port": HEALTH_PORT}, "periodSeconds": 20, "failureThreshold": 3},
                pre_stop_seconds=PRE_STOP_SECONDS,
                config_map=kubeconfig.metadata.name, config_volume="kubeconfig", config_dir=KUBECONFIG_DIR,
            ),
            opts=child,
        )
        if replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-bbr-pdb", metadata={**meta, "name": NAME},
                spec=one_at_a_time(labels), opts=child)
        self.service = k8s.core.v1.Service(
            f"{name}-bbr-service",
            metadata={**meta, "name": NAME},
            # gRPC: the mesh carries it as HTTP/2.
            spec={"selector": labels, "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc",
                                                 "protocol": "TCP", "appProtocol": "grpc"}]},
            opts=child,
        )
        return [self.deployment, self.service]
