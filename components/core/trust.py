"""Who may call whom, written once: a `Caller` (namespace, service account, pods) and the rules
both enforcement points derive from the same caller list — the mesh's AuthorizationPolicy rule
(by mTLS identity) and the NetworkPolicy rule (by namespace and pod labels).

Producers publish their Caller (the front door, the ingress gateway, the UI, Prometheus); the
program decides the edges; the components that own a namespace turn them into policies here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import pulumi

# The label Kubernetes sets on every namespace: its name.
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
# Istio's default; the mesh config here sets no other.
TRUST_DOMAIN = "cluster.local"
# Every injected proxy (and the ingress gateway) serves Envoy's own metrics here, in plain
# text and outside the inbound capture: the mesh's policies do not apply to it.
ENVOY_STATS_PORT = 15090
ENVOY_STATS_PORT_NAME = "http-envoy-prom"
ENVOY_STATS_PATH = "/stats/prometheus"
# Sidecars fetch their configuration and certificates from istiod here.
ISTIOD_XDS_PORT = 15012
# The API server's port where it is not 443 behind its endpoints (kubeadm's default).
KUBE_API_PORT = 6443
# Never "the internet": private (RFC 1918), carrier-grade NAT (RFC 6598, used for pods by
# some CNIs) and link-local (RFC 3927: cloud metadata endpoints) ranges.
NON_PUBLIC_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")


def principal(namespace: str, service_account: str) -> str:
    """The mTLS identity of a workload."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def spiffe_id(namespace: str, service_account: str) -> str:
    """The URI its certificate carries (what a sidecar puts in x-forwarded-client-cert)."""
    return f"spiffe://{principal(namespace, service_account)}"


@dataclass(frozen=True)
class Caller:
    """A workload that opens connections to another: its namespace, the service account its
    mesh identity comes from, and the labels of its pods (empty: any pod of the namespace)."""

    namespace: str
    service_account: str
    pod_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def principal(self) -> str:
        return principal(self.namespace, self.service_account)

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.namespace, self.service_account)

    def peer(self) -> dict:
        """The NetworkPolicy peer that selects its pods."""
        return namespace_peer(self.namespace, self.pod_labels)


def namespace_peer(namespace: pulumi.Input[str], pod_labels: Optional[Mapping[str, str]] = None) -> dict:
    """A NetworkPolicy peer: the pods of a namespace (those with `pod_labels`, if given)."""
    peer: dict = {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}}}
    if pod_labels:
        peer["podSelector"] = {"matchLabels": dict(pod_labels)}
    return peer


def tcp(*ports: int) -> list[dict]:
    return [{"protocol": "TCP", "port": p} for p in ports]


@dataclass(frozen=True)
class MetricsAccess:
    """A scraper and exactly where it may go in a namespace: the mesh admits its identity to GET
    `paths` on `ports` (through the sidecar, over mTLS), NetworkPolicies admit its pods to
    `ports` and the proxies' stats port. A `plaintext` scraper cannot present the mesh's
    certificate (it dials pod addresses its sidecar passes through unencrypted): the mesh admits
    a GET of `paths` on `ports` from anyone, and the targets accept plain text on those ports
    (who can connect at all is the NetworkPolicies' to say)."""

    scraper: Caller
    ports: tuple[int, ...]
    paths: tuple[str, ...]
    plaintext: bool = False


# --- the mesh's rules (AuthorizationPolicy) ------------------------------------------------


def mesh_rule(callers: Sequence[Caller]) -> dict:
    """An AuthorizationPolicy rule admitting the callers' identities."""
    return {"from": [{"source": {"principals": [c.principal for c in callers]}}]}


def metrics_rule(access: MetricsAccess) -> dict:
    """The AuthorizationPolicy rule that admits the scraper to its paths and ports alone (a
    plaintext one carries no identity to admit: the paths and ports alone)."""
    return {
        **({} if access.plaintext else mesh_rule([access.scraper])),
        "to": [{"operation": {"methods": ["GET"], "paths": list(access.paths),
                              "ports": [str(p) for p in access.ports]}}],
    }


# --- the network's rules (NetworkPolicy) ---------------------------------------------------


def network_rule(callers: Sequence[Caller], ports: Sequence[int] = ()) -> dict:
    """A NetworkPolicy ingress rule admitting the callers' pods (on `ports`, if given)."""
    rule: dict = {"from": [c.peer() for c in callers]}
    if ports:
        rule["ports"] = tcp(*ports)
    return rule


def metrics_ingress(access: MetricsAccess) -> dict:
    """The scraper's pods, on the metrics ports and the proxies' stats port, nothing else."""
    return network_rule([access.scraper], (*access.ports, ENVOY_STATS_PORT))


def outside_ranges(cluster_cidrs: Sequence[pulumi.Input[str]]) -> list[pulumi.Input[str]]:
    """What HTTPS egress must not reach: every non-public range, plus the cluster's own ranges
    that lie outside them (a VPC on public addresses, a public control-plane endpoint)."""
    # IPv4 only, as the egress rules built from these are (0.0.0.0/0 and its exceptions).
    fixed = [ipaddress.IPv4Network(r) for r in NON_PUBLIC_RANGES]
    out: list[pulumi.Input[str]] = list(NON_PUBLIC_RANGES)
    for cidr in cluster_cidrs:
        if isinstance(cidr, str):
            net = ipaddress.IPv4Network(cidr, strict=False)
            if any(net.subnet_of(f) for f in fixed) or cidr in out:
                continue
        out.append(cidr)
    return out


EVERY_POD: dict = {}


def default_deny() -> dict:
    return {"podSelector": EVERY_POD, "policyTypes": ["Ingress", "Egress"]}


def allow_dns() -> dict:
    """Egress to the cluster's DNS (kube-dns / CoreDNS in kube-system)."""
    return {"podSelector": EVERY_POD, "policyTypes": ["Egress"], "egress": [{
        "to": [namespace_peer("kube-system", {"k8s-app": "kube-dns"})],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }]}


def allow_istiod(istio_namespace: str) -> dict:
    """Egress of sidecars to istiod, for their configuration and certificates."""
    return {"podSelector": EVERY_POD, "policyTypes": ["Egress"], "egress": [{
        "to": [namespace_peer(istio_namespace)], "ports": tcp(ISTIOD_XDS_PORT),
    }]}


def allow_callers(callers: Sequence[Caller]) -> dict:
    """Ingress from the callers' pods to every pod of the namespace."""
    return {"podSelector": EVERY_POD, "policyTypes": ["Ingress"], "ingress": [network_rule(callers)]}


def allow_metrics(access: MetricsAccess) -> dict:
    return {"podSelector": EVERY_POD, "policyTypes": ["Ingress"], "ingress": [metrics_ingress(access)]}


def allow_https(cluster_cidrs: Sequence[pulumi.Input[str]]) -> dict:
    """HTTPS out, to public addresses only: not nodes, pods, Services or the metadata endpoint
    (private and link-local ranges), nor the cluster's own public ranges where they are known
    (GKE's endpoint). EKS's public API endpoint has no fixed address to leave out; pods here
    carry no service-account token for it."""
    return {"podSelector": EVERY_POD, "policyTypes": ["Egress"], "egress": [{
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": outside_ranges(cluster_cidrs)}}],
        "ports": tcp(443),
    }]}


def allow_readers_of_metrics(readers: MetricsAccess, targets: Mapping[str, str],
                             cluster_cidrs: Sequence[pulumi.Input[str]]) -> dict:
    """Workloads of the namespace itself that read its servers' metrics and the API (the inference
    pools' endpoint pickers): out to the `targets` pods on the metrics ports and to the API server
    (HTTPS, within the cluster's own ranges: where the control plane's endpoints are); the
    servers admit them on those ports (allow_metrics)."""
    return {"podSelector": {"matchLabels": dict(readers.scraper.pod_labels)}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"podSelector": {"matchLabels": dict(targets)}}], "ports": tcp(*readers.ports)},
        {"to": [{"ipBlock": {"cidr": cidr}} for cidr in cluster_cidrs], "ports": tcp(443, KUBE_API_PORT)},
    ]}


def mesh_namespace_policies(callers: Sequence[Caller], istio_namespace: str, metrics: Optional[MetricsAccess],
                            https_egress: bool, cluster_cidrs: Sequence[pulumi.Input[str]],
                            local_readers: Optional[tuple[MetricsAccess, Mapping[str, str]]] = None) -> dict[str, dict]:
    """Name -> NetworkPolicy spec for a namespace of the mesh: default-deny, the callers in, DNS
    and istiod out, the scraper in where it scrapes, HTTPS out where something downloads, and
    where the namespace's own workloads read its servers' metrics (`local_readers`: who, and the
    servers' labels), those flows."""
    specs = {
        "default-deny": default_deny(),
        "allow-callers": allow_callers(callers),
        "allow-dns": allow_dns(),
        "allow-istiod": allow_istiod(istio_namespace),
    }
    if metrics:
        specs["allow-metrics"] = allow_metrics(metrics)
    if https_egress:
        specs["allow-https"] = allow_https(cluster_cidrs)
    if local_readers:
        readers, targets = local_readers
        specs["allow-endpoint-pickers"] = allow_metrics(readers)
        specs["endpoint-pickers-out"] = allow_readers_of_metrics(readers, targets, cluster_cidrs)
    return specs
