"""What one component publishes for others to read: where a model is served (the front door
routes to it) and what Prometheus scrapes (monitoring turns it into a ServiceMonitor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import pulumi


@dataclass(frozen=True)
class ScrapeTarget:
    """A platform Service whose pods serve metrics through their sidecar (mTLS)."""

    name: str
    namespace: pulumi.Input[str]
    # The Service's labels, and the name of its port that serves the metrics.
    selector: Mapping[str, str]
    port: str
    path: str
    # (Secret, key) in the target's namespace holding the bearer token its /metrics wants.
    bearer: Optional[tuple[str, str]] = None
    # The model each endpoint reports, as the series' `model` label; with `per_model`, one
    # endpoint each, asked with ?model=<alias> (llama.cpp's router answers per model) and
    # `params` besides.
    models: tuple[str, ...] = ()
    per_model: bool = False
    params: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelBackend:
    """A model of the stack: the alias clients send, and its server's OpenAI base URL."""

    alias: str
    base_url: pulumi.Input[str]
    # Its server's Service (host and port), where the ingress may route to it straight; None:
    # reached through the front door alone.
    host: Optional[pulumi.Input[str]] = None
    port: Optional[int] = None
    # Whose key the ingress must have checked to route to it straight (a team's servers take their
    # team's key alone; any other key reaches them through the front door); None: any key it knows.
    key_holder: Optional[str] = None
