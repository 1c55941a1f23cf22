"""Mesh: Istio from its Helm charts (base -> cni -> istiod -> gateway), the injected namespaces
with their Pod Security levels, and the mesh's mTLS and authorization policies."""

from __future__ import annotations

from typing import Mapping, NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.base import IngressFacts
from components.core.chart_source import release_source
from components.core.pod_security import pod_security_labels
from components.core.sidecar import SIDECAR_RESOURCES
from components.core.trust import (  # noqa: F401  (re-exported: the mesh's ports)
    ENVOY_STATS_PATH,
    ENVOY_STATS_PORT,
    ENVOY_STATS_PORT_NAME,
    Caller,
    MetricsAccess,
    mesh_rule,
    metrics_rule,
)
from components.platform.gateway_api import GatewayApi

ISTIO_REPO = "https://istio-release.storage.googleapis.com/charts"
# Where Istio publishes its release images; set explicitly so every image (istiod, the CNI
# agent, sidecars and the gateway injected from istiod's template) is the chart's version.
ISTIO_HUB = "docker.io/istio"
SYSTEM_NS = "istio-system"
INGRESS_NS = "istio-ingress"
INGRESS_RELEASE = "istio-ingress"
# The gateway chart labels its pods `istio: <release name without "istio-">`.
INGRESS_SELECTOR = {"istio": "ingress"}
HTTP_PORT = 80
HTTPS_PORT = 443
# Kubernetes Ingresses (cert-manager's HTTP-01 challenges) are served by the ingress gateway
# when their IngressClass names Istio's ingress controller.
INGRESS_CLASS = "istio"
INGRESS_CONTROLLER = "istio.io/ingress-controller"
SECURITY_API = "security.istio.io/v1"
# The Gateway API Gateway the edge's routes attach to. istiod configures the inference pools'
# endpoint picker only on gateway pods that carry this Gateway's name in the label below (the pods
# of a Gateway istiod deploys itself get it; the gateway chart's get it from its values).
GATEWAY_NAME = "llm-gateway"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


# The gateway chart runs the ingress under a service account named after the release.
INGRESS_CALLER = Caller(INGRESS_NS, INGRESS_RELEASE)
INGRESS_PRINCIPAL = INGRESS_CALLER.principal


class MeshArgs(TypedDict):
    chart_version: str
    # Whether the stack installs the Gateway API's and the Inference Extension's CRDs (else the
    # cluster has them).
    gateway_api_crds: NotRequired[bool]
    ingress: IngressFacts
    # Namespaces whose pods get an Envoy sidecar -> the Pod Security level enforced there.
    injected_namespaces: Mapping[str, str]
    # Istio's platform profile for this kind of cluster, if it needs one.
    platform: Optional[str]
    # Pods in the injected namespaces accept only mutual TLS.
    strict_mtls: bool
    # Namespace -> the only workloads allowed to call its pods (by their mTLS identity).
    callers: Mapping[str, Sequence[Caller]]
    # Namespace -> the scrapers allowed to GET its metrics (and nothing else).
    metrics: Mapping[str, Sequence[MetricsAccess]]


def ingress_service_values(ingress: IngressFacts) -> dict:
    def port(name: str, number: int, offset: int) -> dict:
        p = {"name": name, "port": number, "protocol": "TCP", "targetPort": number}
        if ingress.node_port:
            p["nodePort"] = ingress.node_port + offset
        return p

    return {
        "type": ingress.service_type,
        "annotations": dict(ingress.annotations),
        "ports": [
            {"name": "status-port", "port": 15021, "protocol": "TCP", "targetPort": 15021},
            port("http2", HTTP_PORT, 0),
            port("https", HTTPS_PORT, 1),
        ],
    }


# The gateway chart's pod labels (app = release name, istio = release name without "istio-").
INGRESS_POD_LABELS = {"app": INGRESS_RELEASE, **INGRESS_SELECTOR}


def ingress_values(ingress: IngressFacts) -> dict:
    """Values of the gateway chart: the Service, and on clusters that can hold more than one
    replica, at least two spread over nodes and zones with a PodDisruptionBudget, so a node
    drain or a zone outage does not drop all traffic."""
    values: dict = {"service": ingress_service_values(ingress), "labels": {GATEWAY_NAME_LABEL: GATEWAY_NAME}}
    if ingress.min_replicas > 1:
        def spread(key: str, when: str) -> dict:
            # Honor taints: nodes the gateway cannot run on (GPU/TPU pools) are no domain.
            return {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when, "nodeTaintsPolicy": "Honor",
                    "labelSelector": {"matchLabels": dict(INGRESS_POD_LABELS)}}

        values.update({
            "autoscaling": {"enabled": True, "minReplicas": ingress.min_replicas,
                            "maxReplicas": max(ingress.min_replicas, 5)},
            "podDisruptionBudget": {"minAvailable": 1},
            "topologySpreadConstraints": [
                spread("kubernetes.io/hostname", "DoNotSchedule"),
                spread("topology.kubernetes.io/zone", "ScheduleAnyway"),
            ],
        })
    return values


class Mesh(pulumi.ComponentResource):
    base: k8s.helm.v3.Release
    cni: k8s.helm.v3.Release
    istiod: k8s.helm.v3.Release
    gateway: k8s.helm.v3.Release
    namespaces: dict[str, k8s.core.v1.Namespace]
    # Where users reach the ingress: from the cluster's facts, or the load balancer's address.
    ingress_address: pulumi.Output[str]
    ingress_namespace: str = INGRESS_NS
    system_namespace: str = SYSTEM_NS
    ingress_selector: dict[str, str] = INGRESS_SELECTOR
    ingress_service_host: str = f"{INGRESS_RELEASE}.{INGRESS_NS}.svc.cluster.local"
    # The ingress Service as a Gateway's address names it: istiod completes a short name with the
    # cluster's own domain, which need not be cluster.local.
    ingress_service_name: str = INGRESS_RELEASE

    def __init__(self, name: str, args: MeshArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:Mesh", name, None, opts)
        version = args["chart_version"]

        def child(*depends_on: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=list(depends_on))

        def release(logical: str, chart: str, release_name: str, namespace: str, values: dict, *after):
            # helm.v3.Release: previews without a reachable cluster and keeps the charts'
            # hooks and CRDs; Istio's charts rely on both.
            return k8s.helm.v3.Release(
                f"{name}-{logical}",
                name=release_name,
                **release_source(chart, version, ISTIO_REPO),
                namespace=namespace,
                create_namespace=True,
                values=values,
                opts=child(*after),
            )

        images = {"hub": ISTIO_HUB, "tag": version}
        platform = {"global": {**images, **({"platform": args["platform"]} if args["platform"] else {})}}
        # base carries the CRDs every Istio object needs; the Gateway API's come before istiod,
        # which serves them.
        self.base = release("base", "base", "istio-base", SYSTEM_NS, {"defaultRevision": "default"})
        self.gateway_api = GatewayApi(f"{name}-gateway-api", args.get("gateway_api_crds", True),
                                      opts=pulumi.ResourceOptions(parent=self))
        # The CNI node agent sets up traffic redirection, so injected pods need no NET_ADMIN
        # init container and can pass the baseline and restricted Pod Security profiles.
        self.cni = release("cni", "cni", "istio-cni", SYSTEM_NS, platform, self.base)
        self.istiod = release("istiod", "istiod", "istiod", SYSTEM_NS, {
            # The sidecar's resources as the teams' quotas count them.
            **platform, "global": {**platform["global"], "proxy": {"resources": SIDECAR_RESOURCES}},
            "pilot": {"cni": {"enabled": True}},
            # Ingresses istiod serves (cert-manager's HTTP-01 challenges) become a Gateway and
            # VirtualService in this namespace, and their status carries the address of the
            # Service `ingressService` there; istiod's default is istio-system.
            "env": {"K8S_INGRESS_NS": INGRESS_NS,
                    # InferencePool backends of HTTPRoutes: off by default in this release.
                    "ENABLE_GATEWAY_API_INFERENCE_EXTENSION": "true"},
            "meshConfig": {
                "ingressControllerMode": "STRICT",
                "ingressClass": INGRESS_CLASS,
                "ingressSelector": INGRESS_SELECTOR["istio"],
                "ingressService": INGRESS_RELEASE,
            },
        }, self.cni, self.gateway_api)
        self.gateway = release(
            "gateway", "gateway", INGRESS_RELEASE, INGRESS_NS, ingress_values(args["ingress"]), self.istiod,
        )
        # The injection webhook must exist before pods start in these namespaces, or they
        # would run without a sidecar.
        self.namespaces = {
            ns: k8s.core.v1.Namespace(
                f"{name}-ns-{ns}",
                metadata={"name": ns, "labels": {"istio-injection": "enabled", **pod_security_labels(level)}},
                opts=child(self.istiod),
            )
            for ns, level in args["injected_namespaces"].items()
        }
        # Istio objects need the CRDs from `base` and istiod's validating webhook.
        policy_opts = child(self.base, self.istiod)
        for ns, namespace in self.namespaces.items():
            if args["strict_mtls"]:
                k8s.apiextensions.CustomResource(
                    f"{name}-mtls-{ns}",
                    api_version=SECURITY_API,
                    kind="PeerAuthentication",
                    metadata={"name": "default", "namespace": namespace.metadata.name},
                    spec={"mtls": {"mode": "STRICT"}},
                    opts=policy_opts,
                )
            if ns in args["callers"]:
                # An ALLOW policy denies every request it does not match.
                k8s.apiextensions.CustomResource(
                    f"{name}-callers-{ns}",
                    api_version=SECURITY_API,
                    kind="AuthorizationPolicy",
                    metadata={"name": "allowed-callers", "namespace": namespace.metadata.name},
                    spec={"action": "ALLOW", "rules": [
                        mesh_rule(args["callers"][ns]),
                        *[metrics_rule(access) for access in args["metrics"].get(ns, ())],
                    ]},
                    opts=policy_opts,
                )
        ingress = args["ingress"]
        if ingress.address is not None:
            self.ingress_address = pulumi.Output.from_input(ingress.address)
        else:
            service = k8s.core.v1.Service.get(
                f"{name}-ingress-service",
                f"{INGRESS_NS}/{INGRESS_RELEASE}",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.gateway]),
            )
            self.ingress_address = service.status.apply(_load_balancer_address)
        self.register_outputs({
            "ingressAddress": self.ingress_address,
            "ingressNamespace": self.ingress_namespace,
            "ingressSelector": self.ingress_selector,
            "ingressServiceHost": self.ingress_service_host,
        })


def _load_balancer_address(status) -> str:
    points = (status and status.load_balancer and status.load_balancer.ingress) or []
    if not points:
        return "<pending load balancer>"
    return points[0].hostname or points[0].ip
