"""minikube on an Apple Silicon Mac with the krunkit driver (GPU through Vulkan)."""

from __future__ import annotations

import shlex
from typing import Mapping

import pulumi
import pulumi_command as command

from components.cluster.base import BuiltCluster, IngressFacts
from components.config import MinikubeCluster, expand_path
from components.core.names import MODELS_MOUNT

CNI = "calico"
# minikube's pod and Service ranges (both private, listed for completeness).
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"


def start_command(cfg: MinikubeCluster) -> list[str]:
    return [
        "minikube", "start",
        "--profile", cfg.profile,
        "--driver", cfg.driver,
        "--cpus", str(cfg.cpus),
        "--memory", cfg.memory,
        "--disk-size", cfg.disk_size,
        "--kubernetes-version", cfg.kubernetes_version,
        # minikube's default bridge CNI ignores NetworkPolicies; Calico enforces them and
        # writes a standard CNI config the Istio CNI plugin chains onto.
        "--cni", CNI,
        # Since minikube 1.37 --mount-string alone mounts the folder (virtiofs on krunkit).
        "--mount-string", f"{expand_path(cfg.models_dir)}:{MODELS_MOUNT}",
    ]


def build(parent: pulumi.Resource, name: str, cfg: MinikubeCluster,
          pod_identities: Mapping[tuple[str, str], str]) -> BuiltCluster:
    profile = shlex.quote(cfg.profile)
    models_dir = expand_path(cfg.models_dir)
    # `minikube status` succeeds only when the profile is up, so a running cluster is left
    # alone and a stopped one is started again: create is idempotent.
    vm = command.local.Command(
        f"{name}-minikube",
        create=f"mkdir -p {shlex.quote(models_dir)} && "
        f"(minikube status --profile {profile} >/dev/null 2>&1 || {shlex.join(start_command(cfg))})",
        delete=f"minikube delete --profile {profile}",
        opts=pulumi.ResourceOptions(parent=parent),
    )
    # Client certificates inlined, so the text stays the same across `up`s.
    kubeconfig = command.local.Command(
        f"{name}-kubeconfig",
        create=f"kubectl config view --raw --minify --flatten --context {profile}",
        opts=pulumi.ResourceOptions(
            parent=parent, depends_on=[vm], additional_secret_outputs=["stdout"]
        ),
    )
    # minikube's metrics-server addon serves the resource metrics API the ingress gateway's and
    # istiod's HPAs read (CPU). Its own command, so that a profile already running gets it too;
    # enabling it again changes nothing, and `minikube delete` takes it with the cluster.
    command.local.Command(
        f"{name}-metrics-server",
        create=f"minikube addons enable metrics-server --profile {profile}",
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[vm]),
    )
    ip = command.local.Command(
        f"{name}-ip",
        create=f"minikube ip --profile {profile}",
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[vm]),
    )
    return BuiltCluster(
        kubeconfig=kubeconfig.stdout,
        ingress=IngressFacts(
            service_type="NodePort",
            node_port=cfg.ingress_node_port,
            address=ip.stdout.apply(lambda s: f"{s.strip()}:{cfg.ingress_node_port}"),
        ),
        istio_platform="minikube",
        host_models_dir=models_dir,
        network_policy_enforced=True,
        serves_resource_metrics=True,
        internal_cidrs=[POD_CIDR, SERVICE_CIDR],
        small=True,
        # Apple Silicon: krunkit's VM runs arm64 nodes.
        amd64_nodes=False,
    )
