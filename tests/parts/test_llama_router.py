"""llama.cpp's router mode for real: one llama-server started with exactly the args and presets
the program renders (model paths, key file and port mapped to local ones) serves every model,
loading on demand and unloading beyond modelsMax, behind the real front door."""

from __future__ import annotations

import configparser
import http.client
import json
import re
import subprocess
import threading
from urllib.parse import urlparse

import pytest
import yaml

from components.edge import front_door
from components.serving import llama_router
from components.serving.runtimes import API_KEYS_FILE, API_KEYS_MOUNT
from tests.parts.test_llama_server import LONG_REPLY_TOKENS
from tests.program.test_front_door import CLIENT_KEY, proxy_container, write_config_dir
from tests.parts.test_front_door import LITELLM, _chat, stop, _free_port, _request, _wait_ready
from tests.shared import LLAMA_SERVER, TINY_MODEL
from tools import mock_engine as harness

MODELS = [
    {"name": "tinyllama", "file": "tinyllama-1.1b-chat-v1.0.Q8_0.gguf", "ctxSize": 2048},
    {"name": "qwen", "file": "qwen2.5-0.5b-instruct-q8_0.gguf", "ctxSize": 1024},
    {"name": "phi", "file": "phi-3-mini-4k-instruct-q4.gguf", "ctxSize": 1024},
]
OVERRIDES = {
    "llm-platform:models": MODELS,
    "llm-platform:llamaRouter": {"enabled": True, "modelsMax": 1},
    "llm-platform:apiKey": CLIENT_KEY,
}
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


@pytest.fixture(scope="module")
def recorded():
    return harness.run("local", OVERRIDES, secrets=("llm-platform:apiKey",))


def router_container(rec) -> dict:
    return rec.one(DEPLOYMENT, "llama-router-deployment").inputs["spec"]["template"]["spec"]["containers"][0]


def test_one_server_for_every_model_and_the_front_door_routes_to_it(recorded):
    deployments = {r.name for r in recorded.of_type(DEPLOYMENT)}
    assert deployments == {"llama-router-deployment", "front-door-deployment"}
    c = router_container(recorded)
    assert c["resources"]["limits"]["squat.ai/dri"] == "1"
    assert "-m" not in c["args"] and c["args"][c["args"].index("--models-max") + 1] == "1"
    # Threads from the CPU limit (passed on to every model instance the router starts).
    assert c["args"][c["args"].index("--threads") + 1] == c["resources"]["limits"]["cpu"]
    template = recorded.one(DEPLOYMENT, "llama-router-deployment").inputs["spec"]["template"]
    # The key file's digest rolls the router when the front door's key changes.
    assert template["metadata"]["annotations"]["llm-platform/api-keys-digest"]
    pause, bound = c["lifecycle"]["preStop"]["exec"]["command"][4:8:3]
    assert int(pause) + int(bound) < template["spec"]["terminationGracePeriodSeconds"]
    text = recorded.one("kubernetes:core/v1:ConfigMap", "llama-router-presets").inputs["data"][
        llama_router.PRESETS_FILE]
    # llama.cpp's preset files open with a global `version` line before any section.
    assert text.startswith("version = 1\n")
    presets = configparser.ConfigParser()
    presets.read_string(text.removeprefix("version = 1\n"))
    assert [s for s in presets.sections() if s != "*"] == [m["name"] for m in MODELS]
    assert presets["qwen"]["model"] == "/mnt/models/qwen2.5-0.5b-instruct-q8_0.gguf" and presets["qwen"]["c"] == "1024"
    config = yaml.safe_load(recorded.one("kubernetes:core/v1:ConfigMap", "front-door-config").inputs["data"][
        front_door.CONFIG_FILE])
    assert {m["litellm_params"]["api_base"] for m in config["model_list"]} == {
        "http://llama-router.models.svc.cluster.local:8080/v1"}
    # Every GGUF file is still fetched into the host folder before the server starts.
    fetches = [r for r in recorded.of_type("command:local:Command") if r.name.endswith("-model-file")]
    assert len(fetches) == len(MODELS)
    assert {f.urn for f in fetches} <= set(recorded.one(DEPLOYMENT, "llama-router-deployment").dependencies)


def test_router_mode_is_refused_where_models_are_not_gguf():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:llamaRouter": {"enabled": True}})
    assert "llm-platform:llamaRouter.enabled: router mode serves GGUF files" in str(info.value.error)


def _start_router(recorded, tmp) -> tuple[subprocess.Popen, int]:
    """The router as rendered: its presets (each model's file mapped to the test model), key
    file and args, on a local port."""
    missing = [str(p) for p in (LLAMA_SERVER, TINY_MODEL) if not p.exists()]
    if missing:
        pytest.skip(f"real router test needs {', '.join(missing)}")
    (tmp / "keys").write_text(harness.reveal(recorded.one("kubernetes:core/v1:Secret", "llama-router-api-keys")
                                             .inputs["stringData"])["keys"] + "\n")
    presets = recorded.one("kubernetes:core/v1:ConfigMap", "llama-router-presets").inputs["data"][
        llama_router.PRESETS_FILE]
    for m in MODELS:
        presets = presets.replace(f"/mnt/models/{m['file']}", str(TINY_MODEL))
    (tmp / "presets.ini").write_text(presets)
    router_port = _free_port()
    args = router_container(recorded)["args"]
    mapped = {"--host": "127.0.0.1", "--port": str(router_port), "--models-preset": str(tmp / "presets.ini"),
              "--api-key-file": str(tmp / "keys")}
    argv = [mapped.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    # One thread: a shared test machine, not the pod's CPU limit.
    argv = [("1" if args[i - 1] == "--threads" else a) if i else a for i, a in enumerate(argv)]
    proc = subprocess.Popen([str(LLAMA_SERVER), *argv], stdout=(tmp / "router.log").open("w"), stderr=subprocess.STDOUT)
    return proc, router_port


@pytest.fixture(scope="module")
def running(recorded, tmp_path_factory):
    if not LITELLM.exists():
        pytest.skip(f"real router test needs {LITELLM} (`make setup` builds .venv-litellm)")
    tmp = tmp_path_factory.mktemp("llama-router")
    keys = harness.reveal(recorded.one("kubernetes:core/v1:Secret", "front-door-keys").inputs["stringData"])
    router, router_port = _start_router(recorded, tmp)
    procs = [router]
    try:
        cfg = yaml.safe_load(recorded.one("kubernetes:core/v1:ConfigMap", "front-door-config").inputs["data"][
            front_door.CONFIG_FILE])
        for entry in cfg["model_list"]:
            base = urlparse(entry["litellm_params"]["api_base"])
            entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{router_port}{base.path}"
        config = write_config_dir(recorded, tmp, cfg)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp)}
        for e in proxy_container(recorded)["env"]:
            env[e["name"]] = e["value"] if "value" in e else keys[e["valueFrom"]["secretKeyRef"]["key"]]
        proxy_port = _free_port()
        procs.append(subprocess.Popen(
            [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(proxy_port)],
            stdout=(tmp / "litellm.log").open("w"), stderr=subprocess.STDOUT, env=env, cwd=tmp))
        _wait_ready(router_port, "/health", procs[0], tmp / "router.log", 30)
        _wait_ready(proxy_port, front_door.READINESS_PATH, procs[1], tmp / "litellm.log", 180)
        yield router_port, proxy_port, keys[front_door.BACKEND_KEY_ENV], tmp / "keys"
    finally:
        stop(procs, 15)


def _loaded(router_port: int, key: str) -> set[str]:
    status, body = _request(router_port, "GET", "/models", key)
    assert status == 200, body
    return {m["id"] for m in json.loads(body)["data"] if m["status"]["value"] == "loaded"}


def test_every_model_answers_through_the_front_door_one_loaded_at_a_time(running):
    router_port, proxy_port, backend_key, _ = running
    assert _loaded(router_port, backend_key) == set()  # nothing loads before it is asked for
    status, body = _request(proxy_port, "GET", "/v1/models", CLIENT_KEY)
    assert status == 200 and {m["id"] for m in json.loads(body)["data"]} == {m["name"] for m in MODELS}
    for m in MODELS:
        status, body = _request(proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat(m["name"]), timeout=120)
        assert status == 200, body
        assert json.loads(body)["model"] == m["name"]
        # modelsMax 1: the model just used is the one held; the others were unloaded.
        assert _loaded(router_port, backend_key) == {m["name"]}
    # The router takes the front door's key and the client key (the ingress passes it on with the
    # requests it routes straight), no other.
    assert _request(router_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("qwen"), timeout=120)[0] == 200
    assert _request(router_port, "POST", "/v1/chat/completions", CLIENT_KEY + "x", _chat("qwen"))[0] == 401


def _in_flight(router_port: int, key: str, model: str) -> int:
    """Requests the router's model is processing, by its own /metrics (never loading it)."""
    status, body = _request(router_port, "GET", f"/metrics?model={model}&autoload=false", key)
    assert status == 200, body
    (value,) = re.findall(r"^llamacpp:requests_processing (\S+)$", body.decode(), re.M)
    return int(float(value))


def test_pre_stop_waits_for_the_generation_in_flight_and_loads_nothing(running, recorded):
    """The router's preStop (as rendered, pause 0) returns only once the stream in flight ended,
    and checking the idle models does not load them (which, beyond modelsMax, would unload the
    busy one and cut its stream). Judged by the router itself, not by the clock: the generation
    is in flight when the hook starts, and the moment the hook returns the router has none left
    (a hook that returned early would find the long generation still running); a busier machine
    only makes both take longer."""
    router_port, _, backend_key, key_file = running
    command = list(router_container(recorded)["lifecycle"]["preStop"]["exec"]["command"])
    assert command[:2] == ["sh", "-c"] and command[6] == f"{API_KEYS_MOUNT}/{API_KEYS_FILE}"
    assert command[8:] == [m["name"] for m in MODELS]
    command[4:7] = ["0", str(router_port), str(key_file)]
    conn = http.client.HTTPConnection("127.0.0.1", router_port, timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(_chat(
        "tinyllama", stream=True, max_tokens=LONG_REPLY_TOKENS) | {"ignore_eos": True}),
        {"Authorization": f"Bearer {backend_key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    for _ in range(5):  # generating, not just accepted
        assert resp.readline().startswith(b"data: ") and resp.readline() == b"\n"
    events: list[bytes] = []
    reader = threading.Thread(target=lambda: events.extend(
        line.strip() for line in iter(resp.readline, b"") if line.startswith(b"data: ")), daemon=True)
    reader.start()
    assert _in_flight(router_port, backend_key, "tinyllama") == 1, "the stream ended before the hook could wait"
    hook = subprocess.run(command, capture_output=True, timeout=120)
    left = _in_flight(router_port, backend_key, "tinyllama")
    assert hook.returncode == 0, hook.stdout + hook.stderr
    assert left == 0, "the hook returned while the generation was still running"
    reader.join(timeout=60)
    conn.close()
    assert events and events[-1] == b"data: [DONE]"
    assert _loaded(router_port, backend_key) == {"tinyllama"}


@pytest.fixture(scope="module")
def router_alone(recorded, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama-router-alone")
    proc, port = _start_router(recorded, tmp)
    try:
        _wait_ready(port, "/health", proc, tmp / "router.log", 30)
        yield port
    finally:
        stop([proc], 15)


def test_prometheus_scrapes_loaded_models_and_never_loads_one(recorded, router_alone):
    """Each endpoint of the router's ServiceMonitor, asked as Prometheus asks it (path, params,
    the key from the Secret it names): a loaded model answers with the series the llama.cpp
    dashboard queries; an unloaded one fails and stays unloaded (modelsMax 1: loading it would
    evict the model in use)."""
    from components.platform.monitoring import DASHBOARDS_DIR

    port = router_alone
    monitor = harness.reveal(recorded.one("kubernetes:monitoring.coreos.com/v1:ServiceMonitor",
                                          "monitoring-llama-router").inputs["spec"])
    (secret,) = [r for r in recorded.of_type("kubernetes:core/v1:Secret")
                 if r.inputs["metadata"]["name"] == monitor["endpoints"][0]["authorization"]["credentials"]["name"]]
    key = harness.reveal(secret.inputs["stringData"])[monitor["endpoints"][0]["authorization"]["credentials"]["key"]]

    def scrape(ep) -> tuple[int, bytes]:
        query = "&".join(f"{k}={v}" for k, vs in ep["params"].items() for v in vs)
        return _request(port, "GET", f"{ep['path']}?{query}", key)

    used = set(re.findall(r"llamacpp:[a-z_]+", (DASHBOARDS_DIR / "llamacpp.json").read_text()))
    first, *others = monitor["endpoints"]
    assert [scrape(ep)[0] for ep in monitor["endpoints"]] == [400] * len(MODELS)
    assert _loaded(port, key) == set()
    status, body = _request(port, "POST", "/v1/chat/completions", key, _chat(first["params"]["model"][0]), timeout=120)
    assert status == 200, body
    status, text = scrape(first)
    served = {line.split()[0] for line in text.decode().splitlines() if line and not line.startswith("#")}
    assert status == 200 and used and used <= served, used - served
    assert [scrape(ep)[0] for ep in others] == [400] * len(others)
    assert _loaded(port, key) == {first["params"]["model"][0]}
