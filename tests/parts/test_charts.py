"""Every chart release of every stack, rendered by real Helm from the vendored upstream archive
with exactly the values the program passes and the stack's Kubernetes version: it must exist
as pinned, render, set only values the chart knows, satisfy the chart's values schema, and
produce objects the stack's Kubernetes version accepts."""

import dataclasses

import pytest

from tools import charts


@pytest.fixture(autouse=True)
def _charts_here():
    from tests.conftest import need_charts
    need_charts()


def releases(rec):
    found = charts.chart_releases(rec)
    assert found, "no chart releases found in the recording"
    return found


def test_releases_found(stack_recording, variant):
    names = {r.name for r in releases(stack_recording)}
    assert {"istio-base", "istio-cni", "istiod", "istio-ingress", "argocd", "open-webui"} <= names
    if variant.startswith("eks"):
        assert {"nvidia-device-plugin", "metrics-server"} <= names
    else:  # GKE runs its own, minikube's addon serves it
        assert "metrics-server" not in names
    if variant == "eks-tls":
        assert "cert-manager" in names
    if variant.startswith("eks"):
        assert {"karpenter", "karpenter-crd"} <= names
    assert ("keda" in names) == (variant == "eks-autoscaled")
    webui = next(r for r in releases(stack_recording) if r.name == "open-webui")
    assert webui.via == "argocd" and webui.namespace == "open-webui"


def test_every_pinned_chart_is_vendored_with_provenance(stack_recording):
    for r in releases(stack_recording):
        assert charts.archive(r).is_file()
        assert (r.chart, r.version) in charts.provenance(), f"{r.name}: no PROVENANCE.tsv row"


def test_every_release_renders(stack_recording):
    kube = charts.kube_version(stack_recording.stack)
    for r in releases(stack_recording):
        objs = charts.render_release(r, kube)
        assert objs, f"{r.name}: rendered nothing"
        assert all(o["metadata"].get("name") for o in objs), r.name


def test_no_value_path_unknown_to_the_chart(stack_recording):
    unknown = {r.name: charts.unknown_value_paths(r) for r in releases(stack_recording)}
    assert not {k: v for k, v in unknown.items() if v}, f"values the charts never read: {unknown}"


def test_values_satisfy_the_chart_schema(stack_recording):
    errors = {r.name: charts.schema_errors(r) for r in releases(stack_recording)}
    assert not {k: v for k, v in errors.items() if v}


def test_rendered_objects_validate_for_the_stack_version(stack_recording, cluster):
    objs = [m.obj for m in cluster]
    errors = charts.validation_errors(objs, charts.kube_version(stack_recording.stack), charts.custom_groups(objs))
    assert not errors, "\n".join(errors)


def test_kubernetes_version_comes_from_the_stack():
    assert charts.kube_version("local") == "v1.34.0"
    assert charts.kube_version("eks") == charts.kube_version("gke") == "v1.33.0"


def test_cluster_fills_namespaces_as_helm_installs(cluster):
    for m in cluster:
        if charts.namespaced(m.obj, charts.crd_scopes([c.obj for c in cluster])):
            assert m.obj["metadata"].get("namespace"), (m.source, m.obj["kind"], m.obj["metadata"]["name"])
    sources = {m.source for m in cluster}
    assert "chart:open-webui" in sources and "chart:istiod" in sources


# --- the checks bite ------------------------------------------------------------------------------


def _release(name):
    from tests.conftest import recording
    return next(r for r in charts.chart_releases(recording("eks")) if r.name == name)


def test_a_misspelt_value_path_is_caught():
    istiod = _release("istiod")
    bad = dataclasses.replace(istiod, values={**istiod.values, "pilot": {"cni": {"enabeld": True}}})
    assert charts.unknown_value_paths(bad) == ["pilot.cni.enabeld"]
    webui = _release("open-webui")
    bad = dataclasses.replace(webui, values={**webui.values, "websocket": {"redis": {"service": {"portNam": "tcp"}}}})
    assert charts.unknown_value_paths(bad) == ["websocket.redis.service.portNam"]


def test_a_value_against_the_schema_is_caught():
    gateway = _release("istio-ingress")
    bad = dataclasses.replace(gateway, values={**gateway.values, "service": {**gateway.values["service"], "type": 7}})
    assert charts.schema_errors(bad)


def test_a_pin_with_no_vendored_archive_fails():
    argocd = _release("argocd")
    with pytest.raises(charts.ChartError, match="not in ../shared/upstream/charts"):
        charts.archive(dataclasses.replace(argocd, version="10.1.3"))


def test_an_invalid_rendered_object_is_caught():
    objs = charts.render_release(_release("open-webui"), "v1.33.0")
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    broken = {**sts, "spec": {**sts["spec"], "replicaz": 1}}
    assert charts.validation_errors([broken], "v1.33.0", set())


def test_an_extra_app_not_vendored_is_skipped_with_a_reason():
    from tools import mock_engine as harness
    app = {"name": "whoami", "namespace": "whoami", "repoUrl": "https://charts.example.com",
           "chart": "whoami", "targetRevision": "1.0.0"}
    rec = harness.run("local", {"llm-platform:apps": [app]})
    extra = next(r for r in charts.chart_releases(rec) if r.name == "whoami")
    assert extra.extra
    objs = charts.cluster_objects(rec)
    assert not any(m.source == "chart:whoami" for m in objs)
    assert "not vendored" in charts.SKIPPED["whoami"]
