"""The offline render writes what a stack would apply, one file per component, secrets masked."""

import pytest
import yaml

from tools import mock_engine as harness
from tools import render


@pytest.mark.parametrize("stack", harness.STACKS)
def test_render_writes_one_file_per_component(stack, tmp_path):
    assert render.main([stack, "--out", str(tmp_path)]) == 0
    files = {p.name: list(yaml.safe_load_all(p.read_text())) for p in tmp_path.glob("*.yaml")}
    assert {"mesh.yaml", "gitops.yaml", "gateway.yaml", "cloud.yaml"} <= set(files)
    model_file = f"model-{harness.stack_config(stack)['llm-platform:models'][0]['name']}.yaml"
    kinds = {d["kind"] for d in files[model_file]}
    # Servers that cache downloaded weights run as a StatefulSet (one cache per replica).
    workload = "StatefulSet" if stack in ("eks", "gke") else "Deployment"
    assert {workload, "Service"} <= kinds
    assert {d["kind"] for d in files["gateway.yaml"]} == {"Gateway", "VirtualService"}
    releases = [d for d in files["mesh.yaml"] if d["kind"] == "HelmRelease"]
    assert [r["spec"]["chart"] for r in releases] == ["base", "cni", "istiod", "gateway"]
    deployment = next(d for d in files[model_file] if d["kind"] == workload)
    assert isinstance(deployment["spec"]["replicas"], int)  # no mock-engine floats


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
