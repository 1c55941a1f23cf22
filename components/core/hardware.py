"""Facts about accelerator hardware that config checks and scheduling both need."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# NVIDIA GPUs per EC2 instance size, for the families EKS's NVIDIA AMIs serve.
_G_SIZES = {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1,
            "12xlarge": 4, "24xlarge": 4, "48xlarge": 8}
GPUS_PER_INSTANCE = {
    "g5": _G_SIZES, "g6": _G_SIZES, "g6e": _G_SIZES,
    "p4d": {"24xlarge": 8}, "p5": {"48xlarge": 8}, "p5e": {"48xlarge": 8},
}

# GKE TPU machine types -> node label value of cloud.google.com/gke-tpu-accelerator.
TPU_ACCELERATOR_LABELS = {"ct5lp-hightpu": "tpu-v5-lite-podslice", "ct6e-standard": "tpu-v6e-slice"}
# Chips on one host -> the single-host topology label.
SINGLE_HOST_TOPOLOGY = {1: "1x1", 4: "2x2", 8: "2x4"}
_TPU_MACHINE = re.compile(r"^(?P<family>[a-z0-9]+-[a-z]+)-(?P<chips>[0-9]+)t$")


def gpus_per_instance(instance_type: str) -> Optional[int]:
    family, _, size = instance_type.partition(".")
    return GPUS_PER_INSTANCE.get(family, {}).get(size)


@dataclass(frozen=True)
class TpuHost:
    accelerator_label: str
    chips: int
    topology: str


def tpu_host(machine_type: str) -> Optional[TpuHost]:
    m = _TPU_MACHINE.match(machine_type)
    if not m or m["family"] not in TPU_ACCELERATOR_LABELS or int(m["chips"]) not in SINGLE_HOST_TOPOLOGY:
        return None
    chips = int(m["chips"])
    return TpuHost(TPU_ACCELERATOR_LABELS[m["family"]], chips, SINGLE_HOST_TOPOLOGY[chips])


def topology_chips(topology: str) -> int:
    chips = 1
    for dim in topology.split("x"):
        chips *= int(dim)
    return chips


# The label NVIDIA's device plugin chart (0.20.0) accepts in its default node affinity to run on a
# node without node-feature-discovery's PCI label. EKS GPU nodes carry it from their node group, so
# the plugin runs there from the start, and nowhere else.
NVIDIA_GPU_PRESENT_LABEL = {"nvidia.com/gpu.present": "true"}

# Taints of accelerator nodes. Pods' tolerations are derived from these, never retyped.
EKS_GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
# GKE adds these to its GPU and TPU nodes itself.
GKE_GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GKE_TPU_TAINT = {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}

# GPUs on a GKE G2 (L4) machine type.
G2_GPUS = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
           "g2-standard-32": 1, "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}


@dataclass(frozen=True)
class AcceleratorPool:
    """The node pool that carries a cluster's accelerators, as the scheduler sees it."""

    # Units of the accelerator on one node.
    per_node: int
    # Labels that select the pool's nodes, and the taint only accelerator pods tolerate.
    labels: dict
    taint: Optional[dict]
    # Who makes the accelerator schedulable: "nvidia-chart" (we install it) or "managed" (the cloud).
    device_plugin: str
    # Nodes there are when nothing scales the pool (EKS desiredSize, GKE minNodes)...
    nodes: int = 1
    # ...and the most it may grow to, which only counts where an autoscaler adds them.
    max_nodes: int = 1
    # Whether something adds nodes for pending pods (GKE's per-pool autoscaler). The hook
    # for a node autoscaler on EKS: set it where one manages the pool.
    autoscaled: bool = False

    @property
    def schedulable_nodes(self) -> int:
        """Nodes pods can count on: those an autoscaler would add, else those that exist."""
        return self.max_nodes if self.autoscaled else self.nodes

    @property
    def capacity(self) -> int:
        return self.per_node * self.schedulable_nodes


# Disk types a GKE machine family can attach: TPU v6e takes only Hyperdisk, v5e and the G2
# (L4) machines take Persistent Disk.
GKE_CACHE_DISK = {"ct5lp-hightpu": "pd-balanced", "ct6e-standard": "hyperdisk-balanced", "g2-standard": "pd-balanced"}


def gke_cache_disk(machine_type: str) -> str:
    family = machine_type.rsplit("-", 1)[0]
    return GKE_CACHE_DISK.get(family, "pd-balanced")
