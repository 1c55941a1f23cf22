"""Model servers stay up through rollouts, node drains and destroys, on every stack."""

import pytest

from tools import mock_engine as harness

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"


def server(rec):
    return rec.of_type(DEPLOYMENT)[0].inputs


@pytest.fixture(scope="module", params=harness.STACKS)
def stack(request):
    return harness.run(request.param)


def test_graceful_shutdown_and_priority(stack):
    pod = server(stack)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 120
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]
    if "exec" in pre_stop:  # llama.cpp: pause, then wait for requests in flight (bounded)
        pause, _port, _keys, bound = pre_stop["exec"]["command"][4:]
        assert 0 < int(pause) and int(pause) + int(bound) < pod["terminationGracePeriodSeconds"]
    else:  # vLLM: pause, then drain on SIGTERM for --shutdown-timeout
        args = pod["containers"][0]["args"]
        drain = int(args[args.index("--shutdown-timeout") + 1])
        assert pre_stop["sleep"]["seconds"] + drain < pod["terminationGracePeriodSeconds"]
    priority = stack.one("kubernetes:scheduling.k8s.io/v1:PriorityClass").inputs
    assert pod["priorityClassName"] == priority["metadata"]["name"]
    assert priority["value"] > 0 and not priority.get("globalDefault")


def test_startup_probe_outlasts_the_longest_load(stack):
    dep = server(stack)
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget >= 30 * 60
    # The rollout is not declared failed before the probe gives up.
    assert dep["spec"]["progressDeadlineSeconds"] >= budget


@pytest.mark.parametrize("stack_name, strategy", [
    ("local", "RollingUpdate"),   # the GPU is shared by 4 pods: a new one fits beside the old
    ("eks", "RollingUpdate"),     # up to 2 GPU nodes of 1 GPU: a second pod gets its own
    ("gke", "Recreate"),          # one TPU host, every chip in use: replace in place
])
def test_rollout_never_drops_the_last_replica_where_capacity_allows(stack_name, strategy):
    spec = server(harness.run(stack_name))["spec"]["strategy"]
    assert spec["type"] == strategy
    if strategy == "RollingUpdate":
        assert spec["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_single_gpu_node_group_replaces_in_place():
    cluster = harness.stack_config("eks")["llm-platform:cluster"]
    rec = harness.run("eks", {"llm-platform:cluster": {
        **cluster, "gpuNodes": {**cluster["gpuNodes"], "maxSize": 1, "desiredSize": 1}}})
    assert server(rec)["spec"]["strategy"] == {"type": "Recreate"}


def test_disruption_budget_only_with_more_than_one_replica():
    assert not harness.run("local").of_type(PDB)
    models = harness.stack_config("local")["llm-platform:models"]
    rec = harness.run("local", {"llm-platform:models": [{**models[0], "replicas": 2}]})
    pdb = rec.one(PDB).inputs
    dep = server(rec)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"]


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
def test_model_caches_survive_destroy_unless_config_says_so(stack_name):
    (pvc,) = harness.run(stack_name).of_type("kubernetes:core/v1:PersistentVolumeClaim")
    assert pvc.retain_on_delete
    rec = harness.run(stack_name, {"llm-platform:deleteModelCaches": True})
    (pvc,) = rec.of_type("kubernetes:core/v1:PersistentVolumeClaim")
    assert not pvc.retain_on_delete


def test_host_model_files_are_never_deleted():
    fetch = harness.run("local").one("command:local:Command", "model-tinyllama-model-file")
    assert not fetch.inputs.get("delete")
