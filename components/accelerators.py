"""What the scheduler needs to know about an accelerator: the extended resource a pod asks for,
and where such pods may land. Components read these facts instead of branching per cloud."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .config import AcceleratorConfig
from .hardware import gpus_per_instance, tpu_host

# Taints of the accelerator node pools. Pods' tolerations are derived from these, never retyped.
NVIDIA_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
# GKE adds this one to every TPU node itself.
TPU_TAINT = {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}
GPU_NODE_LABEL = {"llm-platform/accelerator": "nvidia"}


def toleration(taint: dict) -> dict:
    return {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": taint["effect"]}


@dataclass(frozen=True)
class Accelerator:
    kind: str
    # Extended resource name advertised by the device plugin; None for CPU-only serving.
    resource: Optional[str] = None
    # Units of `resource` on one node (None where unknown or unlimited).
    per_node: Optional[int] = None
    # TPU pods take every chip of their host; GPU pods take what the model asks for.
    whole_node: bool = False
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    # Device path the local device plugin exposes (Vulkan through /dev/dri).
    device_path: Optional[str] = None
    share_count: int = 1

    def units(self, requested: Optional[int] = None) -> int:
        if not self.resource:
            return 0
        if self.whole_node:
            return self.per_node
        return requested or 1


def from_config(cfg: AcceleratorConfig, cluster: Any) -> Accelerator:
    if cfg.kind == "vulkan":
        # The Mac GPU reaches the krunkit guest as a virtio-gpu with Vulkan; squat's
        # generic-device-plugin advertises /dev/dri so pods can share it.
        return Accelerator(
            kind="vulkan", resource="squat.ai/dri", device_path="/dev/dri", share_count=cfg.share_count
        )
    if cfg.kind == "nvidia":
        return Accelerator(
            kind="nvidia",
            resource="nvidia.com/gpu",
            per_node=gpus_per_instance(cluster.gpu_nodes.instance_type),
            node_selector=dict(GPU_NODE_LABEL),
            tolerations=(toleration(NVIDIA_TAINT),),
        )
    if cfg.kind == "tpu":
        host = tpu_host(cluster.tpu_pool.machine_type)
        return Accelerator(
            kind="tpu",
            resource="google.com/tpu",
            per_node=host.chips,
            whole_node=True,
            node_selector={
                "cloud.google.com/gke-tpu-accelerator": host.accelerator_label,
                "cloud.google.com/gke-tpu-topology": cluster.tpu_pool.topology or host.topology,
            },
            tolerations=(toleration(TPU_TAINT),),
        )
    return Accelerator(kind="none")
