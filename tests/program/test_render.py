"""The offline render writes what a stack would apply, one file per component, secrets masked."""

import pytest
import yaml

from tools import mock_engine as harness
from tools import render

# libyaml's parser: the charts' CRDs are large.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.fixture(scope="module", params=harness.STACKS)
def rendered(request, tmp_path_factory):
    """(stack, file name -> documents) of `python -m tools.render <stack>`, run once per stack."""
    out = tmp_path_factory.mktemp(request.param)
    assert render.main([request.param, "--out", str(out)]) == 0
    return request.param, {p.name: list(yaml.load_all(p.read_text(), Loader=LOADER)) for p in out.glob("*.yaml")}


def test_render_writes_one_file_per_component(rendered):
    stack, files = rendered
    assert {"mesh.yaml", "gitops.yaml", "gateway.yaml", "cloud.yaml", "monitoring.yaml"} <= set(files)
    # Local serves every model from llama.cpp's router; the clouds run a server per model.
    model_file = "llama-router.yaml" if stack == "local" else \
        f"model-{harness.stack_config(stack)['llm-platform:models'][0]['name']}.yaml"
    kinds = {d["kind"] for d in files[model_file]}
    # Servers that cache downloaded weights run as a StatefulSet (one cache per replica).
    workload = "StatefulSet" if stack in ("eks", "gke") else "Deployment"
    assert {workload, "Service"} <= kinds
    assert {d["kind"] for d in files["gateway.yaml"]} == {"Gateway", "HTTPRoute", "ReferenceGrant"}
    releases = [d for d in files["mesh.yaml"] if d["kind"] == "HelmRelease"]
    assert [r["spec"]["chart"] for r in releases] == ["base", "cni", "istiod", "gateway"]
    # The CRDs of the kinds the gateway is made of, applied from their pinned release files.
    (crds,) = files["mesh-gateway-api.yaml"]
    assert crds["kind"] == "ConfigGroup"
    for kinds in ("gateways", "httproutes", "referencegrants"):
        assert any(f.endswith(f"/gateway.networking.k8s.io_{kinds}.yaml") for f in crds["spec"]["files"]), kinds
    deployment = next(d for d in files[model_file] if d["kind"] == workload)
    assert isinstance(deployment["spec"]["replicas"], int)  # no mock-engine floats


def test_render_writes_what_each_chart_installs(rendered):
    from tests.conftest import need_charts
    need_charts()
    stack, files = rendered
    files = {name: docs for name, docs in files.items() if name.startswith("chart-")}
    expected = {"chart-istio-base.yaml", "chart-istio-cni.yaml", "chart-istiod.yaml", "chart-istio-ingress.yaml",
                "chart-argocd.yaml", "chart-open-webui.yaml", "chart-kps.yaml"}
    if stack == "eks":
        expected |= {"chart-nvidia-device-plugin.yaml", "chart-karpenter.yaml", "chart-karpenter-crd.yaml",
                     "chart-metrics-server.yaml", "chart-nvidia-dcgm-exporter.yaml"}
    assert set(files) == expected
    # Argo CD's chart brings its CRDs; Open WebUI (an Argo CD app) its workload, in its namespace.
    assert any(d["kind"] == "CustomResourceDefinition" for d in files["chart-argocd.yaml"])
    webui = next(d for d in files["chart-open-webui.yaml"] if d["kind"] == "StatefulSet")
    assert webui["metadata"]["namespace"] == "open-webui"
    # kube-prometheus-stack with its Grafana subchart (vendored beside it).
    assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "kps-grafana" for d in files["chart-kps.yaml"])


def test_secrets_copied_into_chart_output_are_masked():
    secret = {harness.rpc._special_sig_key: harness.rpc._special_secret_sig, "value": "s3cr3t-value"}
    texts = render.secret_texts({"values": {"password": secret}})
    rendered = {"data": {"password": "czNjcjN0LXZhbHVl"}, "stringData": {"url": "redis://:s3cr3t-value@redis"}}
    assert render.scrubbed(rendered, texts) == {"data": {"password": render.SECRET},
                                                "stringData": {"url": f"redis://:{render.SECRET}@redis"}}


def test_cloud_summary_names_the_cluster_resources(tmp_path):
    render.main(["local", "--out", str(tmp_path)])
    cloud = list(yaml.safe_load_all((tmp_path / "cloud.yaml").read_text()))
    minikube = next(d for d in cloud if d["name"] == "cluster-minikube")
    assert "--driver krunkit" in minikube["inputs"]["create"]
    assert minikube["component"] == "cluster"


def test_secrets_are_masked():
    rec = harness.run("eks", {"llm-platform:hfToken": "hf_do_not_print"}, secrets=("llm-platform:hfToken",))
    text = yaml.safe_dump_all([d for docs in render.render(rec).values() for d in docs])
    assert "hf_do_not_print" not in text
    assert render.SECRET in text
