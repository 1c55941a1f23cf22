"""Metrics: Prometheus and Grafana (kube-prometheus-stack) scraping the platform."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from components.config.base import ChartVersion, Quantity, _Model


class MonitoringConfig(_Model):
    """kube-prometheus-stack in the `monitoring` namespace, Grafana under /grafana."""

    enabled: bool = True
    """Prometheus and Grafana from kube-prometheus-stack (see docs/metrics.md); autoscaling needs
    it."""
    chart_version: ChartVersion = "88.5.3"
    """The kube-prometheus-stack chart's version."""
    retention: str = Field("15d", pattern=r"^[0-9]+(ms|s|m|h|d|w|y)$")
    """How long Prometheus keeps samples (Prometheus durations: 12h, 15d, 2w)."""
    storage_size: Optional[Quantity] = None
    """A volume per Prometheus replica; None: an emptyDir (samples lost on restart)."""
    light: Optional[bool] = None
    """Prometheus, operator and Grafana only: no Alertmanager, node exporter or kube-state-metrics,
    smaller requests. None: light on minikube, full elsewhere."""
