"""What the scheduler needs to know about an accelerator: the extended resource a pod asks for,
where such pods may land and what makes it schedulable. Components read these facts instead of
branching per cloud; the cluster's config says which node pool carries the accelerator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from components.config import AcceleratorConfig, ClusterConfig, ServedModel

RESOURCES = {"vulkan": "squat.ai/dri", "nvidia": "nvidia.com/gpu", "tpu": "google.com/tpu"}


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
    # "generic" (squat's plugin for a host device), "nvidia-chart", "managed" (by the cloud) or "none".
    device_plugin: str = "none"
    # Device path the generic device plugin exposes (Vulkan through /dev/dri).
    device_path: Optional[str] = None
    share_count: int = 1
    # Units pods can count on: on nodes that exist, or that an autoscaler adds for pending
    # pods (None: CPU-only, no accelerator limit).
    capacity: Optional[int] = None

    def units(self, requested: Optional[int] = None) -> int:
        if not self.resource:
            return 0
        if self.whole_node:
            assert self.per_node is not None  # whole-node (TPU) accelerators come from a pool
            return self.per_node
        return requested or 1

    def fits_surge(self, units: int, in_use: int) -> bool:
        """Whether one more pod of `units` fits beside the `in_use` units every server on this
        accelerator already holds: a rolling update can then keep every replica serving."""
        return self.capacity is None or self.capacity - in_use >= units


def units_in_use(accel: Accelerator, models: Sequence[ServedModel]) -> int:
    """Units every replica of every model holds together (at the most an autoscaler runs)."""
    return sum(accel.units(getattr(m, "accelerators", None)) * m.most_replicas for m in models)


def from_config(cfg: AcceleratorConfig, cluster: ClusterConfig) -> Accelerator:
    if cfg.kind == "vulkan":
        # The Mac GPU reaches the krunkit guest as a virtio-gpu with Vulkan; squat's
        # generic-device-plugin advertises /dev/dri so pods can share it.
        return Accelerator(
            kind="vulkan", resource=RESOURCES["vulkan"], device_plugin="generic",
            device_path="/dev/dri", share_count=cfg.share_count, capacity=cfg.share_count,
        )
    if cfg.kind in ("nvidia", "tpu"):
        assert cluster.kind != "minikube"  # the config serves minikube on vulkan or none only
        pool = cluster.accelerator_pool(cfg.kind)
        return Accelerator(
            kind=cfg.kind,
            resource=RESOURCES[cfg.kind],
            per_node=pool.per_node,
            whole_node=cfg.kind == "tpu",
            node_selector=dict(pool.labels),
            tolerations=(toleration(pool.taint),) if pool.taint else (),
            device_plugin=pool.device_plugin,
            capacity=pool.capacity,
        )
    return Accelerator(kind="none")
