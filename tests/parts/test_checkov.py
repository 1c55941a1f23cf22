"""checkov, in its own virtualenv, on the manifests each stack renders: no failed check in the
categories it covers for these objects, beyond the documented device-plugin and GPU-exporter
exceptions."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.platform import gpu_metrics
from components.cluster import metrics_server
from tools import mock_engine as harness
from tools import render

CHECKOV = harness.PROJECT_DIR / ".venv-checkov" / "bin" / "checkov"
CATEGORIES = {
    "resources": {"CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13"},
    "probes": {"CKV_K8S_8", "CKV_K8S_9"},
    "privilege": {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_29", "CKV_K8S_31",
                  "CKV_K8S_38", "CKV_K8S_40"},
    "capabilities": {"CKV_K8S_25", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_39"},
    "host namespaces": {"CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19"},
}
COVERED = set().union(*CATEGORIES.values())
# The device plugin must be privileged, as root, to hand host devices to the kubelet.
ALLOWED = {
    ("DaemonSet.kube-system.generic-device-plugin", check)
    for check in ("CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_40")
} | {
    # NVIDIA's GPU exporter: root, to read the kubelet's root-owned pod-resources socket (GPU ->
    # pod), with SYS_ADMIN alone for DCGM's profiling fields; its root filesystem stays writable
    # (upstream documents a read-only one only with tmpfs volumes it does not list).
    (f"DaemonSet.{gpu_metrics.NAMESPACE}.{gpu_metrics.HELM_RELEASE}", check)
    for check in ("CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_25", "CKV_K8S_39", "CKV_K8S_40")
} | {
    # metrics-server calls the API server (TokenReview of each request passed on to it, nodes
    # and pods): it needs its service account token.
    ("Deployment.kube-system.metrics-server", "CKV_K8S_38"),
}


def checkov() -> str:
    found = str(CHECKOV) if CHECKOV.exists() else shutil.which("checkov")
    if not found:
        pytest.fail("checkov needs its own virtualenv: python3 -m venv .venv-checkov && "
                    ".venv-checkov/bin/pip install -r requirements-checkov.txt (the README's test command does it)")
    return found


# Upstream charts the program installs as cluster parts it once wrote by hand or owns alone
# (not the big platform charts, which checkov would hold to other standards): checked like the
# program's own objects.
CHECKED_CHARTS = {gpu_metrics.HELM_RELEASE, metrics_server.RELEASE}


def failed_checks(stack: str, folder: Path) -> list[tuple[str, str]]:
    rec = harness.run(stack)
    files = render.render(rec)
    files.update({name: docs for name, docs in render.render_charts(rec).items()
                  if name.removeprefix("chart-").removesuffix(".yaml") in CHECKED_CHARTS})
    for name, docs in files.items():
        objects = [d for d in docs if "apiVersion" in d and d.get("kind") != "HelmRelease"]
        if objects:
            (folder / name).write_text(yaml.safe_dump_all(objects))
    out = subprocess.run([checkov(), "-d", str(folder), "--framework", "kubernetes", "--skip-download",
                          "--quiet", "--compact", "-o", "json"], capture_output=True, text=True)
    report = json.loads(out.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["resource_count"] > 5 and report["summary"]["parsing_errors"] == 0
    return [(f["resource"], f["check_id"]) for f in report["results"]["failed_checks"]]


@pytest.mark.parametrize("stack", harness.STACKS)
def test_no_failed_checks_beyond_the_device_plugin(stack, tmp_path):
    failed = {f for f in failed_checks(stack, tmp_path) if f[1] in COVERED}
    assert failed - ALLOWED == set()
