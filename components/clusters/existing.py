"""A cluster the user already runs (kind, k3d, a lab cluster): nothing is created."""

from __future__ import annotations

import pathlib

import pulumi

from ..config import ConfigError, ExistingCluster, expand_path
from .base import BuiltCluster, IngressFacts


def build(parent: pulumi.Resource, name: str, cfg: ExistingCluster) -> BuiltCluster:
    path = pathlib.Path(expand_path(cfg.kubeconfig))
    if not path.is_file():
        raise ConfigError(
            f"Pulumi.{pulumi.get_stack()}.yaml: llm-platform:cluster.kubeconfig: "
            f"expected a readable kubeconfig file, {str(path)!r} does not exist"
        )
    return BuiltCluster(
        kubeconfig=path.read_text(),
        context=cfg.context,
        ingress=IngressFacts(service_type=cfg.ingress_service_type, address=cfg.ingress_address),
        host_models_dir=expand_path(cfg.models_dir) if cfg.models_dir else None,
    )
