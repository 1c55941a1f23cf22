"""GPU metrics on the real control plane (the eks stack, its GPU nodes declared): NVIDIA's DCGM
exporter admitted, on every GPU node and nowhere else, its Service and ServiceMonitor accepted and
Prometheus's NetworkPolicy selecting its pods; and the check bites an exporter without the GPU
toleration. What the chart renders with the program's values: tests/program/test_gpu_metrics.py."""

from __future__ import annotations

import copy

from components.platform import gpu_metrics


def exporter_problems(cp, d) -> list[str]:
    """What the control plane makes of the exporter on the eks stack: its pods admitted (the
    namespace's Pod Security level), one on every GPU node and none elsewhere, its Service
    resolving on them, its ServiceMonitor accepted by the CRD, and the NetworkPolicy admitting
    Prometheus selecting those very pods."""
    from tests import cluster_stack as cs

    ns = gpu_metrics.NAMESPACE
    gpu = {n.name for n in d.nodes if "nvidia.com/gpu" in n.devices_from_plugin}
    assert gpu, "no GPU node declared"
    problems = [p for p in cs.failed_creates(cp, d) if f" {ns}/" in p]
    problems += cs.daemonset_coverage(cp, d, ns, gpu_metrics.HELM_RELEASE, must_serve=gpu, may_run=gpu)
    problems += [p for p in cs.settled_service_ports(cp, d) if p.startswith(f"Service {ns}/")]
    (monitor,) = [o for o in d.objects if o["kind"] == "ServiceMonitor" and o["metadata"]["namespace"] == ns]
    if not cp.exists(monitor):
        problems.append(f"ServiceMonitor {ns}/{monitor['metadata']['name']} not stored")
    (allow,) = [o for o in d.of_kind("NetworkPolicy") if o["metadata"]["namespace"] == ns
                and o["metadata"]["name"] == "allow-prometheus"]
    selector = ",".join(f"{k}={v}" for k, v in allow["spec"]["podSelector"]["matchLabels"].items())
    exporters = cs.owned_pods(cp, ns, "DaemonSet", gpu_metrics.HELM_RELEASE)
    selected = {p.metadata.name for p in cp.pods(ns, selector)}
    if not exporters or {p.metadata.name for p in exporters} - selected:
        problems.append(f"NetworkPolicy {ns}/allow-prometheus selects {sorted(selected)}, "
                        f"not the exporter's pods {sorted(p.metadata.name for p in exporters)}")
    return problems


def test_on_the_control_plane_the_exporter_runs_on_every_gpu_node_and_nowhere_else(control_plane, stacks):
    problems = exporter_problems(control_plane, stacks.get("eks"))
    assert not problems, "\n".join(problems)


def test_bites_an_exporter_that_does_not_tolerate_the_gpu_taint(control_plane, stacks):
    """The chart's DaemonSet without the GPU toleration (the chart's default one instead): no
    pod on any GPU node, and the check says so. The stack is restored afterwards."""
    from tests import cluster_stack as cs
    from tests import kube

    cp, d = control_plane, stacks.get("eks")
    (ds,) = [o for o in d.of_kind("DaemonSet") if o["metadata"]["namespace"] == gpu_metrics.NAMESPACE]
    broken = copy.deepcopy(ds)
    broken["spec"]["template"]["spec"]["tolerations"] = [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]
    try:
        assert cp.apply(broken) is None
        problems = kube.until(lambda: (cs.settle(cp, d, 10, quiet_s=1),
                                       [p for p in exporter_problems(cp, d) if "no pod on" in p])[-1],
                              60, "the exporter's pods gone from the GPU nodes")
        assert problems and all("(pool gpu)" in p for p in problems), problems
    finally:
        assert cp.apply(ds) is None
        cs.settle(cp, d, 30)
