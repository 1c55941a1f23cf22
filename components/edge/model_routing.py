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
keys, the UI's key, which the front door takes only from the UI's pods), hosted providers, and
models that scale to zero (the front door's request count is what wakes them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.core.published import ModelBackend

# The body-based router, pinned to the Inference Extension release whose chart and CRDs this
# platform vendors; the image is distroless and runs as its `nonroot` user (named by number so
# the kubelet can check it).
BBR_VERSION = "v1.5.0"
BBR_IMAGE = f"registry.k8s.io/gateway-api-inference-extension/bbr:{BBR_VERSION}"
BBR_USER = 65532
NAME = "body-based-router"
GRPC_PORT = 9004
HEALTH_PORT = 9005
METRICS_PORT = 9090
# The header BBR sets from the body's `model` (its plugin's name for it), and the one the key
# check sets for a key only the front door can check.
MODEL_HEADER = "X-Gateway-Model-Name"
ROUTE_HEADER = "x-llm-platform-route"
FRONT_DOOR_ROUTE = "front-door"
# Envoy's names for the filters; the key check runs first, BBR second, both before the router.
LUA_FILTER = "envoy.filters.http.lua"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
# How long Envoy waits for BBR's answer; it fails the request (500) past it: never a route the
# body did not choose.
BBR_TIMEOUT = "2s"
API_KEY_LUA = Path(__file__).with_name("files") / "api_key.lua"
ENVOY_FILTER_API = "networking.istio.io/v1alpha3"
TELEMETRY_API = "telemetry.istio.io/v1"
# The label the ingress's request metrics (istio_requests_total, istio_request_duration_*) carry
# with the model the body named: what the front door's own metrics counted when every request
# went through it.
MODEL_METRIC_LABEL = "request_model"


def bbr_args(grpc_port: int = GRPC_PORT, health_port: int = HEALTH_PORT, metrics_port: int = METRICS_PORT) -> list[str]:
    """BBR's command line: plain gRPC (the mesh's mTLS protects it; BBR's own default is TLS with a
    self-signed certificate), no tracing or pprof, metrics without asking the API server who
    reads them, and only the plugin that copies the body's `model` into MODEL_HEADER (BBR's
    default set adds one that watches ConfigMaps for LoRA adapters' base models, which would
    need API access; this one needs none)."""
    plugin = {"fieldName": "model", "headerName": MODEL_HEADER}
    return [f"--grpc-port={grpc_port}", f"--grpc-health-port={health_port}", f"--metrics-port={metrics_port}",
            "--secure-serving=false", "--tracing=false", "--enable-pprof=false", "--metrics-endpoint-auth=false",
            "--plugin", f"body-field-to-header:model-extractor:{json.dumps(plugin, separators=(',', ':'))}"]


def key_digest(salt: str, key: str) -> str:
    """What the key check compares: SHA-256 of the salt and the key, lowercase hex."""
    return hashlib.sha256((salt + key).encode()).hexdigest()


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def model_list(names: Sequence[str]) -> str:
    """The answer to `GET /v1/models`, OpenAI's shape."""
    return json.dumps({"object": "list", "data": [
        {"id": n, "object": "model", "created": 0, "owned_by": "llm-platform"} for n in names]},
        separators=(",", ":"))


def key_check_source(*, salt: str, digests: Sequence[str], open_api: bool, front_door: bool,
                     models: Optional[Sequence[str]]) -> str:
    """The key check's Lua: its settings, then files/api_key.lua."""
    if any(len(d) != 64 or set(d) - set("0123456789abcdef") for d in digests):
        raise ValueError("key digests must be lowercase hex SHA-256")
    table = ", ".join(f'["{d}"] = true' for d in sorted(set(digests)))
    settings = [
        f"local KEY_SALT = {_lua_string(salt)}",
        f"local KEY_DIGESTS = {{{table}}}",
        f"local OPEN = {'true' if open_api else 'false'}",
        f"local FRONT_DOOR = {'true' if front_door else 'false'}",
        f"local MODEL_LIST = {_lua_string(model_list(models)) if models is not None else 'nil'}",
    ]
    return "\n".join(settings) + "\n\n" + API_KEY_LUA.read_text()


def lua_filter(source: str) -> dict:
    return {"name": LUA_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": source}}}


def ext_proc_filter(cluster: str, timeout: str = BBR_TIMEOUT) -> dict:
    """BBR as Envoy's external processor: the request's headers and whole body once (BUFFERED, so
    within the listener's buffer limit), never the response; a router that does not answer fails
    the request."""
    return {"name": EXT_PROC_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
        "failure_mode_allow": False,
        "message_timeout": timeout,
        "processing_mode": {
            "request_header_mode": "SEND", "request_body_mode": "BUFFERED", "request_trailer_mode": "SKIP",
            "response_header_mode": "SKIP", "response_body_mode": "NONE", "response_trailer_mode": "SKIP",
        },
    }}


NO_EXT_PROC = {EXT_PROC_FILTER: {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", "disabled": True}}


def bbr_cluster(namespace: str) -> str:
    """Istio's name for the cluster of BBR's Service, as the ingress's Envoy knows it."""
    return f"outbound|{GRPC_PORT}||{NAME}.{namespace}.svc.cluster.local"


def filter_patches(key_check: str, bbr_namespace: str, routes_without_bbr: Sequence[str]) -> list[dict]:
    """The EnvoyFilter's patches for the ingress: the key check, then BBR, inserted just before
    the router (after Istio's own authorization), and BBR switched off on `routes_without_bbr`
    (the UI's, Grafana's: a page load needs no model)."""
    before_router = {"context": "GATEWAY", "listener": {"filterChain": {"filter": {
        "name": HCM_FILTER, "subFilter": {"name": ROUTER_FILTER}}}}}
    patches = [
        {"applyTo": "HTTP_FILTER", "match": before_router,
         "patch": {"operation": "INSERT_BEFORE", "value": filter}}
        for filter in (lua_filter(key_check), ext_proc_filter(bbr_cluster(bbr_namespace)))
    ]
    patches += [
        {"applyTo": "HTTP_ROUTE",
         "match": {"context": "GATEWAY", "routeConfiguration": {"vhost": {"route": {"name": route}}}},
         "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": NO_EXT_PROC}}}
        for route in routes_without_bbr
    ]
    return patches


def model_routes(backends: Sequence[ModelBackend], front_door: Optional[tuple[pulumi.Input[str], int]],
                 remove_response_headers: Sequence[str] = ()) -> list[dict]:
    """The gateway's API routes (VirtualService `http` entries), before its catch-all `/v1`: keys
    only the front door can check go there, then one route per model served straight, matched on
    the header BBR set. No route timeout: a generation streams as long as it takes."""
    def destination(host: pulumi.Input[str], port: int) -> list[dict]:
        return [{"destination": {"host": host, "port": {"number": port}}}]

    headers = {"response": {"remove": list(remove_response_headers)}} if remove_response_headers else None
    routes: list[dict] = []
    if front_door is not None:
        routes.append({"name": "front-door-keys",
                       "match": [{"uri": {"prefix": "/v1"}, "headers": {ROUTE_HEADER: {"exact": FRONT_DOOR_ROUTE}}}],
                       "route": destination(*front_door), "timeout": "0s"})
    for b in backends:
        assert b.host is not None and b.port is not None, f"{b.alias}: no Service to route to"
        routes.append({"name": f"model-{b.alias}",
                       "match": [{"uri": {"prefix": "/v1"}, "headers": {MODEL_HEADER: {"exact": b.alias}}}],
                       "route": destination(b.host, b.port), "timeout": "0s"})
    if headers:
        for r in routes:
            r["headers"] = headers
    return routes


class ModelRoutingArgs(TypedDict):
    # Where BBR runs: a namespace of the mesh that admits the ingress (the front door's).
    namespace: pulumi.Input[str]
    namespace_name: str
    replicas: int
    # The ingress: its namespace and pod labels (the EnvoyFilter's workload).
    ingress_namespace: str
    ingress_selector: dict[str, str]
    # The keys the ingress admits straight (the client key), secrets; None: the API is open.
    keys: Optional[Sequence[pulumi.Output[str]]]
    # Whether a front door takes what the ingress cannot settle.
    front_door: bool
    # Every name `GET /v1/models` lists.
    model_names: Sequence[str]
    # Gateway routes on which BBR is not asked.
    routes_without_bbr: Sequence[str]
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
        namespace = args["namespace"]
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "model-routing",
                  "app.kubernetes.io/part-of": "llm-platform"}
        meta = {"namespace": namespace, "labels": labels}
        replicas = args["replicas"]
        account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account", metadata={**meta, "name": NAME},
            # BBR's manager insists on a REST config (in-cluster: the token) but, with only the
            # body-field plugin, never calls the API: the account has no role.
            opts=child)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-bbr",
            metadata={**meta, "name": NAME},
            spec={
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                # Every API request waits for an answer from BBR: never none ready.
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": account.metadata.name,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": BBR_USER, "runAsGroup": BBR_USER,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "bbr",
                            "image": BBR_IMAGE,
                            "args": bbr_args(),
                            "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                                      {"name": "grpc-health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                          "limits": {"cpu": "1", "memory": "256Mi"}},
                            "readinessProbe": {"grpc": {"port": HEALTH_PORT}, "periodSeconds": 5},
                            "livenessProbe": {"grpc": {"port": HEALTH_PORT}, "periodSeconds": 20,
                                              "failureThreshold": 3},
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}},
                        }],
                        "topologySpreadConstraints": [
                            {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
                             "labelSelector": {"matchLabels": labels}}
                            for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
                        ] if replicas > 1 else None,
                    },
                },
            },
            opts=child,
        )
        if replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-bbr-pdb", metadata={**meta, "name": NAME},
                spec={"maxUnavailable": 1, "selector": {"matchLabels": labels}}, opts=child)
        self.service = k8s.core.v1.Service(
            f"{name}-bbr-service",
            metadata={**meta, "name": NAME},
            # gRPC: the mesh carries it as HTTP/2.
            spec={"selector": labels, "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc",
                                                 "protocol": "TCP", "appProtocol": "grpc"}]},
            opts=child,
        )

        keys = args["keys"]
        salt = random.RandomPassword(f"{name}-key-salt", length=32, special=False, opts=child).result
        model_names = list(args["model_names"])

        def source(values: list[str]) -> str:
            salt_value, *key_values = values
            return key_check_source(salt=salt_value, digests=[key_digest(salt_value, k) for k in key_values],
                                    open_api=keys is None, front_door=args["front_door"], models=model_names)

        # Digests and the salt only: nothing in the filter is a secret.
        lua = pulumi.Output.unsecret(pulumi.Output.all(salt, *(keys or [])).apply(source))
        self.envoy_filter = k8s.apiextensions.CustomResource(
            f"{name}-ingress-filters",
            api_version=ENVOY_FILTER_API,
            kind="EnvoyFilter",
            metadata={"name": "llm-model-routing", "namespace": args["ingress_namespace"],
                      "labels": {"app.kubernetes.io/part-of": "llm-platform"}},
            spec={"workloadSelector": {"labels": dict(args["ingress_selector"])},
                  "configPatches": lua.apply(lambda text: filter_patches(
                      text, args["namespace_name"], args["routes_without_bbr"]))},
            # Istio objects need the CRDs and istiod's webhook; the ingress asks BBR only once it is ready
            # (a request it cannot ask fails), and passes the client key on only to servers that
            # accept it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*args["mesh_ready"], self.deployment, self.service,
                                                                 *args["servers"]]),
        )
        # Every request the ingress answers, counted and timed by model (and, as ever, by status).
        model = f"request.headers['{MODEL_HEADER.lower()}']"
        self.telemetry = k8s.apiextensions.CustomResource(
            f"{name}-ingress-metrics",
            api_version=TELEMETRY_API,
            kind="Telemetry",
            metadata={"name": "llm-model-metrics", "namespace": args["ingress_namespace"],
                      "labels": {"app.kubernetes.io/part-of": "llm-platform"}},
            spec={"selector": {"matchLabels": dict(args["ingress_selector"])},
                  "metrics": [{"providers": [{"name": "prometheus"}], "overrides": [
                      {"match": {"metric": metric, "mode": "CLIENT_AND_SERVER"},
                       "tagOverrides": {MODEL_METRIC_LABEL: {"operation": "UPSERT", "value": model}}}
                      for metric in ("REQUEST_COUNT", "REQUEST_DURATION")]}]},
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args["mesh_ready"])),
        )
        self.register_outputs({"service": self.service.metadata.name})
