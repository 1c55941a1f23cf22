"""Metrics: Prometheus and Grafana (kube-prometheus-stack) scraping the platform."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from components.config.base import ChartVersion, Quantity, _Model


class MonitoringConfig(_Model):
    """kube-prometheus-stack in the `monitoring` namespace, Grafana under /grafana."""

    enabled: bool = True
    chart_version: ChartVersion = "88.5.3"
    # How long Prometheus keeps samples (Prometheus durations: 12h, 15d, 2w).
    retention: str = Field("15d", pattern=r"^[0-9]+(ms|s|m|h|d|w|y)$")
    # A volume per Prometheus replica; None: an emptyDir (samples lost on restart).
    storage_size: Optional[Quantity] = None
    # Prometheus, operator and Grafana only: no Alertmanager, node exporter or kube-state-metrics,
    # smaller requests. None: light on minikube, full elsewhere.
    light: Optional[bool] = None
