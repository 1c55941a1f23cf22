"""The Kubernetes layer of each shipped stack, on `cluster.kind: existing` pointed at the engine
tests' cluster, with nodes shaped like that stack's pools.

The stack files' own sections (models, front door, UI, mesh, ...) are used as shipped; only the
cluster section is replaced. The node shapes are written here from the clouds' documentation
(instance sizes, GKE's TPU labels and taint), not derived from the program.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from tests.kube import NodeShape
from tests.engine.world import Devices
from tools.mock_engine import PROJECT_DIR

PREFIX = "llm-platform:"


def shipped(stack: str) -> dict:
    """A stack file's config, keys without the project prefix."""
    doc = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())
    return {k[len(PREFIX):]: v for k, v in doc["config"].items()}


def _labels(name: str, arch: str = "amd64", **extra: str) -> dict:
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch, **extra}


@dataclass
class EngineStackShape:
    stack: str
    config: dict
    nodes: list[NodeShape]
    devices: Optional[Devices]


def local(kubeconfig: str, charts_dir: Path) -> EngineStackShape:
    """minikube's one node (6 CPUs, 12 GiB as Pulumi.local.yaml asks), its Mac GPU behind
    /dev/dri: 4 shares once squat's generic device plugin runs on it."""
    node = NodeShape(name="llm-platform", pool="minikube",
                     labels=_labels("llm-platform", "arm64", **{"minikube.k8s.io/primary": "true"}),
                     taints=[], cpu="6", memory="12Gi", pods=110, devices_from_plugin={"squat.ai/dri": 4})
    cfg = shipped("local")
    # Its node is arm64, as minikube's is on Apple Silicon.
    cfg["cluster"] = {"kind": "existing", "kubeconfig": kubeconfig, "ingressServiceType": "NodePort",
                      "networkPolicy": "enforced", "amd64Nodes": False}
    cfg["charts"] = {"archiveDir": str(charts_dir)}
    return EngineStackShape("local", cfg, [node], Devices(("kube-system", "generic-device-plugin"), [node]))


# EKS: m6i.xlarge system nodes (4 vCPU, 16 GiB) in two zones, g6.xlarge GPU nodes (4 vCPU,
# 16 GiB, one L4) in one zone, tainted as the stack's node pool taints them; NVIDIA's device
# plugin advertises the GPU once it runs there. The GPU nodes carry the label NVIDIA's GPU
# feature discovery sets, which the device plugin chart's own affinity also asks for.
EKS_GPU_LABELS = {"nvidia.com/gpu.present": "true"}
EKS_GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}


def eks(kubeconfig: str, charts_dir: Path) -> EngineStackShape:
    zone = "topology.kubernetes.io/zone"
    system = [NodeShape(name=f"system-{i}", pool="system",
                        labels=_labels(f"system-{i}", **{zone: z, "node.kubernetes.io/instance-type": "m6i.xlarge"}),
                        taints=[], cpu="3920m", memory="14Gi", pods=58)
              for i, z in enumerate(("us-west-2a", "us-west-2b"))]
    gpus = [NodeShape(name=f"gpu-{i}", pool="gpu",
                      labels=_labels(f"gpu-{i}", **{zone: "us-west-2a", "node.kubernetes.io/instance-type": "g6.xlarge",
                                                    **EKS_GPU_LABELS}),
                      taints=[EKS_GPU_TAINT], cpu="3920m", memory="14Gi", pods=58,
                      devices_from_plugin={"nvidia.com/gpu": 1})
            for i in range(2)]
    cfg = shipped("eks")
    cfg["cluster"] = {"kind": "existing", "kubeconfig": kubeconfig, "networkPolicy": "enforced",
                      "acceleratorNodes": {"perNode": 1, "nodes": 2, "labels": EKS_GPU_LABELS,
                                           "taint": EKS_GPU_TAINT, "devicePlugin": "chart"}}
    cfg["charts"] = {"archiveDir": str(charts_dir)}
    return EngineStackShape("eks", cfg, system + gpus, Devices(("nvidia-device-plugin", "nvidia-device-plugin"), gpus))


# GKE: e2-standard-4 system nodes; a ct5lp-hightpu-4t TPU host is labelled by GKE with its
# accelerator (tpu-v5-lite-podslice) and topology (2x2), tainted google.com/tpu=present, and
# advertises its 4 chips through GKE's own device plugin from the start.
GKE_TPU_LABELS = {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                  "cloud.google.com/gke-tpu-topology": "2x2"}
GKE_TPU_TAINT = {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}


def gke(kubeconfig: str, charts_dir: Path) -> EngineStackShape:
    zone = "topology.kubernetes.io/zone"
    system = [NodeShape(name=f"system-{i}", pool="system",
                        labels=_labels(f"system-{i}", **{zone: "us-central1-a"}),
                        taints=[], cpu="3920m", memory="13Gi", pods=110) for i in range(2)]
    tpu = NodeShape(name="tpu-0", pool="tpu",
                    labels=_labels("tpu-0", **{zone: "us-central1-a", **GKE_TPU_LABELS}),
                    taints=[GKE_TPU_TAINT], cpu="111", memory="180Gi", pods=110, devices={"google.com/tpu": 4})
    cfg = shipped("gke")
    cfg["cluster"] = {"kind": "existing", "kubeconfig": kubeconfig, "networkPolicy": "enforced",
                      "acceleratorNodes": {"perNode": 4, "nodes": 1, "labels": GKE_TPU_LABELS,
                                           "taint": GKE_TPU_TAINT, "devicePlugin": "managed"}}
    cfg["charts"] = {"archiveDir": str(charts_dir)}
    return EngineStackShape("gke", cfg, system + [tpu], None)


SHAPES = {"local": local, "eks": eks, "gke": gke}
