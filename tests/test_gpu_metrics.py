"""GPU metrics: NVIDIA's DCGM exporter runs on the NVIDIA GPU nodes alone (their label and taint,
as the device plugin), serves on the port the Service and ServiceMonitor name, and only
Prometheus's pods may reach it; none where the stack has no NVIDIA pool of its own."""

from __future__ import annotations

import re

import pytest

from components import gpu_metrics, monitoring
from tests.conftest import need_charts, recording
from tools import charts
from tools import mock_engine as harness

DS = "kubernetes:apps/v1:DaemonSet"
SM = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"


def exporter(rec) -> dict:
    return harness.reveal(rec.one(DS, "gpu-metrics-daemonset").inputs)


def test_eks_runs_the_exporter_on_gpu_nodes_only():
    rec = recording("eks")
    pod = exporter(rec)["spec"]["template"]["spec"]
    # The same facts the NVIDIA device plugin is given: the GPU nodes' label and taint.
    plugin = harness.reveal(rec.one("kubernetes:helm.sh/v3:Release", "gpu-nvidia").inputs["values"])
    assert pod["nodeSelector"] == plugin["nodeSelector"]
    assert pod["tolerations"] == plugin["tolerations"]
    assert pod["nodeSelector"] and [t for t in pod["tolerations"] if t["key"] == "nvidia.com/gpu"]
    # It takes no GPU from the model servers.
    (c,) = pod["containers"]
    assert not any("nvidia.com/gpu" in part for part in c["resources"].values())


def test_image_is_pinned_and_the_pod_maps_gpus_to_pods():
    (c,) = exporter(recording("eks"))["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s/dcgm-exporter:\d+\.\d+\.\d+-\d+\.\d+\.\d+-distroless", c["image"])
    env = {e["name"]: e for e in c["env"]}
    assert env["DCGM_EXPORTER_KUBERNETES"]["value"] == "true"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["DCGM_EXPORTER_LISTEN"]["value"] == f":{gpu_metrics.PORT}"
    (mount,) = c["volumeMounts"]
    assert mount == {"name": "pod-resources", "mountPath": "/var/lib/kubelet/pod-resources", "readOnly": True}
    # Root with SYS_ADMIN alone (profiling metrics), no privilege escalation, nothing privileged.
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged")


def test_service_monitor_scrapes_the_port_the_exporter_listens_on():
    rec = recording("eks")
    ds = exporter(rec)
    svc = harness.reveal(rec.one("kubernetes:core/v1:Service", "gpu-metrics-service").inputs)
    sm = harness.reveal(rec.one(SM, "gpu-metrics-servicemonitor").inputs)
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == ep["port"]]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    (cport,) = [p for p in c["ports"] if p["name"] == port["targetPort"]]
    assert cport["containerPort"] == port["port"] == gpu_metrics.PORT
    # Outside the mesh: plain HTTP; Prometheus's sidecar captures no outbound traffic.
    assert ep["scheme"] == "http" and "tlsConfig" not in ep and ep["path"] == "/metrics"
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"] == ds["metadata"]["namespace"]
    # The namespace's admission level allows what it needs (hostPath, root, SYS_ADMIN).
    ns = rec.one("kubernetes:core/v1:Namespace", "gpu-metrics-ns").inputs["metadata"]
    assert ns["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_only_prometheus_reaches_the_exporter_on_its_port():
    rec = recording("eks")
    policies = {r.inputs["metadata"]["name"]: harness.reveal(r.inputs["spec"])
                for r in rec.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                if r.inputs["metadata"]["namespace"] == gpu_metrics.NAMESPACE}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (rule,) = policies["allow-prometheus"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring.NAMESPACE}},
                             "podSelector": {"matchLabels": monitoring.PROMETHEUS_POD_LABELS}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": gpu_metrics.PORT}]
    assert set(policies) == {"default-deny-ingress", "allow-prometheus"}


def test_depends_on_the_monitoring_release_for_its_crd():
    rec = recording("eks")
    sm = rec.one(SM, "gpu-metrics-servicemonitor")
    release = rec.one("kubernetes:helm.sh/v3:Release", "monitoring-kps")
    assert release.urn in rec.depends_transitively(sm)


@pytest.mark.parametrize("variant", ["local", "gke"])
def test_no_exporter_without_an_nvidia_pool_of_ours(variant):
    rec = recording(variant)
    assert not [r for r in rec.registrations if r.name.startswith("gpu-metrics")]


def test_no_exporter_without_monitoring():
    rec = harness.run("eks", {"llm-platform:monitoring": {"enabled": False}})
    assert not [r for r in rec.registrations if r.name.startswith("gpu-metrics")]



def download_script(rec) -> str:
    (cm,) = [m.obj for m in charts.cluster_objects(rec) if m.obj["kind"] == "ConfigMap"
             and m.obj["metadata"]["name"] == monitoring.GRAFANA_SERVICE]
    return cm["data"]["download_dashboards.sh"]


def test_grafana_gets_nvidias_dcgm_dashboard_pinned_where_the_exporter_runs():
    need_charts()
    # The chart's script fetches NVIDIA's dashboard at the tag of the release the exporter runs,
    # written as downloaded (no pipe that would hide a failed download).
    script = download_script(recording("eks"))
    (line,) = [ln for ln in script.splitlines() if "dcgm-exporter-dashboard.json" in ln]
    (tag,) = re.findall(r'"https://raw\.githubusercontent\.com/NVIDIA/dcgm-exporter/([^/]+)/grafana/', line)
    (c,) = exporter(recording("eks"))["spec"]["template"]["spec"]["containers"]
    assert c["image"].rpartition(":")[2] == f"{tag}-distroless"
    assert line.rstrip().endswith("\\")
    assert "dcgm-exporter" not in download_script(recording("local"))


def test_series_keep_the_namespace_and_pod_holding_the_gpu():
    """dcgm-exporter labels a GPU's series `namespace`, `pod` and `container` (of the pod the
    kubelet's pod-resources socket says holds it): the very names Prometheus gives the target
    (the exporter's own pod), so they are kept only with honorLabels, which the Prometheus the
    chart renders does not override. Checked on the objects and the chart's own CRDs."""
    need_charts()
    objs = [m.obj for m in charts.cluster_objects(recording("eks"))]
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor" and o["metadata"].get("namespace") == gpu_metrics.NAMESPACE]
    assert monitors and all(ep.get("honorLabels") is True for o in monitors for ep in o["spec"]["endpoints"])
    (prometheus,) = [o for o in objs if o["kind"] == "Prometheus"]
    assert not prometheus["spec"].get("overrideHonorLabels")
    crds = {o["spec"]["names"]["kind"]: o["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            for o in objs if o["kind"] == "CustomResourceDefinition" and o["spec"]["group"] == "monitoring.coreos.com"}
    endpoint = crds["ServiceMonitor"]["properties"]["spec"]["properties"]["endpoints"]["items"]["properties"]
    assert endpoint["honorLabels"]["type"] == "boolean"
    assert "exported_" in crds["Prometheus"]["properties"]["spec"]["properties"]["overrideHonorLabels"]["description"]
