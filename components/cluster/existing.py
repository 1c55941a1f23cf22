"""A cluster the user already runs (kind, k3d, a lab cluster): nothing is created."""

from __future__ import annotations

import pathlib
from typing import Mapping

import pulumi

from components.cluster.base import BuiltCluster, IngressFacts
from components.config import ExistingCluster, expand_path
from components.core.names import in_workspace


def build(parent: pulumi.Resource, name: str, cfg: ExistingCluster,
          pod_identities: Mapping[tuple[str, str], str]) -> BuiltCluster:
    return BuiltCluster(
        # In the operator's workspace: no kubeconfig, so the provider uses the pod's service
        # account (its in-cluster configuration).
        kubeconfig="" if in_workspace() else pathlib.Path(expand_path(cfg.kubeconfig)).read_text(),
        context=None if in_workspace() else cfg.context,
        ingress=IngressFacts(service_type=cfg.ingress_service_type, address=cfg.ingress_address),
        host_models_dir=expand_path(cfg.models_dir) if cfg.models_dir else None,
        # Only the user knows whether the cluster's CNI enforces NetworkPolicies.
        network_policy_enforced=cfg.network_policy == "enforced",
        # k3s and k3d bundle metrics-server; kind and Docker Desktop do not.
        serves_resource_metrics=cfg.metrics_server == "present",
        amd64_nodes=cfg.amd64_nodes,
    )
