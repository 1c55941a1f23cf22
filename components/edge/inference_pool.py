"""InferencePool: a model with more than one vLLM replica, balanced by load. The pool (the Inference
Extension's InferencePool) names the model's pods and its endpoint picker (EPP); the gateway's
rule for the model sends to the pool, and istiod asks the picker, per request, which replica
takes it: the one with the shortest queue, the most free KV cache and the most of the prompt
already cached (components/edge/endpoint_picker.py). Plain Service balancing would be blind to
all three.

The picker runs in the models' namespace (istiod looks for it beside its pool), inside the mesh:
the ingress reaches it with mTLS, as it reaches the servers; it reads the pool's pods from the
API (a Role in that namespace alone) and each replica's `/metrics` at the pod's address. Its
sidecar passes such a connection through unencrypted (no Service names a pod's address) and the
picker has no certificate of its own to present, so the pool's servers accept plain text on their
serving port (a PeerAuthentication for those pods alone), where the mesh admits a plain-text
request to GET `/metrics` and nothing else: inference there still needs an mTLS identity the
mesh admits, and the key. One replica, as upstream runs it: the prefix-cache index lives in its
memory. A request finds no replica while the picker is away (Envoy's external processor in the
mode the picker needs cannot fail open).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.core.extension_pods import extension_deployment_spec
from components.core.trust import Caller, MetricsAccess
from components.edge import endpoint_picker as epp

COMPONENT = "endpoint-picker"
# One service account for every pool's picker: one identity the mesh and the network admit.
SERVICE_ACCOUNT = "endpoint-picker"
CONFIG_DIR = "/etc/endpoint-picker"
CONFIG_FILE = "plugins.json"
PICKER_LABELS = {"app.kubernetes.io/component": COMPONENT, "app.kubernetes.io/part-of": "llm-platform"}
# A stopping picker stays up while the ingress learns it is gone.
PRE_STOP_SECONDS = 5


def picker_caller(namespace: str) -> Caller:
    """The pickers of a namespace, as the servers there see them."""
    return Caller(namespace, SERVICE_ACCOUNT, PICKER_LABELS)


def picker_metrics(namespace: str, ports: Sequence[int]) -> MetricsAccess:
    """What the pickers read from the servers: their metrics, nothing else, in plain text."""
    return MetricsAccess(picker_caller(namespace), tuple(sorted(set(ports))), (epp.METRICS_PATH,), plaintext=True)


def pool_ref(alias: str, namespace: pulumi.Input[str]) -> dict:
    """The gateway rule's backendRef to a model's pool."""
    return {"group": epp.POOL_API_GROUP, "kind": "InferencePool", "name": alias, "namespace": namespace}


def picker_name(alias: str) -> str:
    return f"{alias}-{COMPONENT}"


class InferencePoolsArgs(TypedDict):
    # The models' namespace: the pools, their pickers and the servers.
    namespace: pulumi.Input[str]
    namespace_name: str
    # Alias -> (the server pods' labels, their serving port).
    pools: Mapping[str, tuple[Mapping[str, str], int]]
    # What the pools wait for: the CRDs, istiod, the namespace's rules.
    ready: Sequence[pulumi.Resource]
    # Whether the servers' namespace accepts only mTLS (then the pools' servers accept the
    # pickers' plain text on their serving port).
    strict_mtls: bool


class InferencePools(pulumi.ComponentResource):
    """Every pool of the stack, with the picker of each, and what the pickers share."""

    backend_refs: dict[str, dict]
    # What the routes to the pools wait for: the pickers running.
    ready: list[pulumi.Resource]

    def __init__(self, name: str, args: InferencePoolsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:InferencePools", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        meta = {"namespace": namespace, "labels": PICKER_LABELS}
        # The picker reads the API (its pool, the pods): the one workload here with a token.
        account = k8s.core.v1.ServiceAccount(f"{name}-service-account", metadata={**meta, "name": SERVICE_ACCOUNT},
                                             opts=child)
        role = k8s.rbac.v1.Role(f"{name}-reader", metadata={**meta, "name": COMPONENT},
                                rules=epp.role_rules(), opts=child)
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-reader-binding", metadata={**meta, "name": COMPONENT},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.metadata.name},
            subjects=[{"kind": "ServiceAccount", "name": account.metadata.name, "namespace": namespace}],
            opts=child)
        config = k8s.core.v1.ConfigMap(f"{name}-config", metadata={**meta, "name": COMPONENT},
                                       data={CONFIG_FILE: epp.plugins_config()}, opts=child)
        self.backend_refs = {}
        self.ready = []
        ready = [*args["ready"], binding, config]
        for alias, (selector, port) in sorted(args["pools"].items()):
            self._pool(name, alias, dict(selector), port, args["namespace_name"], meta, account, config,
                       args["strict_mtls"], pulumi.ResourceOptions(parent=self, depends_on=ready))
            self.backend_refs[alias] = pool_ref(alias, namespace)
        self.register_outputs({})

    def _pool(self, name: str, alias: str, selector: dict, port: int, namespace_name: str, meta: dict,
              account: k8s.core.v1.ServiceAccount, config: k8s.core.v1.ConfigMap, strict_mtls: bool,
              opts: pulumi.ResourceOptions) -> None:
        picker = picker_name(alias)
        labels = {**PICKER_LABELS, "app.kubernetes.io/name": picker}
        pool_meta = {**meta, "labels": labels}
        # The pool before its picker: the picker is ready only once it has read its pool.
        pool = k8s.apiextensions.CustomResource(
            f"{name}-{alias}",
            api_version=epp.POOL_API_VERSION,
            kind="InferencePool",
            metadata={**meta, "name": alias, "labels": {"app.kubernetes.io/name": alias,
                                                        "app.kubernetes.io/part-of": "llm-platform"}},
            spec=epp.inference_pool_spec(selector, port, picker),
            opts=opts,
        )
        after_pool = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[pool]))
        if strict_mtls:
            k8s.apiextensions.CustomResource(
                f"{name}-{alias}-plaintext-metrics",
                api_version="security.istio.io/v1",
                kind="PeerAuthentication",
                metadata={**meta, "name": f"{alias}-metrics-for-{COMPONENT}"},
                spec={"selector": {"matchLabels": selector}, "mtls": {"mode": "STRICT"},
                      "portLevelMtls": {str(port): {"mode": "PERMISSIVE"}}},
                opts=opts,
            )
        deployment = k8s.apps.v1.Deployment(
            f"{name}-{alias}-picker",
            metadata={**pool_meta, "name": picker},
            spec=extension_deployment_spec(
                "epp", epp.EPP_IMAGE, epp.epp_args(alias, namespace_name, f"{CONFIG_DIR}/{CONFIG_FILE}"),
                labels=labels, replicas=1, spread=False, service_account=account.metadata.name, api_token=True,
                ports={"grpc": epp.GRPC_PORT, "grpc-health": epp.HEALTH_PORT, "metrics": epp.METRICS_PORT},
                # Sized for a pool's requests, not upstream's load tests (4 CPUs, 8 GiB); the
                # memory limit bounds the prefix index.
                resources={"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
                readiness_probe={"grpc": {"port": epp.HEALTH_PORT, "service": epp.HEALTH_SERVICE}, "periodSeconds": 5},
                # Alive is answering at all: a picker waiting for its pool is alive.
                liveness_probe={"tcpSocket": {"port": epp.HEALTH_PORT}, "periodSeconds": 20, "failureThreshold": 3},
                pre_stop_seconds=PRE_STOP_SECONDS,
                config_map=config.metadata.name, config_volume="config", config_dir=CONFIG_DIR,
            ),
            opts=after_pool,
        )
        service = k8s.core.v1.Service(
            f"{name}-{alias}-picker-service",
            metadata={**pool_meta, "name": picker},
            # gRPC, streamed both ways: the mesh carries it as HTTP/2.
            spec={"selector": labels, "ports": [{"name": "grpc", "port": epp.GRPC_PORT, "targetPort": "grpc",
                                                 "protocol": "TCP", "appProtocol": "grpc"}]},
            opts=opts,
        )
        self.ready += [deployment, service]
