"""The front door as the program renders it: LiteLLM's config (one model name per server, the
providers' keys from a Secret), its egress, its timeouts and shutdown, the labels its metrics keep,
the UI's key and the release pinned. tests/parts/test_front_door.py starts that release with this
config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from components.edge import front_door
from components.config import FrontDoorConfig
from tests import ingress_routes as ingress
from tests.conftest import PODS
from tests.program.test_security import ui_principal
from tools import mock_engine as harness

ROOT = Path(__file__).resolve().parents[2]

CLIENT_KEY = "sk-test-client-0123456789abcdef"
PROVIDER_KEY = "sk-provider-not-used-0123456789"
MODELS = [
    # Priced: the proxy counts each request's spend by it (US dollars per million tokens).
    {"name": "tinyllama", "file": "tinyllama-1.1b-chat-v1.0.Q8_0.gguf", "price": {"input": 2.0, "output": 6.0}},
    {"name": "qwen", "file": "qwen2.5-1.5b-instruct-q4_k_m.gguf"},
]
PROVIDER = {"name": "gpt-mini", "model": "openai/gpt-4o-mini", "apiBase": "https://api.openai.com/v1"}
# One server per model here; tests/parts/test_llama_router.py puts the router behind the front door.
# The second model is a team's, from its folder (tests/fixtures/teams/research/qwen.yaml).
TEAM = "research"
TEAMS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "teams"
OVERRIDES = {
    **PODS,
    "llm-platform:models": MODELS[:1],
    "llm-platform:teams": {TEAM: {"accelerators": 1, "memory": "8Gi"}},
    "llm-platform:teamModelsDir": str(TEAMS_DIR),
    "llm-platform:frontDoor": {"providers": [PROVIDER]},
    "llm-platform:apiKey": CLIENT_KEY,
    "llm-platform:providerKeys": {PROVIDER["name"]: PROVIDER_KEY},
}
UI_ID = "spiffe://cluster.local/ns/open-webui/sa/open-webui"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


@pytest.fixture(scope="module")
def recorded():
    return harness.run("local", OVERRIDES, secrets=("llm-platform:apiKey", "llm-platform:providerKeys"))


def rendered_config(rec) -> dict:
    return yaml.safe_load(rec.one(CONFIG_MAP, "front-door-config").inputs["data"][front_door.CONFIG_FILE])


def write_config_dir(rec, directory: Path, cfg: dict) -> Path:
    """The ConfigMap's files as the pod mounts them (LiteLLM loads the custom auth from beside its
    config), with `cfg` for the config; returns the config's path."""
    for name, text in rec.one(CONFIG_MAP, "front-door-config").inputs["data"].items():
        (directory / name).write_text(text)
    (directory / front_door.CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    return directory / front_door.CONFIG_FILE


def service_host(rec, model: str) -> str:
    """The in-cluster host of a model's Service, in whichever namespace it runs."""
    meta = rec.one("kubernetes:core/v1:Service", f"model-{model}-service").inputs["metadata"]
    return f"{meta['name']}.{meta['namespace']}.svc.cluster.local"


def proxy_container(rec) -> dict:
    return rec.one(DEPLOYMENT, "front-door-deployment").inputs["spec"]["template"]["spec"]["containers"][0]


def test_each_model_is_a_model_name_backed_by_its_service(recorded):
    entries = {m["model_name"]: m["litellm_params"] for m in rendered_config(recorded)["model_list"]}
    for m in MODELS:
        svc = recorded.one("kubernetes:core/v1:Service", f"model-{m['name']}-service").inputs
        port = int(svc["spec"]["ports"][0]["port"])
        host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
        assert entries[m["name"]]["model"] == f"openai/{m['name']}"
        assert entries[m["name"]]["api_base"] == f"http://{host}:{port}/v1"
        # The team's model is called with the key its team's servers take, no other.
        env = front_door.team_backend_key_env(TEAM) if m["name"] == "qwen" else front_door.BACKEND_KEY_ENV
        assert entries[m["name"]]["api_key"] == f"os.environ/{env}"


def test_provider_entry_rendered_with_its_key_from_a_secret(recorded):
    entries = {m["model_name"]: m["litellm_params"] for m in rendered_config(recorded)["model_list"]}
    env_name = front_door.provider_key_env(PROVIDER["name"])
    assert entries[PROVIDER["name"]]["model"] == PROVIDER["model"]
    assert entries[PROVIDER["name"]]["api_base"] == PROVIDER["apiBase"]
    assert entries[PROVIDER["name"]]["api_key"] == f"os.environ/{env_name}"
    env = {e["name"]: e for e in proxy_container(recorded)["env"]}
    ref = env[env_name]["valueFrom"]["secretKeyRef"]
    secret = recorded.one(SECRET, "front-door-keys")
    assert ref["name"] == secret.inputs["metadata"]["name"]
    assert harness.reveal(secret.inputs["stringData"])[ref["key"]] == PROVIDER_KEY
    assert recorded.outputs["modelAliases"] == [m["name"] for m in MODELS] + [PROVIDER["name"]]


def test_egress_only_to_the_models_and_the_providers_hosts(recorded):
    sidecar = recorded.one("kubernetes:networking.istio.io/v1:Sidecar").inputs
    assert sidecar["metadata"]["namespace"] == "front-door"
    assert sidecar["spec"]["outboundTrafficPolicy"] == {"mode": "REGISTRY_ONLY"}
    assert "models/*" in sidecar["spec"]["egress"][0]["hosts"]
    (entry,) = recorded.of_type("kubernetes:networking.istio.io/v1:ServiceEntry")
    assert entry.inputs["spec"]["hosts"] == [urlparse(PROVIDER["apiBase"]).hostname]
    assert entry.inputs["spec"]["exportTo"] == ["."]
    policies = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in recorded.of_type(
        "kubernetes:networking.k8s.io/v1:NetworkPolicy") if p.inputs["metadata"]["namespace"] == "front-door"}
    assert policies["default-deny"]["policyTypes"] == ["Ingress", "Egress"]
    callers = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for rule in policies["allow-callers"]["ingress"] for peer in rule["from"]}
    assert callers == {"istio-ingress", "open-webui"}
    assert [int(p["port"]) for p in policies["allow-https"]["egress"][0]["ports"]] == [443]


def test_a_provider_without_a_known_host_is_refused():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {**OVERRIDES, "llm-platform:frontDoor": {"providers": [
            {"name": "gpt-mini", "model": "someprovider/model-x"}]}},
            secrets=("llm-platform:apiKey", "llm-platform:providerKeys"))
    assert "llm-platform:frontDoor.providers[0].apiBase: required for 'someprovider' models" in str(info.value.error)


@pytest.mark.parametrize("api_base", ["https://llm.example.org:8443/v1", "https://llm.example.org:80/v1"])
def test_a_provider_on_another_port_than_443_is_refused(api_base):
    # Its egress opens 443 only: the entry would be accepted and every request blocked.
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {**OVERRIDES, "llm-platform:frontDoor": {"providers": [
            {"name": "gpt-mini", "model": "openai/gpt-4o-mini", "apiBase": api_base}]}},
            secrets=("llm-platform:apiKey", "llm-platform:providerKeys"))
    error = str(info.value.error)
    assert "llm-platform:frontDoor.providers[0].apiBase: expected an https URL on port 443" in error
    assert len(error.strip().splitlines()) == 1


def test_no_retry_and_long_timeouts(recorded):
    cfg = rendered_config(recorded)
    assert cfg["litellm_settings"]["num_retries"] == 0 and cfg["router_settings"]["num_retries"] == 0
    for entry in cfg["model_list"]:
        assert entry["litellm_params"]["stream_timeout"] >= 600
    assert cfg["general_settings"]["master_key"] == f"os.environ/{front_door.MASTER_KEY_ENV}"
    # No key in the ConfigMap, in any form.
    text = recorded.one(CONFIG_MAP, "front-door-config").inputs["data"][front_door.CONFIG_FILE]
    assert CLIENT_KEY not in text and PROVIDER_KEY not in text and "sk-" not in text


@pytest.mark.parametrize("timeout", [None, 1800])
def test_streams_in_flight_get_the_whole_timeout_when_a_pod_stops(recorded, timeout: int | None):
    """LiteLLM waits GRACEFUL_SHUTDOWN_TIMEOUT for requests in flight after SIGTERM (its default,
    30 s, would cut every longer stream); the grace period holds the preStop sleep, that wait and
    LiteLLM's teardown."""
    rec = recorded if timeout is None else harness.run(
        "local", {**OVERRIDES, "llm-platform:frontDoor": {"timeoutSeconds": timeout}},
        secrets=("llm-platform:apiKey", "llm-platform:providerKeys"))
    timeout = timeout or FrontDoorConfig().timeout_seconds
    assert rendered_config(rec)["router_settings"]["timeout"] == timeout > 30
    container = proxy_container(rec)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GRACEFUL_SHUTDOWN_TIMEOUT"] == str(timeout)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = rec.one(DEPLOYMENT, "front-door-deployment").inputs["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    # LiteLLM's teardown after that wait takes seconds (tests below: it exits at once).
    assert grace >= pre_stop + timeout + 15


def test_the_gateway_strips_what_the_front_door_tells_of_its_servers(recorded):
    routes = ingress.rules(recorded)
    # The UI's rule too: Open WebUI passes a stream's headers from the front door on.
    assert set(routes) >= {"v1", "ui"}
    # Every rule goes to a backend, and each strips them on the way back.
    for name, rule in routes.items():
        assert rule["backendRefs"], name
        assert rule["filters"] == [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
            "remove": list(front_door.INTERNAL_RESPONSE_HEADERS)}}], name


# Labels Prometheus adds to every series it scrapes (the target's), and the histogram's bucket.
TARGET_LABELS = {"namespace", "pod", "service", "endpoint", "job", "instance", "container", "le"}


def _metrics_read() -> dict[str, set[str]]:
    """LiteLLM's metrics (as LiteLLM names them: no _total/_bucket suffix) that the front door's
    dashboard and the autoscaler's wake-up query read, each with the labels they read of it."""
    from components.serving.autoscaling import ScaledServer, demand_query
    from components.platform.monitoring import DASHBOARDS_DIR

    server = ScaledServer(name="tinyllama", kind="Deployment", runtime="llama-cpp",
                          autoscaling=None)
    queries = [demand_query(server, "models", "front-door")]
    for path in DASHBOARDS_DIR.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            queries += [t["expr"] + " " + t.get("legendFormat", "") for t in panel.get("targets", [])]
    read: dict[str, set[str]] = {}
    for query in queries:
        metrics = re.findall(r"\b(litellm_[a-z_]+?)(?:_total|_bucket|_sum|_count)?\b", query)
        labels = {label for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query)
                  for label in re.split(r"\s*,\s*", group.strip()) if label}
        labels |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", query))
        for metric in metrics:
            read.setdefault(metric, set()).update(labels - TARGET_LABELS)
        # Each metric's own matchers (the wake-up query also selects other series).
        for metric, matchers in re.findall(r"\b(litellm_[a-z_]+?)(?:_total|_bucket|_sum|_count)?\{([^}]*)\}", query):
            read[metric] |= set(re.findall(r"(\w+)\s*!?[=~]", matchers)) - TARGET_LABELS
    return read


def test_the_metrics_keep_only_the_labels_the_dashboard_and_the_autoscaler_read(recorded):
    settings = rendered_config(recorded)["litellm_settings"]
    assert settings["callbacks"] == ["prometheus"]
    configured = {m: set(group["include_labels"]) for group in settings["prometheus_metrics_config"]
                  for m in group["metrics"]}
    read = _metrics_read()
    assert "litellm_proxy_total_requests_metric" in read and read["litellm_proxy_total_requests_metric"]
    # Every metric read is kept with every label read of it...
    assert set(configured) == set(read)
    for metric, labels in read.items():
        assert labels <= configured[metric], metric
        # ...and nothing else: no caller's address, User-Agent, key hash or end user. A metric
        # read by `le` alone keeps the model (LiteLLM bounds it): an empty list keeps them all.
        assert configured[metric] <= labels | {"requested_model"} and configured[metric], metric


def test_the_ui_key_is_let_in_by_the_custom_auth_shipped_beside_the_config(recorded):
    general = rendered_config(recorded)["general_settings"]
    assert general["custom_auth"] == "front_door_auth.user_api_key_auth"
    # "auto": keys the function does not know go on to LiteLLM's auth; common checks still run.
    assert general["custom_auth_settings"] == {"mode": "auto"}
    assert general["custom_auth_run_common_checks"] is True
    data = recorded.one(CONFIG_MAP, "front-door-config").inputs["data"]
    assert data["front_door_auth.py"] == (ROOT / "components" / "edge" / "files" / "front_door_auth.py").read_text()
    env = {e["name"]: e for e in proxy_container(recorded)["env"]}
    ref = env["LITELLM_UI_KEY"]["valueFrom"]["secretKeyRef"]
    secret = recorded.one(SECRET, "front-door-keys")
    assert ref == {"name": secret.inputs["metadata"]["name"], "key": "LITELLM_UI_KEY"}
    keys = harness.reveal(secret.inputs["stringData"])
    assert keys["LITELLM_UI_KEY"].startswith("sk-") and keys["LITELLM_UI_KEY"] != CLIENT_KEY
    assert "uiApiKey" in recorded.secret_outputs
    assert recorded.outputs["uiApiKey"] == keys["LITELLM_UI_KEY"]


def test_the_ui_key_is_taken_from_the_ui_identity_the_mesh_lets_in(recorded):
    env = {e["name"]: e for e in proxy_container(recorded)["env"]}
    assert env["LITELLM_UI_PEER"]["value"] == UI_ID
    # The same workload the front door's AuthorizationPolicy admits, and the UI's pods run as.
    policy = next(p for p in recorded.of_type("kubernetes:security.istio.io/v1:AuthorizationPolicy")
                  if p.inputs["metadata"]["namespace"] == "front-door" and p.inputs["spec"]["action"] == "ALLOW")
    principals = {pr for rule in policy.inputs["spec"]["rules"] for src in rule.get("from", [])
                  for pr in src["source"].get("principals", [])}
    assert UI_ID.removeprefix("spiffe://") in principals
    # ...and whose pods, as the UI's chart renders them, run under that service account.
    assert UI_ID == "spiffe://" + ui_principal(recorded)


def test_no_key_in_any_config_map(recorded):
    keys = harness.reveal(recorded.one(SECRET, "front-door-keys").inputs["stringData"])
    assert set(keys) >= {front_door.MASTER_KEY_ENV, front_door.UI_KEY_ENV, front_door.BACKEND_KEY_ENV}
    for cm in recorded.of_type(CONFIG_MAP):
        text = json.dumps(harness.reveal(cm.inputs.get("data") or {}))
        for name, key in keys.items():
            assert key not in text, f"{name} in ConfigMap {cm.name}"


def test_an_open_api_is_said_so_or_the_proxy_would_not_start():
    rec = harness.run("local", {"llm-platform:security": {"apiAuth": False}})
    cfg = rendered_config(rec)
    # LiteLLM refuses to start with no master key unless this is set.
    assert cfg["general_settings"] == {"dangerously_permit_weak_or_unset_master_key": True}
    assert all(m["litellm_params"]["api_key"] == front_door.NO_KEY for m in cfg["model_list"])
    assert not rec.of_type(SECRET) or not any(r.name == "front-door-keys" for r in rec.of_type(SECRET))


@pytest.mark.parametrize("stack, replicas", [("local", 1), ("eks", 2), ("gke", 2)])
def test_never_a_single_front_door_where_the_cluster_holds_two(stack, replicas):
    rec = harness.run(stack)
    spec = rec.one(DEPLOYMENT, "front-door-deployment").inputs["spec"]
    assert spec["replicas"] == replicas
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdbs = [r for r in rec.of_type("kubernetes:policy/v1:PodDisruptionBudget") if r.name == "front-door-pdb"]
    assert len(pdbs) == (replicas > 1)


def test_image_is_the_release_the_tests_run(recorded):
    pinned = (ROOT / "requirements-litellm.txt").read_text()
    version = re.search(r"litellm\[proxy\]==(\S+)", pinned).group(1)
    assert version == front_door.LITELLM_VERSION
    assert proxy_container(recorded)["image"] == f"ghcr.io/berriai/litellm-non_root:v{version}"
