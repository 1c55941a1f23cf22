"""ModelNetworkPolicies: default-deny for the model namespace, then only the flows it needs."""

from __future__ import annotations

from typing import Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
ISTIOD_XDS_PORT = 15012


class ModelNetworkPoliciesArgs(TypedDict):
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    # Namespaces whose pods may open connections to the model servers.
    ingress_from: Sequence[str]
    istio_namespace: str
    # Whether any server here downloads weights (HTTPS out to the model hub).
    https_egress: bool


def _from_namespaces(names: Sequence[str]) -> list[dict]:
    return [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: n}}} for n in names]


def policy_specs(args: ModelNetworkPoliciesArgs) -> dict[str, dict]:
    """Name -> NetworkPolicy spec; each selects every pod of the namespace."""
    every_pod: dict = {}
    specs = {
        "default-deny": {"podSelector": every_pod, "policyTypes": ["Ingress", "Egress"]},
        "allow-callers": {"podSelector": every_pod, "policyTypes": ["Ingress"],
                          "ingress": [{"from": _from_namespaces(args["ingress_from"])}]},
        "allow-dns": {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }]},
        # Sidecars fetch their configuration and certificates from istiod.
        "allow-istiod": {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            "to": _from_namespaces([args["istio_namespace"]]),
            "ports": [{"protocol": "TCP", "port": ISTIOD_XDS_PORT}],
        }]},
    }
    if args["https_egress"]:
        specs["allow-https"] = {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        }]}
    return specs


class ModelNetworkPolicies(pulumi.ComponentResource):
    def __init__(self, name: str, args: ModelNetworkPoliciesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:ModelNetworkPolicies", name, None, opts)
        for policy, spec in policy_specs(args).items():
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy}",
                metadata={"name": policy, "namespace": args["namespace"]},
                spec=spec,
                opts=pulumi.ResourceOptions(parent=self, provider=args["provider"]),
            )
        self.register_outputs({})
