"""What the scheduler needs to know about an accelerator: the extended resource a pod asks for,
and where such pods may land. Components read these facts instead of branching per cloud."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .config import AcceleratorConfig


@dataclass(frozen=True)
class Accelerator:
    kind: str
    # Extended resource name advertised by the device plugin; None for CPU-only serving.
    resource: Optional[str] = None
    # How many units of `resource` one model-server pod asks for.
    per_pod: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    # Device path the local device plugin exposes (Vulkan through /dev/dri).
    device_path: Optional[str] = None
    share_count: int = 1

    def limits(self) -> dict[str, str]:
        return {self.resource: str(self.per_pod)} if self.resource else {}


def from_config(cfg: AcceleratorConfig) -> Accelerator:
    if cfg.kind == "vulkan":
        # The Mac GPU reaches the krunkit guest as a virtio-gpu with Vulkan; squat's
        # generic-device-plugin advertises /dev/dri so pods can share it.
        return Accelerator(
            kind="vulkan",
            resource="squat.ai/dri",
            per_pod=1,
            device_path="/dev/dri",
            share_count=cfg.share_count,
        )
    return Accelerator(kind="none")
