"""Model servers stay up through rollouts, node drains and destroys, on every stack."""

import pytest

from tests.conftest import PODS, recording
from tools import mock_engine as harness

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"


def workload(rec):
    # Found by its label: the front door has a Deployment too.
    (reg,) = rec.model_servers()
    return reg


def server(rec):
    return workload(rec).inputs


@pytest.fixture(scope="module", params=["local", "local-pods", "eks", "gke"])
def stack(request):
    return recording(request.param)


def test_graceful_shutdown_and_priority(stack):
    pod = server(stack)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 120
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]
    if "exec" in pre_stop:  # llama.cpp: pause, then wait for requests in flight (bounded)
        pause, _port, _keys, bound = pre_stop["exec"]["command"][4:8]
        assert 0 < int(pause) and int(pause) + int(bound) < pod["terminationGracePeriodSeconds"]
    else:  # vLLM: pause, then drain on SIGTERM for --shutdown-timeout
        args = pod["containers"][0]["args"]
        drain = int(args[args.index("--shutdown-timeout") + 1])
        assert pre_stop["sleep"]["seconds"] + drain < pod["terminationGracePeriodSeconds"]
    priority = stack.one("kubernetes:scheduling.k8s.io/v1:PriorityClass").inputs
    assert pod["priorityClassName"] == priority["metadata"]["name"]
    assert priority["value"] > 0 and not priority.get("globalDefault")


def test_startup_probe_outlasts_the_longest_load(stack):
    reg = workload(stack)
    probe = reg.inputs["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    if reg.name == "llama-router-deployment":
        # The router answers /health once it listens; each model loads on its first request.
        assert budget >= 60 and reg.inputs["spec"].get("progressDeadlineSeconds", 600) >= budget
        return
    assert budget >= 30 * 60
    # Neither the rollout nor Pulumi's wait is declared failed before the probe gives up.
    if reg.type == DEPLOYMENT:
        assert reg.inputs["spec"]["progressDeadlineSeconds"] >= budget
    for verb in ("create", "update"):
        assert int(reg.custom_timeouts[verb].removesuffix("m")) * 60 > budget


def test_local_rollout_surges_into_a_free_share_of_the_gpu(local_pods):
    # The GPU is shared by 4 pods and one is in use: a new pod fits beside the old one.
    assert server(local_pods)["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_the_router_is_replaced_in_place(local):
    # One GPU holder with every model loaded: the old pod drains and goes before the new one.
    assert server(local)["spec"]["strategy"] == {"type": "Recreate"}


def test_surge_counts_every_server_on_the_accelerator():
    """Two models of two replicas take all 4 shares of the GPU: a surge pod would stay Pending
    and the rollout would never finish, so each server is replaced in place."""
    model = harness.stack_config("local")["llm-platform:models"][0]
    rec = harness.run("local", {**PODS, "llm-platform:models": [
        {**model, "replicas": 2}, {**model, "name": "second", "replicas": 2}]})
    assert len(rec.model_servers()) == 2
    for dep in rec.model_servers():
        assert dep.inputs["spec"]["strategy"] == {"type": "Recreate"}, dep.name


def test_shares_beyond_the_gpu_are_refused():
    model = harness.stack_config("local")["llm-platform:models"][0]
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {**PODS, "llm-platform:models": [{**model, "replicas": 5}]})
    assert str(info.value.error).startswith(
        "Pulumi.local.yaml: llm-platform:models[0].replicas: the models need 5 vulkan units in all")


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
def test_cache_backed_servers_roll_one_pod_at_a_time_on_their_own_claim(stack_name):
    """No surge: a surge pod would need a second accelerator that may not exist and the old
    pod's ReadWriteOnce disk, which it cannot attach."""
    rec = harness.run(stack_name)
    assert [r.type for r in rec.model_servers()] == [STATEFULSET]
    spec = server(rec)["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert [t["spec"]["accessModes"] for t in spec["volumeClaimTemplates"]] == [["ReadWriteOnce"]]
    mounts = {m["name"] for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]} <= mounts
    # The claim comes from the template, never from a volume every replica would share.
    assert not [v for v in spec["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]


def test_disruption_budget_only_with_more_than_one_replica(local, local_pods):
    assert not local.of_type(PDB) and not local_pods.of_type(PDB)
    models = harness.stack_config("local")["llm-platform:models"]
    rec = harness.run("local", {**PODS, "llm-platform:models": [{**models[0], "replicas": 2}]})
    pdb = rec.one(PDB).inputs
    dep = server(rec)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"]


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
def test_model_caches_are_kept_for_the_life_of_their_server_and_no_longer(stack_name):
    """Kept: across rollouts, restarts and scaling down and up again. Not kept: the claims go
    with the StatefulSet (tests/parts/test_cluster.py shows the control plane deleting them before a
    foreground delete ends), so `destroy` leaves none bound when the cluster goes."""
    rec = harness.run(stack_name)
    workload = rec.one("kubernetes:apps/v1:StatefulSet", "model-qwen-statefulset")
    spec = server(rec)["spec"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    # Pulumi deletes dependents first: the driver that deletes the disks outlives their claims.
    if stack_name == "eks":
        assert rec.one("aws:eks/addon:Addon", "cluster-ebs-csi").urn in rec.depends_transitively(workload)
    assert not rec.of_type(PVC)
    # Nothing is kept after `destroy` but the Gateway API's CRDs (deleting a CRD deletes every
    # object of its kind, other owners' too): no claim, volume or class.
    assert [r.name for r in rec.registrations if r.retain_on_delete] == ["mesh-gateway-api-crds"]
    name = spec["volumeClaimTemplates"][0]["spec"]["storageClassName"]
    (sc,) = [r.inputs for r in rec.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
             if r.inputs["metadata"]["name"] == name]
    assert sc["reclaimPolicy"] == "Delete"  # no volume left behind, billed, after destroy


@pytest.mark.parametrize("value", [True, False])
def test_delete_model_caches_is_refused_with_what_happens_instead(value):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:deleteModelCaches": value})
    message = str(info.value.error)
    assert message.startswith("Pulumi.eks.yaml: llm-platform:deleteModelCaches: no longer a setting; ")
    assert "`pulumi destroy` deletes them" in message and "\n" not in message
    assert info.value.registrations == []


def test_host_model_files_are_never_deleted(local, local_pods):
    for fetch in (local.one("command:local:Command", "llama-router-tinyllama-model-file"),
                  local_pods.one("command:local:Command", "model-tinyllama-model-file")):
        assert not fetch.inputs.get("delete")
