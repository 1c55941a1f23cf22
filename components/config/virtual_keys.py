"""The front door's virtual keys: per-team keys with budgets, rate limits and spend, kept in a
PostgreSQL database run by the CloudNativePG operator."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from components.config.base import ChartVersion, DnsLabel, Quantity, _Model

# PostgreSQL instances when `instances` is not set: a primary and two standbys (spread over
# nodes) where the cluster's nodes span zones (the clouds), else one (a laptop, an existing cluster).
REPLICATED_INSTANCES = 3
SINGLE_INSTANCE = 1


class VirtualKeysConfig(_Model):
    """Off by default: the master key is then the only key, and nothing stores state.

    Without Redis each front door replica enforces a key's rate limits on its own count (a limit
    of N lets N x replicas through) and keeps a key it has checked for up to LiteLLM's key cache
    TTL, so a revoked key works on until then on the other replicas (docs/front-door.md, "Virtual keys")."""

    enabled: bool = False
    """The front door issues virtual keys, stored in PostgreSQL; needs `security.apiAuth`."""
    instances: Optional[int] = Field(None, ge=1, le=9)
    """PostgreSQL instances. None: 3 where the cluster's nodes span zones (eks, gke: a primary and
    two standbys, spread over nodes), else 1 (minikube, existing clusters)."""
    storage_size: Quantity = "5Gi"
    """The volume of each instance."""
    chart_version: ChartVersion = "0.29.0"
    """The cloudnative-pg chart (operator 1.30.0)."""
    namespace: DnsLabel = "litellm-db"
    """The database's own namespace, outside the mesh..."""
    operator_namespace: DnsLabel = "cnpg-system"
    """...and the operator's."""

    def instance_count(self, replicated: bool) -> int:
        return self.instances or (REPLICATED_INSTANCES if replicated else SINGLE_INSTANCE)
