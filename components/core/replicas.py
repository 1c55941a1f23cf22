"""How a workload of several replicas survives a node drain or a zone outage: its pods spread over
nodes and zones, and a disruption budget that lets one go at a time."""

from __future__ import annotations

from typing import Mapping, Optional

SPREAD_KEYS = ("kubernetes.io/hostname", "topology.kubernetes.io/zone")


def spread_over_nodes(labels: Mapping[str, str], replicas: int) -> Optional[list[dict]]:
    """Pod topology spread constraints for `replicas` pods with `labels` (preferred, so a cluster
    with one node or zone still schedules them); None for a single replica."""
    if replicas <= 1:
        return None
    return [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": dict(labels)}} for key in SPREAD_KEYS]


def one_at_a_time(labels: Mapping[str, str]) -> dict:
    """A PodDisruptionBudget's spec: maxUnavailable, never minAvailable, so a drain (or Karpenter
    emptying a node) may always take one pod."""
    return {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}}
