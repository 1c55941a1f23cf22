"""Teams serve their own models from files: what a bad file, a name clash or a quota overrun says
(one line naming the file and the key, nothing registered), and what a team's model becomes
(its namespace, its quota, its key, its route) without anything of anyone else's moving."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import yaml
import pytest

from tools import mock_engine as harness

TINY = {"file": "smollm2-135m-instruct-q8_0.gguf", "hfRepo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        "resources": {"cpu": "1", "cpuLimit": "2", "memory": "1Gi", "memoryLimit": "2Gi"}}
QUOTA = {"accelerators": 3, "memory": "12Gi"}
NS = "team-research"


def team_files(root: Path, files: dict[str, object]) -> Path:
    """Write `files` ("<team>/<model>.yaml" -> a mapping, or text as it stands) under `root`."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def run(root: Path, teams=None, **extra):
    return harness.run("local", {"llm-platform:teams": teams or {"research": QUOTA},
                                 "llm-platform:teamModelsDir": str(root), **extra})


def refused(root: Path, teams=None, **extra) -> str:
    with pytest.raises(harness.ProgramFailed) as info:
        run(root, teams, **extra)
    assert isinstance(info.value.error, pulumi.RunError), repr(info.value.error)
    assert info.value.registrations == [], "resources were registered before the team files were checked"
    message = str(info.value.error)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("files, expected", [
    ({"research/smol.yaml": {**TINY, "replica": 1}}, "/research/smol.yaml: replica: unknown key"),
    ({"research/smol.yaml": {**TINY, "replicas": -1}}, "/research/smol.yaml: replicas: Input should be greater"),
    ({"research/smol.yaml": {**TINY, "runtime": "vllm"}}, "/research/smol.yaml: hfModel: required key is missing"),
    ({"research/smol.yaml": "file: [unclosed\n"}, "/research/smol.yaml: not valid YAML at line 2"),
    ({"research/smol.yaml": "- a list\n"}, "/research/smol.yaml: expected a mapping of a model's keys"),
    ({"research/smol.yaml": {**TINY, "name": "other"}},
     "/research/smol.yaml: name: expected 'smol', the file's own name, got 'other'"),
    ({"research/tinyllama.yaml": TINY},
     "/research/tinyllama.yaml: name: 'tinyllama' is already served (Pulumi.local.yaml: models)"),
    ({"research/smol.yaml": {**TINY, "replicas": 4}},
     "/research/smol.yaml: replicas: team research's models need 4 vulkan units at their most replicas, its "
     "quota is 3 (Pulumi.local.yaml: teams.research.accelerators)"),
    ({"research/smol.yaml": {**TINY, "resources": {**TINY["resources"], "memoryLimit": "12Gi"}}},
     "/research/smol.yaml: replicas: team research's server pods need 13Gi of memory limits"),
])
def test_a_bad_team_file_fails_in_one_line_naming_the_file_and_the_key(tmp_path, files, expected):
    message = refused(team_files(tmp_path, files))
    assert message.startswith(str(tmp_path)) and expected in message, message


def test_a_file_the_check_would_skip_is_refused(tmp_path):
    """A model file misnamed (or put in a subfolder) would otherwise never deploy, silently."""
    for stray in ("smol.YAML", "smol.json", "old/smol.yaml"):
        root = tmp_path / stray.replace("/", "-")
        team_files(root, {"research/README.md": "notes", "research/.gitkeep": "", f"research/{stray}": TINY})
        message = refused(root)
        assert message.endswith(f"expected a model file <model>.yaml in the team's folder (no other files or "
                                f"folders), got {stray.split('/')[0]!r}"), message


def test_a_name_two_teams_use_is_refused(tmp_path):
    root = team_files(tmp_path, {"research/smol.yaml": TINY, "support/smol.yaml": TINY})
    message = refused(root, {"research": QUOTA, "support": QUOTA})
    assert message.endswith(f"/support/smol.yaml: name: 'smol' is already served ({root}/research/smol.yaml); "
                            f"expected a name of its own"), message


def test_a_quota_without_room_for_one_more_pod_replaces_in_place(tmp_path):
    """A surge pod over the quota would never be created, and the rollout would wait for it."""
    rec = run(team_files(tmp_path, {"research/smol.yaml": TINY}), {"research": {**QUOTA, "accelerators": 1}})
    server = rec.one("kubernetes:apps/v1:Deployment", "model-smol-deployment")
    assert server.inputs["spec"]["strategy"] == {"type": "Recreate"}


def test_the_teams_models_together_must_fit_the_cluster(tmp_path):
    # The router holds one of the Vulkan device's 4 shares; two teams' 2 each are one too many.
    root = team_files(tmp_path, {"research/smol.yaml": {**TINY, "replicas": 2},
                                 "support/tiny2.yaml": {**TINY, "replicas": 2}})
    message = refused(root, {"research": QUOTA, "support": QUOTA})
    assert "/support/tiny2.yaml: replicas: the stack's models and the teams' need 5 vulkan units in all, the " \
           "cluster offers 4" in message, message


def test_a_team_namespace_of_the_platform_is_refused(tmp_path):
    message = refused(tmp_path, {"research": {**QUOTA, "namespace": "monitoring"}})
    assert message == ("Pulumi.local.yaml: llm-platform:teams.research.namespace: expected a namespace of the "
                       "team's own, 'monitoring' is a namespace the platform installs"), message


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    root = team_files(tmp_path_factory.mktemp("teams"), {"research/smol.yaml": TINY})
    return root, run(root)


def test_a_teams_model_runs_in_its_namespace_within_its_quota(research):
    _, rec = research
    ns = rec.one("kubernetes:core/v1:Namespace", f"mesh-ns-{NS}").inputs["metadata"]
    assert ns["name"] == NS and ns["labels"]["istio-injection"] == "enabled"
    quota = rec.one("kubernetes:core/v1:ResourceQuota", "team-research-quota").inputs
    assert quota["metadata"]["namespace"] == NS
    assert quota["spec"]["hard"] == {"requests.squat.ai/dri": "3", "limits.memory": "12Gi"}
    server = rec.one("kubernetes:apps/v1:Deployment", "model-smol-deployment")
    assert server.inputs["metadata"]["namespace"] == NS
    pod = server.inputs["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["squat.ai/dri"] == "1"
    # Created after the quota: a pod created first would not be counted.
    assert rec.one("kubernetes:core/v1:ResourceQuota", "team-research-quota").urn in server.dependencies
    # One replica of 3 shares and 3Gi of 12Gi: a rolling update's extra pod fits the quota.
    assert server.inputs["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    # The namespace's default-deny rules, as the platform's models namespace has them.
    policies = {r.inputs["metadata"]["name"] for r in rec.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                if r.inputs["metadata"]["namespace"] == NS}
    assert {"default-deny", "allow-callers", "allow-dns"} <= policies, policies


def test_a_teams_model_is_named_at_the_one_base_url(research):
    _, rec = research
    assert rec.outputs["modelAliases"] == ["tinyllama", "smol"]
    config = rec.one("kubernetes:core/v1:ConfigMap", "front-door-config").inputs["data"]["config.yaml"]
    assert f"http://smol.{NS}.svc.cluster.local:" in config
    # The front door may call the team's servers, and the team's namespace admits it.
    sidecar = rec.one("kubernetes:networking.istio.io/v1:Sidecar").inputs
    assert f"{NS}/*" in sidecar["spec"]["egress"][0]["hosts"]
    callers = rec.one("kubernetes:security.istio.io/v1:AuthorizationPolicy", f"mesh-callers-{NS}").inputs
    principals = json.dumps(callers["spec"])
    assert "ns/front-door/sa/litellm" in principals, principals


def test_a_teams_key_is_its_own_and_only_its_servers_take_it(research):
    _, rec = research
    assert "teamApiKeys" in rec.secret_outputs
    key = rec.outputs["teamApiKeys"]["research"]
    assert key.startswith("sk-") and key != rec.outputs["apiKey"]
    team_keys = harness.reveal(rec.one("kubernetes:core/v1:Secret", "model-smol-api-keys").inputs["stringData"])
    assert team_keys["team"] == key
    # None of the stack's keys: whoever deploys into the team's namespace can read these.
    stack_keys = harness.reveal(rec.one("kubernetes:core/v1:Secret", "llama-router-api-keys").inputs["stringData"])
    assert not set(team_keys.values()) & set(stack_keys.values())
    assert rec.outputs["apiKey"] not in team_keys.values()
    router_keys = harness.reveal(rec.one("kubernetes:core/v1:Secret", "llama-router-api-keys").inputs["stringData"])
    assert key not in router_keys.values()
    front = harness.reveal(rec.one("kubernetes:core/v1:Secret", "front-door-keys").inputs["stringData"])
    assert json.loads(front["LITELLM_TEAM_KEYS"]) == {"research": {"key": key, "models": ["smol"]}}


def test_a_second_model_moves_nothing_of_anyone_elses(research, tmp_path):
    """A team adds a model: its own objects appear; of what exists, only what lists or routes
    models changes (the front door's model list, keys and pods; the ingress's routes)."""
    root, before = research
    team_files(tmp_path, {"research/smol.yaml": TINY, "research/smol2.yaml": TINY})
    after = run(tmp_path)
    old = {(r.type, r.name): r for r in before.registrations}
    changed, added = set(), set()
    for r in after.registrations:
        if (r.type, r.name) not in old:
            added.add((r.type, r.name))
        elif json.dumps(old[(r.type, r.name)].inputs, sort_keys=True, default=str) != \
                json.dumps(r.inputs, sort_keys=True, default=str):
            changed.add((r.type, r.name))
    assert {(t, n) for t, n in added if "smol2" not in n} == set(), added
    assert changed <= {("kubernetes:core/v1:ConfigMap", "front-door-config"),
                       ("kubernetes:core/v1:Secret", "front-door-keys"),
                       ("kubernetes:apps/v1:Deployment", "front-door-deployment"),
                       ("kubernetes:networking.istio.io/v1alpha3:EnvoyFilter", "model-routing-ingress-filters"),
                       ("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "gateway-routes")}, changed
    assert len(after.registrations) == len(before.registrations) + len(added)


def test_a_teams_model_autoscales_by_the_one_keda_in_its_namespace(tmp_path):
    """The quota counts its most replicas; the ScaledObject sits beside the server and reads the
    server's queue in the team's namespace."""
    auto = {**TINY, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2}}
    rec = run(team_files(tmp_path, {"research/smol.yaml": auto}), **{"llm-platform:llamaRouter": {"enabled": False}})
    (release,) = [r for r in rec.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "keda"]
    scaled = rec.one("kubernetes:keda.sh/v1alpha1:ScaledObject", "autoscaling-smol").inputs
    assert scaled["metadata"]["namespace"] == NS
    assert f'namespace="{NS}"' in scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert scaled["spec"]["maxReplicaCount"] == 2


def test_a_teams_model_over_its_quota_at_its_most_replicas_is_refused(tmp_path):
    auto = {**TINY, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}
    message = refused(team_files(tmp_path, {"research/smol.yaml": auto}),
                      **{"llm-platform:llamaRouter": {"enabled": False}})
    assert "/research/smol.yaml: autoscaling.maxReplicas: team research's models need 4 vulkan units" in message


PRICE = {"input": 0.2, "output": 0.6}
BUDGET = {"maxBudget": 25, "budgetDuration": "30d", "rpmLimit": 60}
VIRTUAL_KEYS = {"llm-platform:frontDoor": {"virtualKeys": {"enabled": True}}}


def server_keys_of(rec) -> dict:
    return harness.reveal(rec.one("kubernetes:core/v1:Secret", "model-smol-api-keys").inputs["stringData"])


def test_a_budget_needs_virtual_keys_and_the_platforms_price(tmp_path):
    """The team's price is the platform's to set: a team's file that prices itself is refused."""
    root = team_files(tmp_path, {"research/smol.yaml": TINY})
    message = refused(root, {"research": {**QUOTA, "price": PRICE, "budget": BUDGET}})
    assert message == ("Pulumi.local.yaml: llm-platform:teams.research.budget: expected "
                       "frontDoor.virtualKeys.enabled: true (a budget is kept with the front door's virtual "
                       "keys, in its database)"), message
    message = refused(root, {"research": {**QUOTA, "budget": BUDGET}}, **VIRTUAL_KEYS)
    assert message.startswith("Pulumi.local.yaml: llm-platform:teams.research.budget: expected a price beside "
                              "it"), message
    priced = team_files(tmp_path / "priced", {"research/smol.yaml": {**TINY, "price": {"input": 0.000001,
                                                                                       "output": 0}}})
    message = refused(priced, {"research": {**QUOTA, "price": PRICE, "budget": BUDGET}}, **VIRTUAL_KEYS)
    assert message == (f"{priced}/research/smol.yaml: price: a team's models are priced by the platform, in "
                       f"teams.research.price in Pulumi.local.yaml; leave it out here"), message
    message = refused(root, {"research": {**QUOTA, "price": {"input": 0, "output": 0}}})
    assert "teams.research.price: expected a price above zero" in message, message


def test_a_budgeted_teams_key_is_a_virtual_key_spent_through_the_front_door_alone(tmp_path):
    """The key the team holds is registered with the proxy (its budget, limits and models) by the
    process beside it, from a Secret; the ingress's key check and the team's servers no longer
    know it, so every call with it passes the proxy, whose custom auth holds it to the team's
    routes and models before LiteLLM holds it to its budget, at the team's price."""
    root = team_files(tmp_path, {"research/smol.yaml": TINY})
    rec = run(root, {"research": {**QUOTA, "price": PRICE, "budget": BUDGET}}, **VIRTUAL_KEYS)
    key = rec.outputs["teamApiKeys"]["research"]
    front = harness.reveal(rec.one("kubernetes:core/v1:Secret", "front-door-keys").inputs["stringData"])
    assert json.loads(front["LITELLM_TEAM_KEYS"]) == {"research": {"key": key, "models": ["smol"], "budget": True}}
    assert json.loads(front["LITELLM_TEAM_BUDGETS"]) == {"research": {
        "key": key, "models": ["smol"], "max_budget": 25.0, "budget_duration": "30d", "rpm_limit": 60,
        "tpm_limit": None}}
    pod = rec.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"]["spec"]
    proxy, script = pod["containers"]
    assert script["name"] == "team-budgets" and script["image"] == proxy["image"]
    assert script["command"] == ["python", "/etc/litellm/team_budgets.py"]
    # Keys by reference alone; the proxy itself is not handed the budgets' file.
    assert {e["name"] for e in script["env"] if "valueFrom" in e} == {"LITELLM_MASTER_KEY", "LITELLM_TEAM_BUDGETS"}
    assert {e["name"]: e["value"] for e in script["env"] if "value" in e} == {
        "LITELLM_PROXY_URL": "http://127.0.0.1:4000", "TEAM_BUDGETS_READY_FILE": "/tmp/team-budgets-ready"}
    # The pod is ready once the keys are in place: a rollout keeps the old pods until then.
    assert "/tmp/team-budgets-ready" in " ".join(script["readinessProbe"]["exec"]["command"])
    assert "LITELLM_TEAM_BUDGETS" not in {e["name"] for e in proxy["env"]}
    data = rec.one("kubernetes:core/v1:ConfigMap", "front-door-config").inputs["data"]
    assert "team_budgets.py" in data
    config = yaml.safe_load(data["config.yaml"])
    (smol,) = [m for m in config["model_list"] if m["model_name"] == "smol"]
    assert smol["litellm_params"]["input_cost_per_token"] == pytest.approx(0.2e-6)
    assert smol["litellm_params"]["output_cost_per_token"] == pytest.approx(0.6e-6)
    assert config["general_settings"]["custom_auth"] == "front_door_auth.user_api_key_auth"
    # The proxy presents the team's backend key to the team's servers, as for any team.
    assert smol["litellm_params"]["api_key"] == "os.environ/TEAM_RESEARCH_BACKEND_KEY"
    server_keys = server_keys_of(rec)
    assert server_keys["front-door"] == front["TEAM_RESEARCH_BACKEND_KEY"]
    assert key not in server_keys.values() and "team" not in server_keys
    filters = json.dumps(rec.one("kubernetes:networking.istio.io/v1alpha3:EnvoyFilter",
                                 "model-routing-ingress-filters").inputs)
    assert '"team-research"' not in filters.replace('\\"', '"').split("KEY_DIGESTS")[1].split("}")[0]


def test_the_registering_process_runs_wherever_the_front_door_has_its_database(tmp_path):
    """Without a budget left it still runs, with none to register: a key it registered earlier is
    deleted, not left working."""
    root = team_files(tmp_path, {"research/smol.yaml": TINY})
    rec = run(root, {"research": QUOTA}, **VIRTUAL_KEYS)
    pod = rec.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["proxy", "team-budgets"]
    front = harness.reveal(rec.one("kubernetes:core/v1:Secret", "front-door-keys").inputs["stringData"])
    assert json.loads(front["LITELLM_TEAM_BUDGETS"]) == {}
    assert "budget" not in json.loads(front["LITELLM_TEAM_KEYS"])["research"]
    # A budgeted team without a model yet: no key to register (an empty model list opens all).
    empty = team_files(tmp_path / "empty", {"research/README.md": "no models yet"})
    rec = run(empty, {"research": {**QUOTA, "price": PRICE, "budget": BUDGET}}, **VIRTUAL_KEYS)
    front = harness.reveal(rec.one("kubernetes:core/v1:Secret", "front-door-keys").inputs["stringData"])
    assert json.loads(front["LITELLM_TEAM_BUDGETS"]) == {}
