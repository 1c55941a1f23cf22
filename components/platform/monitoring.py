"""Monitoring: Prometheus and Grafana from kube-prometheus-stack, scraping the model servers,
the front door and the mesh's proxies under STRICT mTLS.

Prometheus carries an Istio sidecar that captures no traffic and only writes the workload's
mesh certificate to a shared volume (Istio's "Prometheus with TLS" setup): Prometheus presents
it to the sidecars of the targets, which admit its identity by AuthorizationPolicy on exactly
the metrics ports and paths. The proxies' own Envoy stats port is plain text and outside the
mesh's capture; NetworkPolicies admit Prometheus's pods to those ports only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.config import MonitoringConfig
from components.core.chart_source import release_source
from components.core.names import MODEL_LABEL
from components.core.pod_security import pod_security_labels
from components.core.published import ScrapeTarget
from components.core.trust import ENVOY_STATS_PATH, ENVOY_STATS_PORT_NAME, Caller, MetricsAccess, network_rule

CHART_REPO = "https://prometheus-community.github.io/helm-charts"
CHART = "kube-prometheus-stack"
NAMESPACE = "monitoring"
# The release and fullnameOverride: the chart names its objects "<name>-<part>".
RELEASE = "kps"
PROMETHEUS_SERVICE = f"{RELEASE}-prometheus"
PROMETHEUS_PORT = 9090
# Where in-cluster clients (Grafana, KEDA) query Prometheus.
PROMETHEUS_HOST = f"{PROMETHEUS_SERVICE}.{NAMESPACE}.svc.cluster.local"
PROMETHEUS_URL = f"http://{PROMETHEUS_HOST}:{PROMETHEUS_PORT}"
# The chart runs Prometheus under "<fullname>-prometheus"; the operator labels its pods so.
PROMETHEUS_SERVICE_ACCOUNT = f"{RELEASE}-prometheus"
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus", "operator.prometheus.io/name": PROMETHEUS_SERVICE}
# Prometheus as a caller of the workloads it scrapes: by its mesh identity and its pods.
PROMETHEUS = Caller(NAMESPACE, PROMETHEUS_SERVICE_ACCOUNT, PROMETHEUS_POD_LABELS)
PROMETHEUS_PRINCIPAL = PROMETHEUS.principal
# The grafana subchart: Service "<release>-grafana" on port 80 -> container port 3000.
GRAFANA_SERVICE = f"{RELEASE}-grafana"
GRAFANA_SERVICE_HOST = f"{GRAFANA_SERVICE}.{NAMESPACE}.svc.cluster.local"
GRAFANA_PORT = 80
GRAFANA_CONTAINER_PORT = 3000
GRAFANA_POD_LABELS = {"app.kubernetes.io/name": "grafana", "app.kubernetes.io/instance": RELEASE}
GRAFANA_PATH = "/grafana"
GRAFANA_ADMIN_SECRET = "grafana-admin"
GRAFANA_ADMIN_USER = "admin"

# Istio's "Prometheus with TLS": the sidecar writes the pod's key, certificate chain and the
# mesh root here (pilot-agent's OUTPUT_CERTS); Prometheus reads them from the same volume.
CERTS_VOLUME = "istio-certs"
PROXY_CERTS_DIR = "/etc/istio-output-certs"
CERTS_DIR = "/etc/prom-certs"
MESH_TLS = {
    "caFile": f"{CERTS_DIR}/root-cert.pem",
    "certFile": f"{CERTS_DIR}/cert-chain.pem",
    "keyFile": f"{CERTS_DIR}/key.pem",
    # Sidecars present SPIFFE identities, not host names.
    "insecureSkipVerify": True,
}
PROMETHEUS_POD_METADATA = {
    "labels": {"sidecar.istio.io/inject": "true"},
    "annotations": {
        # Capture nothing: Grafana and KEDA reach Prometheus directly, and Prometheus speaks
        # mTLS itself with the written certificates.
        "traffic.sidecar.istio.io/includeInboundPorts": "",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "",
        "proxy.istio.io/config": f"proxyMetadata:\n  OUTPUT_CERTS: {PROXY_CERTS_DIR}\n",
        "sidecar.istio.io/userVolumeMount": json.dumps([{"name": CERTS_VOLUME, "mountPath": PROXY_CERTS_DIR}]),
        "sidecar.istio.io/proxyCPU": "10m",
        "sidecar.istio.io/proxyMemory": "64Mi",
        "sidecar.istio.io/proxyMemoryLimit": "256Mi",
    },
}

# vLLM's own dashboards, fetched by Grafana at start from the release the servers run.
VLLM_DASHBOARDS_URL = ("https://raw.githubusercontent.com/vllm-project/vllm/v{release}/"
                       "examples/observability/dashboards/grafana/{file}")
VLLM_DASHBOARDS = ("vllm_overview.json", "vllm_instances.json")
# Ours: JSON beside this module.
DASHBOARDS_DIR = Path(__file__).resolve().parent / "files" / "dashboards"
OWN_DASHBOARDS = ("llamacpp.json", "front-door.json")
# NVIDIA's DCGM exporter dashboard (grafana.com's 12239), from the exporter's repository at the
# release the exporter runs. Its panels read a datasource variable that defaults to the chart's
# Prometheus, so it is written as downloaded: the chart sets a gnetId dashboard's datasource by
# piping the download through sed, and in that pipe (sh, no pipefail) a failed download wrote an
# empty dashboard while the init container succeeded.
DCGM_DASHBOARD_URL = ("https://raw.githubusercontent.com/NVIDIA/dcgm-exporter/{release}/"
                      "grafana/dcgm-exporter-dashboard.json")
# curl's options for every download: fail on an HTTP error and verify TLS (the chart's default,
# -skf, does not: its curl image carries a CA bundle).
CURL_OPTIONS = "-fsS"
DASHBOARDS_FOLDER = "llm-platform"

# What the pods ask for (requests, limits), light and full: docs/metrics.md sums them.
RESOURCES = {
    "light": {
        "prometheus": ({"cpu": "100m", "memory": "256Mi"}, {"memory": "768Mi"}),
        "operator": ({"cpu": "20m", "memory": "48Mi"}, {"memory": "128Mi"}),
        "grafana": ({"cpu": "50m", "memory": "128Mi"}, {"memory": "256Mi"}),
        "grafana-sidecar": ({"cpu": "10m", "memory": "32Mi"}, {"memory": "96Mi"}),
    },
    "full": {
        "prometheus": ({"cpu": "500m", "memory": "2Gi"}, {"memory": "4Gi"}),
        "operator": ({"cpu": "50m", "memory": "64Mi"}, {"memory": "256Mi"}),
        "grafana": ({"cpu": "100m", "memory": "256Mi"}, {"memory": "512Mi"}),
        "grafana-sidecar": ({"cpu": "10m", "memory": "48Mi"}, {"memory": "128Mi"}),
        "alertmanager": ({"cpu": "10m", "memory": "32Mi"}, {"memory": "128Mi"}),
        "kube-state-metrics": ({"cpu": "20m", "memory": "64Mi"}, {"memory": "256Mi"}),
        "node-exporter": ({"cpu": "20m", "memory": "32Mi"}, {"memory": "64Mi"}),
    },
}


def _resources(profile: str, part: str) -> dict:
    requests, limits = RESOURCES[profile][part]
    return {"requests": dict(requests), "limits": dict(limits)}


def _endpoint(t: ScrapeTarget, model: Optional[str], strict_mtls: bool) -> dict:
    # Under STRICT mTLS the targets' sidecars take only mTLS: Prometheus presents the mesh
    # certificate. In PERMISSIVE mode their HTTP chains accept TLS only with Istio's own ALPN,
    # which Prometheus does not offer, so it scrapes in plain HTTP there.
    ep: dict = ({"port": t.port, "path": t.path, "scheme": "https", "tlsConfig": dict(MESH_TLS)} if strict_mtls
                else {"port": t.port, "path": t.path, "scheme": "http"})
    if t.bearer:
        ep["authorization"] = {"type": "Bearer", "credentials": {"name": t.bearer[0], "key": t.bearer[1]}}
    if model is not None:
        if t.per_model:
            ep["params"] = {"model": [model], **{k: list(v) for k, v in t.params.items()}}
        ep["relabelings"] = [{"targetLabel": MODEL_LABEL, "replacement": model, "action": "replace"}]
    return ep


def service_monitor_spec(t: ScrapeTarget, strict_mtls: bool = True) -> dict:
    models: Sequence[Optional[str]] = t.models if t.per_model else (t.models[:1] or [None])
    return {
        "selector": {"matchLabels": dict(t.selector)},
        "endpoints": [_endpoint(t, m, strict_mtls) for m in models],
    }


# Envoy's stats on every injected pod and the ingress gateway: istio_requests_total and the rest.
# Istio's injection templates label both kinds so (tlsMode is on sidecars only).
ENVOY_POD_MONITOR = {
    "namespaceSelector": {"any": True},
    "selector": {"matchExpressions": [{"key": "service.istio.io/canonical-name", "operator": "Exists"}]},
    "podMetricsEndpoints": [{"port": ENVOY_STATS_PORT_NAME, "path": ENVOY_STATS_PATH, "scheme": "http"}],
}


def dashboards(vllm_release: str, dcgm_release: Optional[str] = None) -> dict:
    own = {Path(f).stem: {"json": (DASHBOARDS_DIR / f).read_text()} for f in OWN_DASHBOARDS}
    vllm = {Path(f).stem.replace("_", "-"): {"url": VLLM_DASHBOARDS_URL.format(release=vllm_release, file=f)}
            for f in VLLM_DASHBOARDS}
    dcgm = ({"nvidia-dcgm-exporter": {"url": DCGM_DASHBOARD_URL.format(release=dcgm_release)}}
            if dcgm_release else {})
    return {DASHBOARDS_FOLDER: {**vllm, **own, **dcgm}}


def chart_values(cfg: MonitoringConfig, light: bool, vllm_release: str, admin_secret: str,
                 dcgm_release: Optional[str] = None) -> dict:
    profile = "light" if light else "full"
    prometheus_spec: dict = {
        "retention": cfg.retention,
        "resources": _resources(profile, "prometheus"),
        # Every ServiceMonitor/PodMonitor/rule of the cluster, not only the release's.
        "serviceMonitorSelectorNilUsesHelmValues": False,
        "podMonitorSelectorNilUsesHelmValues": False,
        "ruleSelectorNilUsesHelmValues": False,
        "podMetadata": PROMETHEUS_POD_METADATA,
        "volumes": [{"name": CERTS_VOLUME, "emptyDir": {"medium": "Memory"}}],
        "volumeMounts": [{"name": CERTS_VOLUME, "mountPath": CERTS_DIR, "readOnly": True}],
    }
    if cfg.storage_size:
        prometheus_spec["storageSpec"] = {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": cfg.storage_size}}}}}
    sidecar = _resources(profile, "grafana-sidecar")
    values: dict = {
        "fullnameOverride": RELEASE,
        # Managed control planes do not expose these to scraping; GKE runs kube-dns, not CoreDNS.
        **{part: {"enabled": False} for part in
           ("kubeEtcd", "kubeControllerManager", "kubeScheduler", "kubeProxy", "coreDns")},
        "prometheusOperator": {
            "resources": _resources(profile, "operator"),
            # Its webhook would need the API server to reach the operator through the
            # namespace's default-deny; the CRDs' schemas still validate every object. Its TLS
            # certificate comes from the webhook's setup job: without it, plain HTTP in-namespace.
            "admissionWebhooks": {"enabled": False},
            "tls": {"enabled": False},
        },
        "prometheus": {"prometheusSpec": prometheus_spec},
        "alertmanager": {"enabled": not light},
        "kubeStateMetrics": {"enabled": not light},
        "nodeExporter": {"enabled": not light},
        "grafana": {
            "admin": {"existingSecret": admin_secret, "userKey": "admin-user", "passwordKey": "admin-password"},
            "resources": _resources(profile, "grafana"),
            "sidecar": {"resources": sidecar},
            # Served by the gateway under /grafana.
            "grafana.ini": {"server": {
                "root_url": f"%(protocol)s://%(domain)s:%(http_port)s{GRAFANA_PATH}/",
                "serve_from_sub_path": True,
            }},
            "dashboardProviders": {"dashboardproviders.yaml": {"apiVersion": 1, "providers": [{
                "name": DASHBOARDS_FOLDER, "orgId": 1, "folder": "LLM platform", "type": "file",
                "disableDeletion": True, "options": {"path": f"/var/lib/grafana/dashboards/{DASHBOARDS_FOLDER}"},
            }]}},
            "dashboards": dashboards(vllm_release, dcgm_release),
            "defaultCurlOptions": CURL_OPTIONS,
        },
    }
    if not light:
        values["alertmanager"]["alertmanagerSpec"] = {"resources": _resources(profile, "alertmanager")}
        values["kube-state-metrics"] = {"resources": _resources(profile, "kube-state-metrics")}
        values["prometheus-node-exporter"] = {"resources": _resources(profile, "node-exporter")}
    return values


def policy_specs(prometheus_callers: Sequence[Caller], grafana_callers: Sequence[Caller]) -> dict[str, dict]:
    """The monitoring namespace's ingress: default-deny; its own pods talk to each other; the
    callers of Prometheus's API (KEDA) and of Grafana (the ingress gateway), on their ports."""
    return {
        "default-deny-ingress": {"podSelector": {}, "policyTypes": ["Ingress"]},
        "allow-same-namespace": {"podSelector": {}, "policyTypes": ["Ingress"],
                                 "ingress": [{"from": [{"podSelector": {}}]}]},
        "allow-keda": {"podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)}, "policyTypes": ["Ingress"],
                       "ingress": [network_rule(prometheus_callers, [PROMETHEUS_PORT])]},
        "allow-gateway": {"podSelector": {"matchLabels": dict(GRAFANA_POD_LABELS)}, "policyTypes": ["Ingress"],
                          "ingress": [network_rule(grafana_callers, [GRAFANA_CONTAINER_PORT])]},
    }


def metrics_access(ports: Iterable[int], paths: Sequence[str]) -> MetricsAccess:
    """What a namespace must admit for Prometheus to scrape `paths` on `ports`."""
    return MetricsAccess(scraper=PROMETHEUS, ports=tuple(sorted(set(ports))), paths=tuple(dict.fromkeys(paths)))


class MonitoringArgs(TypedDict):
    config: MonitoringConfig
    light: bool
    vllm_release: str
    targets: Sequence[ScrapeTarget]
    network_policies: bool
    # security.mtls: STRICT mTLS in the mesh (else PERMISSIVE).
    strict_mtls: bool
    # Istio's CRDs and injection webhook: Prometheus's pod needs its sidecar from the start.
    mesh_ready: Sequence[pulumi.Resource]
    # The DCGM exporter release that runs (GpuMetrics), whose dashboard Grafana provisions; None
    # where there is none.
    dcgm_release: Optional[str]
    # Who may query Prometheus's API (KEDA), and who may reach Grafana (the ingress gateway).
    prometheus_callers: Sequence[Caller]
    grafana_callers: Sequence[Caller]


class Monitoring(pulumi.ComponentResource):
    prometheus_url: str = PROMETHEUS_URL
    grafana_host: str = GRAFANA_SERVICE_HOST
    grafana_port: int = GRAFANA_PORT
    admin_password: pulumi.Output[str]
    namespace: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:Monitoring", name, None, opts)
        cfg, light = args["config"], args["light"]
        child = pulumi.ResourceOptions(parent=self)
        # The node exporter needs the host's network and PID namespaces: privileged.
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata={"name": NAMESPACE, "labels": pod_security_labels("baseline" if light else "privileged")},
            opts=child)
        ns = self.namespace = namespace.metadata.name
        password = random.RandomPassword(f"{name}-grafana-admin", length=32, special=False,
                                         opts=pulumi.ResourceOptions(parent=self))
        self.admin_password = pulumi.Output.secret(password.result)
        admin = k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata={"name": GRAFANA_ADMIN_SECRET, "namespace": ns},
            string_data={"admin-user": GRAFANA_ADMIN_USER, "admin-password": self.admin_password},
            opts=child,
        )
        self.release = k8s.helm.v3.Release(
            f"{name}-kps",
            name=RELEASE,
            **release_source(CHART, cfg.chart_version, CHART_REPO),
            namespace=ns,
            values=chart_values(cfg, light, args["vllm_release"], GRAFANA_ADMIN_SECRET, args["dcgm_release"]),
            opts=pulumi.ResourceOptions(parent=self,
                                        depends_on=[namespace, admin, *args["mesh_ready"]]),
        )
        # ServiceMonitor/PodMonitor come with the chart's CRDs.
        cr = pulumi.ResourceOptions(parent=self, depends_on=[self.release])
        for t in args["targets"]:
            k8s.apiextensions.CustomResource(
                f"{name}-{t.name}", api_version="monitoring.coreos.com/v1", kind="ServiceMonitor",
                metadata={"name": t.name, "namespace": t.namespace}, spec=service_monitor_spec(t, args["strict_mtls"]), opts=cr)
        k8s.apiextensions.CustomResource(
            f"{name}-envoy-stats", api_version="monitoring.coreos.com/v1", kind="PodMonitor",
            metadata={"name": "envoy-stats", "namespace": ns}, spec=ENVOY_POD_MONITOR, opts=cr)
        # Prometheus's sidecar captures no inbound traffic: meshed clients must speak plain
        # HTTP to it rather than mTLS.
        k8s.apiextensions.CustomResource(
            f"{name}-prometheus-plaintext", api_version="networking.istio.io/v1", kind="DestinationRule",
            metadata={"name": PROMETHEUS_SERVICE, "namespace": ns},
            spec={"host": PROMETHEUS_HOST,
                  "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args["mesh_ready"])))
        if args["network_policies"]:
            for policy, spec in policy_specs(args["prometheus_callers"], args["grafana_callers"]).items():
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-{policy}", metadata={"name": policy, "namespace": ns}, spec=spec, opts=child)
        self.register_outputs({"prometheusUrl": self.prometheus_url, "grafanaHost": self.grafana_host})
