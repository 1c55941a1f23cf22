"""Bad stack config stops the program before any resource is registered, with one line that
names the stack file, the key and what was expected."""

import re
from pathlib import Path

import pulumi
import pytest

from tests.conftest import PODS
from tools import mock_engine as harness

CLUSTER = {
    "kind": "minikube", "modelsDir": "~/models",
}
MODEL = {"name": "tinyllama", "file": "tinyllama-1.1b-chat-v1.0.Q8_0.gguf",
         "hfRepo": "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"}


def refused(overrides=None, remove=()):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", overrides, remove)
    failed = info.value
    assert isinstance(failed.error, pulumi.RunError), repr(failed.error)
    assert failed.registrations == [], "resources were registered before the config was checked"
    message = str(failed.error)
    assert "\n" not in message and message.startswith("Pulumi.local.yaml: llm-platform:")
    return message


@pytest.mark.parametrize("overrides, key, expected", [
    ({"llm-platform:accelerator": {"kind": "amd"}},
     "llm-platform:accelerator.kind", "'vulkan', 'nvidia' or 'tpu', got 'amd'"),
    ({"llm-platform:models": [{**MODEL, "name": "Tiny_Llama"}]},
     "llm-platform:models[0].name", "expected a DNS label"),
    ({"llm-platform:models": [{**MODEL, "replicas": -1}]},
     "llm-platform:models[0].replicas", "greater than or equal to 0, got -1"),
    ({"llm-platform:models": [{**MODEL, "extraArgs": ["--api-key", "k"]}]},
     "llm-platform:models[0].extraArgs", "expected no --api-key: the platform passes the API keys"),
    ({"llm-platform:models": [{**MODEL, "ctxSize": 100}]},
     "llm-platform:models[0].ctxSize", "expected 0 (the model's own context) or at least 256 tokens, got 100"),
    ({"llm-platform:cluster": {"kind": "minikube"}},
     "llm-platform:cluster.modelsDir", "required key is missing"),
    ({"llm-platform:cluster": {**CLUSTER, "cpu": 4}},
     "llm-platform:cluster.cpu", "unknown key"),
    ({"llm-platform:modelz": [MODEL]},
     "llm-platform:modelz", "unknown key"),
    ({"llm-platform:cluster": {"kind": "kind"}},
     "llm-platform:cluster", "one of 'minikube', 'existing', 'eks', 'gke', got 'kind'"),
    ({"llm-platform:models": [MODEL, MODEL]},
     "llm-platform:models", "'tinyllama' is used more than once"),
    ({"llm-platform:models": [{**MODEL, "file": "models/tiny.bin"}]},
     "llm-platform:models[0].file", "expected a GGUF file name"),
    ({"llm-platform:models": [{**MODEL, "image": "quay.io/ramalama/ramalama:latest"}]},
     "llm-platform:models[0].image", "pinned to a tag or digest"),
    ({"llm-platform:models": [{**MODEL, "resources": {"memory": "lots"}}]},
     "llm-platform:models[0].resources.memory", "Kubernetes quantity"),
    ({"llm-platform:mesh": {"chartVersion": "1.x"}},
     "llm-platform:mesh.chartVersion", "exact chart version"),
    ({"llm-platform:cluster": {**CLUSTER, "kubernetesVersion": "1.34"}},
     "llm-platform:cluster.kubernetesVersion", "such as 'v1.34.0'"),
    ({"llm-platform:models": []},
     "llm-platform:models", "at least 1 item"),
    ({"llm-platform:security": {"apiAuth": False}, "llm-platform:frontDoor": {"virtualKeys": {"enabled": True}}},
     "llm-platform:frontDoor.virtualKeys.enabled", "expected security.apiAuth: true"),
    ({"llm-platform:frontDoor": {"virtualKeys": {"enabled": True, "instances": 10}}},
     "llm-platform:frontDoor.virtualKeys.instances", "less than or equal to 9, got 10"),
    ({"llm-platform:frontDoor": {"virtualKeys": {"enabled": True, "namespace": "front-door"}}},
     "llm-platform:frontDoor.virtualKeys.namespace", "expected a namespace of its own, outside the mesh"),
    ({"llm-platform:frontDoor": {"virtualKeys": {"enabled": True, "storageSize": "big"}}},
     "llm-platform:frontDoor.virtualKeys.storageSize", "Kubernetes quantity"),
])
def test_bad_value_is_refused_with_key_and_expectation(overrides, key, expected):
    message = refused(overrides)
    assert f"Pulumi.local.yaml: {key}: " in message
    assert expected in message


def test_missing_cluster_key_is_refused():
    message = refused(remove=("llm-platform:cluster",))
    assert message == "Pulumi.local.yaml: llm-platform:cluster: required key is missing"


def test_defaults_serve_tinyllama_when_no_models_are_configured():
    rec = harness.run("local", PODS, remove=("llm-platform:models",))
    args = rec.one("kubernetes:apps/v1:Deployment", "model-tinyllama-deployment").inputs["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "/mnt/models/tinyllama-1.1b-chat-v1.0.Q8_0.gguf" in args
    assert rec.outputs["modelAliases"] == ["tinyllama"]


def test_existing_cluster_serves_on_cpu_with_the_users_kubeconfig(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(harness.KUBECONFIG)
    rec = harness.run("local", {
        "llm-platform:cluster": {"kind": "existing", "kubeconfig": str(kubeconfig), "context": "kind-dev"},
        "llm-platform:accelerator": {"kind": "none"}, **PODS,
    })
    assert not rec.of_type("command:local:Command")  # nothing created, no model fetch
    assert not rec.of_type("kubernetes:apps/v1:DaemonSet")  # no device plugin on CPU
    provider = rec.one("pulumi:providers:kubernetes")
    assert provider.inputs["context"] == "kind-dev"
    c = rec.one("kubernetes:apps/v1:Deployment", "model-tinyllama-deployment").inputs["spec"]["template"]["spec"]["containers"][0]
    assert "-ngl" not in c["args"] and "command" not in c
    assert not any("/" in k for k in c["resources"]["limits"])  # no accelerator resource
    assert rec.one("kubernetes:helm.sh/v3:Release", "mesh-gateway").inputs["values"]["service"]["type"] == "LoadBalancer"


def test_existing_cluster_with_missing_kubeconfig_is_refused(tmp_path):
    message = refused({"llm-platform:cluster": {"kind": "existing", "kubeconfig": str(tmp_path / "nope")}})
    assert "llm-platform:cluster.kubeconfig: expected a readable kubeconfig file" in message


def test_existing_cluster_serves_vllm_on_the_gpu_nodes_it_describes(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(harness.KUBECONFIG)
    taint = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
    rec = harness.run("eks", {"llm-platform:cluster": {
        "kind": "existing", "kubeconfig": str(kubeconfig),
        "acceleratorNodes": {"perNode": 1, "nodes": 2, "labels": {"nvidia.com/gpu.present": "true"},
                             "taint": taint, "devicePlugin": "chart"}}})
    assert not rec.of_type("aws:eks/cluster:Cluster")
    pod = next(r for r in rec.of_type("kubernetes:apps/v1:StatefulSet") if "qwen" in r.name).inputs["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {**taint, "operator": "Equal"} in pod["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    plugin = rec.one("kubernetes:helm.sh/v3:Release", "gpu-nvidia").inputs["values"]
    assert plugin["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_existing_cluster_needs_its_accelerator_nodes_to_serve_on_gpus(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(harness.KUBECONFIG)
    message = refused({"llm-platform:cluster": {"kind": "existing", "kubeconfig": str(kubeconfig)},
                       "llm-platform:accelerator": {"kind": "nvidia"},
                       "llm-platform:models": [{"name": "qwen", "runtime": "vllm",
                                                "hfModel": "Qwen/Qwen2.5-1.5B-Instruct"}]})
    assert "llm-platform:cluster.acceleratorNodes: required to serve on 'nvidia'" in message


CONFIG_GROUP = "kubernetes:yaml/v2:ConfigGroup"


def _lay_out_crds(folder, missing: str) -> None:
    """Put the CRD bundle a run missed (`<project>-<version>/<folder>/<file>`) into `folder`, as
    the vendored copy lays it out: linked where it is vendored, else an empty stand-in file."""
    from tools import charts

    bundle = missing.split("/", 1)[0]
    if (charts.CRDS_DIR / bundle).is_dir():
        (folder / bundle).symlink_to(charts.CRDS_DIR / bundle, target_is_directory=True)
    else:
        (folder / missing).parent.mkdir(parents=True, exist_ok=True)
        (folder / missing).write_bytes(b"")


def _crd_files(rec) -> list[str]:
    return rec.one(CONFIG_GROUP, "mesh-gateway-api-crds").inputs["files"]


def test_charts_come_from_a_folder_of_archives_when_one_is_set(tmp_path):
    overrides = {"llm-platform:charts": {"archiveDir": str(tmp_path)}}
    for _ in range(30):  # each run names the first archive or CRD file it lacks
        try:
            rec = harness.run("local", overrides)
            break
        except harness.ProgramFailed as failed:
            missing = re.search(r" has no (\S+);", str(failed.error)).group(1)
            if missing.endswith(".tgz"):
                (tmp_path / missing).write_bytes(b"")
            else:
                _lay_out_crds(tmp_path, missing)
    assert {p.name for p in tmp_path.iterdir()} >= {"istiod-1.30.3.tgz", "argo-cd-10.1.1.tgz"}
    for release in rec.of_type("kubernetes:helm.sh/v3:Release"):
        assert release.inputs["chart"].startswith(str(tmp_path) + "/"), release.name
        assert "repositoryOpts" not in release.inputs and "version" not in release.inputs
    # The Gateway API's and the Inference Extension's CRDs come from the same folder.
    assert _crd_files(rec) and all(f.startswith(str(tmp_path) + "/") for f in _crd_files(rec))
    default = harness.run("local")
    istiod = default.one("kubernetes:helm.sh/v3:Release", "mesh-istiod").inputs
    assert istiod["chart"] == "istiod" and istiod["repositoryOpts"]["repo"].startswith("https://")
    assert all(f.startswith("https://raw.githubusercontent.com/") for f in _crd_files(default))


def test_every_release_of_the_cloud_stack_comes_from_the_archive_folder(tmp_path):
    """eks installs the most charts (metrics-server and NVIDIA's GPU exporter among them): with
    a folder set, every release reads its archive there and none names a repository."""
    from tests.conftest import need_charts
    from tools import charts

    need_charts()
    folder = tmp_path / "charts"
    folder.mkdir()
    # The vendored archives and CRD bundles side by side, as an air-gapped user keeps them.
    for vendored in [*charts.CHARTS_DIR.glob("*.tgz"), *(d for d in charts.CRDS_DIR.iterdir() if d.is_dir())]:
        (folder / vendored.name).symlink_to(vendored, target_is_directory=vendored.is_dir())
    rec = harness.run("eks", {"llm-platform:charts": {"archiveDir": str(folder)}})
    releases = rec.of_type("kubernetes:helm.sh/v3:Release")
    assert {"cluster-metrics-server-release", "gpu-metrics-exporter"} <= {r.name for r in releases}
    for release in releases:
        assert release.inputs["chart"].startswith(str(folder) + "/"), release.name
        assert "repositoryOpts" not in release.inputs and "version" not in release.inputs, release.name
    for path in _crd_files(rec):
        assert path.startswith(str(folder) + "/") and charts.CRDS_DIR in Path(path).resolve().parents, path


def test_a_crd_bundle_missing_from_the_archive_folder_fails_in_one_line(tmp_path):
    """Every archive there but not the CRDs: the first file missing is named, and what is expected."""
    from tests.conftest import need_charts
    from tools import charts

    need_charts()
    for archive in charts.CHARTS_DIR.glob("*.tgz"):
        (tmp_path / archive.name).symlink_to(archive)
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:charts": {"archiveDir": str(tmp_path)}})
    message = str(info.value.error)
    assert "\n" not in message
    assert message.startswith(f"charts.archiveDir: {tmp_path} has no gateway-api-v1.6.1/standard/"
                              f"gateway.networking.k8s.io_gatewayclasses.yaml; ")


def test_a_chart_missing_from_the_archive_folder_fails_in_one_line(tmp_path):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:charts": {"archiveDir": str(tmp_path)}})
    message = str(info.value.error)
    assert "\n" not in message
    assert message.startswith(f"charts.archiveDir: {tmp_path} has no base-1.30.3.tgz")


def test_a_chart_folder_that_is_not_there_is_refused(tmp_path):
    message = refused({"llm-platform:charts": {"archiveDir": str(tmp_path / "nope")}})
    assert "llm-platform:charts.archiveDir: expected a folder of chart archives" in message


def test_an_open_api_with_paid_providers_is_refused():
    """Without API keys anyone who reaches the gateway would spend the providers' keys."""
    provider = {"name": "gpt-mini", "model": "openai/gpt-4o-mini"}
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:security": {"apiAuth": False},
                              "llm-platform:frontDoor": {"providers": [provider]},
                              "llm-platform:providerKeys": {"gpt-mini": "sk-provider-0123456789abcdef"}},
                    secrets=("llm-platform:providerKeys",))
    assert info.value.registrations == []
    message = str(info.value.error)
    assert "\n" not in message
    assert message.startswith("Pulumi.local.yaml: llm-platform:frontDoor.providers: expected security.apiAuth: true")
    assert "sk-provider" not in message
