"""GPU metrics: NVIDIA's DCGM exporter, installed from NVIDIA's chart (pinned, vendored), runs on
the NVIDIA GPU nodes alone (their label and taint, as the device plugin), serves on the port the
Service and ServiceMonitor name, and only Prometheus's pods may reach it; none where the stack
has no NVIDIA pool of its own. Asserted on what the chart renders with the program's values (on
the real control plane: tests/parts/test_gpu_metrics.py)."""

from __future__ import annotations

import re

import pytest

from components.platform import gpu_metrics
from components.platform import monitoring
from tests import docs
from tests.conftest import need_charts, recording
from tools import charts
from tools import mock_engine as harness

RELEASE = "kubernetes:helm.sh/v3:Release"
NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def release(rec) -> dict:
    return harness.reveal(rec.one(RELEASE, "gpu-metrics-exporter").inputs)


def rendered(rec) -> dict[str, dict]:
    """kind -> the one object of that kind the exporter's chart renders, with the program's values."""
    need_charts()
    (found,) = [r for r in charts.chart_releases(rec) if r.name == gpu_metrics.HELM_RELEASE]
    objs = charts.render_release(found, charts.kube_version(rec.stack))
    by_kind: dict[str, dict] = {}
    for o in objs:
        assert o["kind"] not in by_kind, f"the chart renders two {o['kind']}s"
        by_kind[o["kind"]] = o
    return by_kind


@pytest.fixture(scope="module")
def eks() -> harness.Recording:
    return recording("eks")


@pytest.fixture(scope="module")
def chart(eks) -> dict[str, dict]:
    return rendered(eks)


def pod_spec(chart) -> dict:
    return chart["DaemonSet"]["spec"]["template"]["spec"]


def test_installed_from_nvidias_chart_pinned_in_its_own_namespace(eks):
    r = release(eks)
    assert (r["chart"], r["version"], r["name"]) == ("dcgm-exporter", gpu_metrics.CHART_VERSION, gpu_metrics.HELM_RELEASE)
    assert r["repositoryOpts"]["repo"] == "https://nvidia.github.io/dcgm-exporter/helm-charts"
    # The namespace is the program's, with the admission level the exporter needs (hostPath,
    # root, SYS_ADMIN), not one Helm creates without labels.
    assert r["namespace"] == gpu_metrics.NAMESPACE and not r.get("createNamespace")
    ns = eks.one("kubernetes:core/v1:Namespace", "gpu-metrics-ns").inputs["metadata"]
    assert ns["name"] == gpu_metrics.NAMESPACE
    assert ns["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_eks_runs_the_exporter_on_gpu_nodes_only(eks, chart):
    pod = pod_spec(chart)
    # The same facts the NVIDIA device plugin is given: the GPU nodes' label and taint (the
    # chart's own toleration of control-plane nodes replaced).
    plugin = harness.reveal(eks.one(RELEASE, "gpu-nvidia").inputs["values"])
    assert pod["nodeSelector"] == plugin["nodeSelector"]
    assert pod["tolerations"] == plugin["tolerations"]
    assert pod["nodeSelector"] and [t for t in pod["tolerations"] if t["key"] == "nvidia.com/gpu"]
    assert "affinity" not in pod
    # It takes no GPU from the model servers, and never preempts one on a full node.
    (c,) = pod["containers"]
    assert not any("nvidia.com/gpu" in part for part in c["resources"].values())
    assert c["resources"] == gpu_metrics.RESOURCES
    assert "priorityClassName" not in pod


def test_image_is_pinned_and_the_pod_maps_gpus_to_pods(chart):
    pod = pod_spec(chart)
    (c,) = pod["containers"]
    assert c["image"] == gpu_metrics.IMAGE  # the chart's default at its version (docs/metrics.md names it)
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s/dcgm-exporter:\d+\.\d+\.\d+-\d+\.\d+\.\d+-distroless", c["image"])
    env = {e["name"]: e for e in c["env"]}
    assert env["DCGM_EXPORTER_KUBERNETES"]["value"] == "true"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["DCGM_EXPORTER_LISTEN"]["value"] == f":{gpu_metrics.PORT}"
    # The kubelet's pod-resources socket, read-only: which pod holds which GPU.
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/kubelet/pod-resources"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    # It reads the socket, never the API server.
    assert pod["automountServiceAccountToken"] is False
    assert chart["ServiceAccount"]["automountServiceAccountToken"] is False


def test_the_counters_include_the_fields_the_docs_name(chart):
    """The chart mounts its counters list over the image's; the series the docs list (and
    DCGM's profiling fields, which need SYS_ADMIN) are in it."""
    (c,) = pod_spec(chart)["containers"]
    path = c["args"][c["args"].index("-f") + 1]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod_spec(chart)["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == chart["ConfigMap"]["metadata"]["name"]
    counters = {line.split(",")[0].strip() for line in chart["ConfigMap"]["data"]["metrics"].splitlines()
                if line.strip() and not line.strip().startswith("#")}
    named = set(re.findall(r"`(DCGM_FI_[A-Z_]+)`", docs.text()))
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"} <= named
    assert named <= counters, named - counters


def test_its_only_exceptions_to_the_restricted_profile_are_root_sys_admin_and_the_socket(chart):
    from tests.program.test_security import restricted_violations

    pod = pod_spec(chart)
    (c,) = pod["containers"]
    (socket,) = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/kubelet/pod-resources"]
    assert sorted(restricted_violations(pod)) == sorted([
        f"volume {socket}: ['hostPath']", f"{c['name']}: runAsNonRoot not set",
        f"{c['name']}: runs as root", f"{c['name']}: adds ['SYS_ADMIN']"])
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged")
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostPID") and not pod.get("hostNetwork") and not pod.get("hostIPC")


def test_service_monitor_scrapes_the_port_the_exporter_listens_on(chart):
    ds, svc, sm = chart["DaemonSet"], chart["Service"], chart["ServiceMonitor"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [gpu_metrics.NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == ep["port"]]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    target = port["targetPort"]
    (cport,) = [p for p in c["ports"] if target in (p["name"], p["containerPort"])]
    assert cport["containerPort"] == port["port"] == gpu_metrics.PORT
    # Outside the mesh: plain HTTP; Prometheus's sidecar captures no outbound traffic.
    assert ep.get("scheme", "http") == "http" and "tlsConfig" not in ep and ep["path"] == "/metrics"
    assert ep["interval"] == gpu_metrics.SCRAPE_INTERVAL
    assert {o["metadata"]["namespace"] for o in (ds, svc, sm)} == {gpu_metrics.NAMESPACE}


def test_only_prometheus_reaches_the_exporter_on_its_port(eks, chart):
    policies = {r.inputs["metadata"]["name"]: harness.reveal(r.inputs["spec"]) for r in eks.of_type(NETPOL)
                if r.inputs["metadata"]["namespace"] == gpu_metrics.NAMESPACE}
    assert set(policies) == {"default-deny-ingress", "allow-prometheus"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    allow = policies["allow-prometheus"]
    # It selects the pods the chart renders (their labels are the chart's, not the program's).
    labels = chart["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert allow["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = allow["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring.NAMESPACE}},
                             "podSelector": {"matchLabels": monitoring.PROMETHEUS_POD_LABELS}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": gpu_metrics.PORT}]


def test_the_release_waits_for_the_monitoring_release_for_its_crd(eks):
    """The chart's ServiceMonitor is a custom resource: Helm cannot install it before the
    monitoring release has installed the CRD."""
    exporter = eks.one(RELEASE, "gpu-metrics-exporter")
    assert eks.one(RELEASE, "monitoring-kps").urn in eks.depends_transitively(exporter)


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


def test_grafana_gets_nvidias_dcgm_dashboard_pinned_where_the_exporter_runs(chart):
    need_charts()
    # The chart's script fetches NVIDIA's dashboard at the tag of the release the exporter runs,
    # written as downloaded (no pipe that would hide a failed download).
    script = download_script(recording("eks"))
    (line,) = [ln for ln in script.splitlines() if "dcgm-exporter-dashboard.json" in ln]
    (tag,) = re.findall(r'"https://raw\.githubusercontent\.com/NVIDIA/dcgm-exporter/([^/]+)/grafana/', line)
    (c,) = pod_spec(chart)["containers"]
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
