"""Who may call what: on every stack `/v1` needs a key that reaches the servers only through
Kubernetes Secrets, and no key is ever written in plain text. (Istio's schemas judge the TLS
objects in tests/parts/test_security.py.)"""

import dataclasses
import hashlib
import hmac
import json

import pytest
import yaml

from components.serving.runtimes import API_KEY_ENTRIES
from tests.conftest import need_charts
# Who may connect to whom, judged as the CNI and Istio would (empty lists, wildcards, DENY first).
from tests.admission import egress_allows, mesh_admits, network_admits
# What the ingress answers, read from the Gateway API objects as istiod programs the gateway.
from tests import ingress_routes as ingress
from tools import mock_engine as harness

CLIENT_KEY = "sk-client-key-0123456789abcdef"
SECRET_OVERRIDES = {"llm-platform:apiKey": CLIENT_KEY}
SECRETS = tuple(SECRET_OVERRIDES)


@pytest.fixture(scope="module", params=harness.STACKS)
def keyed(request):
    return harness.run(request.param, SECRET_OVERRIDES, secrets=SECRETS)


def model_server(rec):
    """The model server's workload (a Deployment, or a StatefulSet where it caches weights),
    found by its label: the front door's Deployment is another."""
    return rec.model_servers()[0]


def container(rec):
    return model_server(rec).inputs["spec"]["template"]["spec"]["containers"][0]


def plain_text(value) -> str:
    """Everything in a recorded input that is not a Pulumi secret."""
    if harness.is_secret(value):
        return ""
    if isinstance(value, dict):
        return " ".join(f"{k} {plain_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(plain_text(v) for v in value)
    return json.dumps(value)


def backend_key(rec) -> str:
    """The key the front door presents to the model servers."""
    return harness.reveal(rec.one("kubernetes:core/v1:Secret", "front-door-keys").inputs["stringData"])[
        "BACKEND_API_KEY"]


def ui_key(rec) -> str:
    """Open WebUI's key, as the front door holds it."""
    return harness.reveal(rec.one("kubernetes:core/v1:Secret", "front-door-keys").inputs["stringData"])[
        "LITELLM_UI_KEY"]


def test_keys_never_appear_in_plain_text(keyed):
    backend, ui = backend_key(keyed), ui_key(keyed)
    for r in keyed.registrations:
        text = plain_text(r.inputs)
        assert CLIENT_KEY not in text and backend not in text and ui not in text, f"{r.type} {r.name}"
    assert "apiKey" in keyed.secret_outputs and keyed.outputs["apiKey"] == CLIENT_KEY
    assert "uiApiKey" in keyed.secret_outputs and keyed.outputs["uiApiKey"] == ui


def test_server_requires_a_key_read_from_a_secret(keyed):
    """Both keys reach the server as a file mounted from the Secret: no key in its args or env,
    so none in /proc/*/cmdline, the pod spec or vLLM's argument log."""
    c = container(keyed)
    secret = next(r for r in keyed.of_type("kubernetes:core/v1:Secret") if r.name.endswith("-api-keys"))
    data = harness.reveal(secret.inputs["stringData"])
    # The servers take the front door's key and the client key (the master key), which the ingress
    # passes on with the requests it routes to them straight; never the UI's.
    backend = backend_key(keyed)
    assert backend != CLIENT_KEY
    assert data["front-door"] == backend and data["client"] == CLIENT_KEY
    flag = "--api-key-file" if "--api-key-file" in c["args"] else "--config"
    path = c["args"][c["args"].index(flag) + 1]
    entry = path.rsplit("/", 1)[1]
    if flag == "--api-key-file":  # llama.cpp: one key a line; the last is Prometheus's for /metrics
        assert data[entry].splitlines() == [backend, CLIENT_KEY, data["metrics"]]
        assert data["metrics"] not in (backend, CLIENT_KEY, ui_key(keyed))
    else:  # vLLM: its YAML config file, read as if the flags were given
        assert yaml.safe_load(data[entry]) == {"api-key": [backend, CLIENT_KEY]}
        assert "metrics" not in data  # its /metrics asks no key
        assert entry.endswith(".yaml") and "--api-key" not in c["args"]
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in model_server(keyed).inputs["spec"]["template"]
                  ["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"] == {"secretName": secret.inputs["metadata"]["name"],
                                "items": [{"key": entry, "path": entry}]}
    assert not [e for e in c.get("env") or [] if "KEY" in e["name"]]


def _template(rec) -> dict:
    return model_server(rec).inputs["spec"]["template"]


def _salt(rec, owner: str) -> str:
    """The digest salt the mock engine hands the component `owner` (kept in state on a real stack)."""
    name = f"{owner}-keys-digest-salt"
    assert rec.one("random:index/randomPassword:RandomPassword", name)
    return hashlib.sha256(name.encode()).hexdigest()[:32]


@pytest.mark.parametrize("stack", harness.STACKS)
def test_a_rotated_key_rolls_the_pods_that_hold_it(stack):
    """Servers and the front door read their keys only at start, so their pod templates carry a
    keyed digest of the keys they hold: the client key rolls the front door and the servers (the
    ingress passes it on to them), never the UI, which holds a key of its own."""
    def digests(client_key: str) -> tuple[str, str, str]:
        rec = harness.run(stack, {**SECRET_OVERRIDES, "llm-platform:apiKey": client_key}, secrets=SECRETS)
        server = _template(rec)["metadata"]["annotations"]["llm-platform/api-keys-digest"]
        door = rec.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"][
            "metadata"]["annotations"]["llm-platform/config-checksum"]
        ui = rec.one("kubernetes:argoproj.io/v1alpha1:Application").inputs["spec"]["source"]["helm"][
            "valuesObject"]["podAnnotations"]["llm-platform/api-keys-digest"]
        backend = backend_key(rec)
        # Readable in diffs, yet no key in it or derivable from it without the salt in state.
        for value in (server, door):
            assert not harness.is_secret(value) and client_key not in value and backend not in value
        # Over every key the server accepts: the front door's, the client's, and on llama.cpp
        # Prometheus's.
        data = harness.reveal(next(r for r in rec.of_type("kubernetes:core/v1:Secret")
                                   if r.name.endswith("-api-keys")).inputs["stringData"])
        held = "\n".join(data[e] for e in API_KEY_ENTRIES if e in data)
        assert data["front-door"] == backend
        assert server == hmac.new(_salt(rec, model_server(rec).name.rsplit("-", 1)[0]).encode(),
                                  held.encode(), hashlib.sha256).hexdigest()
        assert server != hashlib.sha256(held.encode()).hexdigest()
        # ApiKeys' own salt ("api-keys-digest-salt").
        assert ui == hmac.new(_salt(rec, "api").encode(), ui_key(rec).encode(), hashlib.sha256).hexdigest()
        return server, door, ui

    server, door, ui = digests(CLIENT_KEY)
    assert digests(CLIENT_KEY) == (server, door, ui)
    rotated_server, rotated_door, rotated_ui = digests(CLIENT_KEY + "-rotated")
    # The UI holds its own key: a new client key leaves it alone.
    assert rotated_door != door and rotated_server != server and rotated_ui == ui


def test_ui_gets_its_own_front_door_key_from_a_secret(keyed):
    app = keyed.one("kubernetes:argoproj.io/v1alpha1:Application").inputs
    env = app["spec"]["source"]["helm"]["valuesObject"]["extraEnvVars"]
    assert {"name": "OPENAI_API_KEYS",
            "valueFrom": {"secretKeyRef": {"name": "open-webui-openai", "key": "OPENAI_API_KEYS"}}} in env
    secret = keyed.one("kubernetes:core/v1:Secret", "gitops-secret-open-webui-openai")
    assert secret.inputs["metadata"]["namespace"] == app["spec"]["destination"]["namespace"]
    urls = app["spec"]["source"]["helm"]["valuesObject"]["openaiBaseApiUrls"]
    assert len(urls) == 1
    # The key the front door takes for inference alone (its custom auth), not the master key.
    assert harness.reveal(secret.inputs["stringData"])["OPENAI_API_KEYS"] == ui_key(keyed) != CLIENT_KEY
    assert secret.urn in keyed.one("kubernetes:argoproj.io/v1alpha1:Application").dependencies


def test_the_master_key_is_nowhere_in_the_ui(keyed):
    """Not in Open WebUI's Application nor in any Secret Argo CD delivers with it, in any form."""
    app = keyed.one("kubernetes:argoproj.io/v1alpha1:Application")
    namespace = app.inputs["spec"]["destination"]["namespace"]
    objects = [app] + [r for r in keyed.of_type("kubernetes:core/v1:Secret")
                       if r.inputs["metadata"]["namespace"] == namespace]
    assert {r.name for r in objects} >= {"gitops-secret-open-webui-openai", "gitops-secret-open-webui-admin"}
    for r in objects:
        assert CLIENT_KEY not in json.dumps(harness.reveal(r.inputs), default=str), r.name


def test_keys_are_generated_when_not_configured():
    rec = harness.run("local")
    generated = [r for r in rec.of_type("random:index/randomPassword:RandomPassword")
                 if r.name in ("api-keys-client", "api-keys-ui", "api-keys-backend")]
    assert sorted(r.name for r in generated) == ["api-keys-backend", "api-keys-client", "api-keys-ui"]
    assert all(r.inputs["length"] >= 32 and r.inputs["special"] is False for r in generated)
    assert "apiKey" in rec.secret_outputs
    # LiteLLM takes a master key only with this prefix.
    assert rec.outputs["apiKey"].startswith("sk-") and len(rec.outputs["apiKey"]) >= 40
    assert "uiApiKey" in rec.secret_outputs
    assert rec.outputs["uiApiKey"].startswith("sk-") and len(rec.outputs["uiApiKey"]) >= 40


def test_a_configured_client_key_must_suit_the_front_door():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:apiKey": "client-key-0123456789abcdef"}, secrets=("llm-platform:apiKey",))
    message = str(info.value.error)
    assert "llm-platform:apiKey: expected a key starting with 'sk-'" in message
    assert "client-key-0123456789abcdef" not in message


def test_the_ui_key_setting_is_refused_with_what_happens_instead():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {**SECRET_OVERRIDES, "llm-platform:uiApiKey": "ui-key-0123456789abcdef"},
                    secrets=(*SECRETS, "llm-platform:uiApiKey"))
    message = str(info.value.error)
    assert message.startswith("Pulumi.local.yaml: llm-platform:uiApiKey: no longer a setting; ")
    assert "front door" in message and "ui-key-0123456789abcdef" not in message


def test_plain_text_api_key_is_refused():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:apiKey": CLIENT_KEY})
    assert "llm-platform:apiKey: expected a secret" in str(info.value.error)


def test_health_and_metrics_are_not_behind_the_gateway_key(keyed):
    c = container(keyed)
    # Probes hit /health, which both servers leave open.
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    # /metrics is only reachable in-cluster: no rule of the gateway reaches it. Every rule to the
    # API matches under /v1 alone; the rest of the paths go to the UI.
    routes = ingress.rules(keyed)
    api_paths = {(m["path"]["type"], m["path"]["value"]) for name, r in routes.items() if name not in ("ui", "grafana")
                 for m in r["matches"]}
    assert api_paths == {("PathPrefix", "/v1")}
    for path in ("/metrics", "/health", "/v1beta/metrics"):
        assert ingress.answer(keyed, 80, "anything", path) == "open-webui.open-webui.svc.cluster.local", path
    # /grafana goes to Grafana alone (its own login), never to a model or the front door.
    assert [(b["name"], b["namespace"]) for b in routes["grafana"]["backendRefs"]] == [("kps-grafana", "monitoring")]
    assert ingress.answer(keyed, 80, "anything", "/grafana/login") == "kps-grafana.monitoring.svc.cluster.local"


def test_laptop_can_opt_out_of_api_keys():
    rec = harness.run("local", {"llm-platform:security": {"apiAuth": False}})
    c = container(rec)
    assert "--api-key-file" not in c["args"] and "--api-key" not in c["args"]
    assert not [r for r in rec.of_type("random:index/randomPassword:RandomPassword") if r.name.startswith("api-keys")]
    assert "apiKey" not in rec.outputs


# --- mesh mTLS, authorization and network policies ---------------------------------------

NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
AUTHZ = "kubernetes:security.istio.io/v1:AuthorizationPolicy"
PEERAUTH = "kubernetes:security.istio.io/v1:PeerAuthentication"
INGRESS = ("istio-ingress", "cluster.local/ns/istio-ingress/sa/istio-ingress")
UI = ("open-webui", "cluster.local/ns/open-webui/sa/open-webui")
FRONT_DOOR = ("front-door", "cluster.local/ns/front-door/sa/litellm")


def in_namespace(rec, type_, ns):
    return [r.inputs for r in rec.of_type(type_) if r.inputs["metadata"]["namespace"] == ns]


@pytest.fixture(scope="module", params=harness.STACKS)
def guarded(request):
    return harness.run(request.param)


def test_strict_mtls_in_model_front_door_and_ui_namespaces(guarded):
    for ns in ("models", "front-door", "open-webui"):
        (peer,) = in_namespace(guarded, PEERAUTH, ns)
        assert peer["spec"] == {"mtls": {"mode": "STRICT"}}


@pytest.mark.parametrize("source, admitted", [
    (FRONT_DOOR, True),
    # It streams the tokens of the models it routes to straight.
    (INGRESS, True),
    (UI, False),
    (("default", "cluster.local/ns/default/sa/default"), False),
    (("argocd", "cluster.local/ns/argocd/sa/argocd-server"), False),
    (("models", "cluster.local/ns/models/sa/default"), False),
])
def test_only_the_front_door_and_the_ingress_reach_the_model_servers(guarded, source, admitted):
    ns, principal = source
    assert network_admits(guarded, ns, "models") is admitted
    assert mesh_admits(guarded, principal, "models") is admitted


@pytest.mark.parametrize("source, admitted", [
    (INGRESS, True),
    (UI, True),
    (("default", "cluster.local/ns/default/sa/default"), False),
    (("models", "cluster.local/ns/models/sa/default"), False),
])
def test_only_the_gateway_and_ui_reach_the_front_door(guarded, source, admitted):
    assert network_admits(guarded, source[0], "front-door") is admitted
    assert mesh_admits(guarded, source[1], "front-door") is admitted


def test_the_front_door_runs_as_the_account_the_policy_names(guarded):
    pod = guarded.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"]["spec"]
    account = guarded.one("kubernetes:core/v1:ServiceAccount", "front-door-service-account").inputs["metadata"]
    assert f"cluster.local/ns/{account['namespace']}/sa/{pod['serviceAccountName']}" == FRONT_DOOR[1]


def test_model_namespace_denies_by_default_and_allows_only_what_it_needs(guarded):
    (deny,) = [p for p in in_namespace(guarded, NETPOL, "models") if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert egress_problems(guarded) == []


# Somewhere on the internet (a documentation address), the cloud's metadata endpoint.
PUBLIC, METADATA = "203.0.113.7", "169.254.169.254"


def egress_problems(rec, ns: str = "models") -> list[str]:
    """Where the model servers may open connections, probed as the CNI would judge them: DNS,
    istiod's xDS, and on the clouds HTTPS to the internet (the model hub); nothing else."""
    from tests.admission import Pod

    dns, istiod = Pod("kube-system", {"k8s-app": "kube-dns"}), Pod("istio-system", {"app": "istiod"})
    downloads = rec.stack in ("eks", "gke")
    expected = [
        (dns, 53, "UDP", True), (dns, 53, "TCP", True), (istiod, 15012, "TCP", True),
        (PUBLIC, 443, "TCP", downloads),
        (PUBLIC, 80, "TCP", False), (METADATA, 80, "TCP", False), (METADATA, 443, "TCP", False),
        (Pod("default"), 443, "TCP", False), (Pod("front-door"), 4000, "TCP", False),
        (Pod("kube-system"), 443, "TCP", False), (istiod, 443, "TCP", False),
    ]
    return [f"{ns} -> {dest}:{port}/{proto}: {'refused' if want else 'allowed'}"
            for dest, port, proto, want in expected if egress_allows(rec, ns, dest, port, proto) is not want]


def test_laptop_can_opt_out_of_mesh_and_network_policies():
    rec = harness.run("local", {"llm-platform:security": {"mtls": False, "networkPolicies": False}})
    assert not rec.of_type(PEERAUTH) and not rec.of_type(NETPOL)
    # What stays: the rule that keeps the front door's metrics to their scraper.
    assert [(p["metadata"]["namespace"], p["spec"]["action"]) for p in map(lambda r: r.inputs, rec.of_type(AUTHZ))] == [
        ("front-door", "DENY")]


# --- the front door's /metrics/ (user e-mails, team names, key hashes) is its scraper's alone ------

PROMETHEUS = ("monitoring", "cluster.local/ns/monitoring/sa/kps-prometheus")


def mesh_verdict(rec, dest_ns: str, principal, method: str, path: str) -> bool:
    """Whether the destination's sidecar lets the request in: STRICT refuses a caller without
    mTLS (principal None); then the AuthorizationPolicies, judged as Istio does (DENY first,
    wildcards, not-fields), with no principal ("") for a caller without mTLS."""
    if principal is None and any(p["spec"]["mtls"]["mode"] == "STRICT" for p in in_namespace(rec, PEERAUTH, dest_ns)):
        return False
    return mesh_admits(rec, principal or "", dest_ns, path=path, method=method)


@pytest.fixture(scope="module", params=[True, False], ids=["mtls", "no-mtls"])
def metrics_guarded(request):
    return harness.run("local", {"llm-platform:security": {"mtls": request.param}})


@pytest.mark.parametrize("caller, path, admitted", [
    # Prometheus scrapes /metrics/ with its mesh identity under STRICT mTLS, in plain HTTP without.
    ("prometheus", "/metrics/", True),
    # Every sidecar speaks mTLS to another (auto mTLS) whatever the mode: these carry identities.
    *((caller, path, False) for caller in ("ui", "ingress", "model-namespace")
      for path in ("/metrics/", "/metrics", "/metrics/x")),
])
def test_only_the_scraper_reads_the_front_door_metrics_with_or_without_mtls(metrics_guarded, caller, path, admitted):
    strict = bool(in_namespace(metrics_guarded, PEERAUTH, "front-door"))
    principal = {"prometheus": PROMETHEUS[1] if strict else None, "ui": UI[1], "ingress": INGRESS[1],
                 "model-namespace": "cluster.local/ns/models/sa/default"}[caller]
    assert mesh_verdict(metrics_guarded, "front-door", principal, "GET", path) is admitted
    # ...while the UI and the gateway still reach the API.
    if caller in ("ui", "ingress"):
        assert mesh_verdict(metrics_guarded, "front-door", principal, "POST", "/v1/chat/completions")


def test_without_mtls_pods_without_a_sidecar_are_kept_out_by_the_network_policies(metrics_guarded):
    """The one caller the mesh cannot tell from Prometheus without mTLS: a pod without a sidecar,
    in plain HTTP. The front door's NetworkPolicies admit only the gateway's and the UI's
    namespaces (both injected) and Prometheus's pods."""
    for ns in ("default", "models", "argocd", "kube-system"):
        assert not network_admits(metrics_guarded, ns, "front-door"), ns


def test_nothing_reads_the_front_door_metrics_when_nothing_scrapes_them():
    rec = harness.run("local", {"llm-platform:monitoring": {"enabled": False}})
    for principal in (None, PROMETHEUS[1], UI[1], INGRESS[1]):
        assert not mesh_verdict(rec, "front-door", principal, "GET", "/metrics/"), principal
    assert mesh_verdict(rec, "front-door", UI[1], "POST", "/v1/chat/completions")


def with_policy(rec, type_: str, ns: str, name: str, spec: dict):
    """A copy of the recording with one more policy, as the program would register it."""
    kind = type_.rsplit(":", 1)[1]
    api = type_.split(":")[1]
    reg = harness.Registration(
        type=type_, name=f"broken-{name}", urn=f"urn:pulumi:{rec.stack}::llm-platform::{type_}::broken-{name}",
        inputs={"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec},
        parent="", dependencies=[], provider="", custom=True)
    return dataclasses.replace(rec, registrations=[*rec.registrations, reg])


ANY = ("default", "cluster.local/ns/default/sa/default")
# Policies that let anyone in, each written the way the API reads it as "everything".
BROKEN_NETWORK = {
    "an empty ingress rule": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
    "a rule without peers": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 8000}]}]},
    "every namespace": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]},
    "a label every namespace has": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "Exists"}]}}]}]},
    "every address": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
}
BROKEN_MESH = {
    "any principal": ("models", {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["*"]}}]}]}),
    "a principal prefix": ("models", {"rules": [{"from": [{"source": {"principals": ["cluster.local/*"]}}]}]}),
    "any namespace": ("models", {"rules": [{"from": [{"source": {"namespaces": ["*"]}}]}]}),
    "an empty rule": ("models", {"rules": [{}]}),
    "everyone but one": ("models", {"rules": [{"from": [{"source": {"notPrincipals": ["cluster.local/ns/x/sa/y"]}}]}]}),
    "allow-all in the root namespace": ("istio-system", {"action": "ALLOW", "rules": [{}]}),
}


@pytest.mark.parametrize("broken", BROKEN_NETWORK)
def test_the_network_judge_sees_who_a_broken_policy_lets_in(guarded, broken):
    """Any of these beside the program's policies lets every pod reach the model servers, and
    the check of who reaches them says so."""
    assert network_admits(guarded, ANY[0], "models") is False
    rec = with_policy(guarded, NETPOL, "models", "let-everyone-in", BROKEN_NETWORK[broken])
    assert network_admits(rec, ANY[0], "models") is True


@pytest.mark.parametrize("broken", BROKEN_MESH)
def test_the_mesh_judge_sees_who_a_broken_policy_lets_in(guarded, broken):
    assert mesh_admits(guarded, ANY[1], "models") is False
    ns, spec = BROKEN_MESH[broken]
    rec = with_policy(guarded, AUTHZ, ns, "let-everyone-in", spec)
    assert mesh_admits(rec, ANY[1], "models") is True


def test_the_mesh_judge_reads_deny_first_and_allow_nothing(guarded):
    """A DENY that matches refuses even the admitted caller; an ALLOW policy without rules
    admits nothing (and, beside the others, changes nothing)."""
    assert mesh_admits(guarded, FRONT_DOOR[1], "models") is True
    denied = with_policy(guarded, AUTHZ, "models", "deny-front-door",
                         {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["front-door"]}}]}]})
    assert mesh_admits(denied, FRONT_DOOR[1], "models") is False
    nothing = with_policy(guarded, AUTHZ, "models", "allow-nothing", {})
    assert mesh_admits(nothing, FRONT_DOOR[1], "models") is True and mesh_admits(nothing, ANY[1], "models") is False


def test_the_egress_judge_sees_an_egress_rule_that_allows_everything(guarded):
    assert egress_problems(guarded) == []
    rec = with_policy(guarded, NETPOL, "models", "let-everything-out",
                      {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]})
    problems = egress_problems(rec)
    assert any("80" in p for p in problems) and any("169.254.169.254" in p for p in problems), problems


# --- Pod Security ------------------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """What in a pod spec the Kubernetes 'restricted' Pod Security profile refuses."""
    out = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(flag)
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    for c in (pod.get("initContainers") or []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation not false")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot not set")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runs as root")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities not dropped")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds {caps['add']}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name}: hostPort")
    return out


WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:DaemonSet", "kubernetes:apps/v1:StatefulSet")


def test_every_pod_but_the_device_plugin_passes_the_restricted_profile(guarded):
    """The program's own workloads. (The GPU exporter, from NVIDIA's chart: root, SYS_ADMIN and
    the pod-resources socket, nothing more: tests/program/test_gpu_metrics.py.)"""
    checked, exceptions = 0, {}
    for r in guarded.registrations:
        if r.type in WORKLOADS:
            problems = restricted_violations(r.inputs["spec"]["template"]["spec"])
            checked += 1
            if problems:
                exceptions[r.inputs["metadata"]["name"]] = problems
    assert checked >= 1
    assert set(exceptions) <= {"generic-device-plugin"}, exceptions
    if guarded.stack == "local":
        assert "generic-device-plugin: privileged" in exceptions["generic-device-plugin"]


def test_the_checker_refuses_what_the_profile_refuses(guarded):
    pod = json.loads(json.dumps(model_server(guarded).inputs["spec"]["template"]["spec"]))
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    del pod["securityContext"]["seccompProfile"]
    assert len(restricted_violations(pod)) == 3


def test_namespaces_enforce_the_matching_pod_security_level(guarded):
    labels = {r.inputs["metadata"]["name"]: r.inputs["metadata"].get("labels", {})
              for r in guarded.of_type("kubernetes:core/v1:Namespace")}
    assert labels["models"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["open-webui"]["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["open-webui"]["pod-security.kubernetes.io/warn"] == "restricted"


def test_read_only_root_with_writable_scratch(guarded):
    pod = model_server(guarded).inputs["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert {"name": tmp["name"], "emptyDir": {}} in pod["volumes"]


def test_laptop_can_opt_out_of_restricted_pods():
    rec = harness.run("local", {"llm-platform:security": {"restrictedPods": False}})
    pod = model_server(rec).inputs["spec"]["template"]["spec"]
    assert "securityContext" not in pod["containers"][0]
    models = next(r for r in rec.of_type("kubernetes:core/v1:Namespace") if r.inputs["metadata"]["name"] == "models")
    assert models.inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"


# --- TLS at the gateway -------------------------------------------------------------------

HOST = "llm.example.com"


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
def test_cert_manager_issues_the_gateway_certificate(stack_name):
    rec = harness.run(stack_name, {"llm-platform:gateway": {
        "host": HOST, "certManager": {"acmeEmail": "ops@example.com"}}})
    release = rec.one("kubernetes:helm.sh/v3:Release", "gateway-cert-manager")
    assert release.inputs["version"] == "v1.21.1" and release.inputs["values"]["crds"]["enabled"] is True
    issuer = rec.one("kubernetes:cert-manager.io/v1:ClusterIssuer")
    cert = rec.one("kubernetes:cert-manager.io/v1:Certificate")
    assert issuer.inputs["spec"]["acme"]["email"] == "ops@example.com"
    assert cert.inputs["spec"]["dnsNames"] == [HOST]
    assert cert.inputs["spec"]["issuerRef"] == {"name": issuer.inputs["metadata"]["name"], "kind": "ClusterIssuer"}
    assert release.urn in issuer.dependencies and release.urn in cert.dependencies
    https = next(lst for lst in ingress.listeners(rec) if lst["protocol"] == "HTTPS")
    assert https["port"] == 443 and https["hostname"] == HOST
    # A certificate reference without a namespace is the Gateway's own: the Certificate's Secret.
    assert https["tls"] == {"mode": "Terminate", "certificateRefs": [
        {"kind": "Secret", "name": cert.inputs["spec"]["secretName"]}]}
    assert cert.inputs["metadata"]["namespace"] == ingress.gateway(rec)["metadata"]["namespace"]
    assert rec.outputs["apiBaseUrl"] == f"https://{HOST}/v1"


CHALLENGE = "/.well-known/acme-challenge/token123"
# The route istiod derives from cert-manager's challenge Ingress (path type ImplementationSpecific
# becomes an exact match) on the same host and port 80.
SOLVER = ingress.Other(CHALLENGE, "cm-acme-http-solver.istio-ingress.svc.cluster.local")


@pytest.fixture(scope="module")
def acme():
    return harness.run("eks", {"llm-platform:gateway": {"host": HOST, "certManager": {"acmeEmail": "ops@example.com"}}})


def test_acme_challenge_is_served_on_http_and_everything_else_redirected(acme):
    assert ingress.answer(acme, 80, HOST, CHALLENGE, others=(SOLVER,)) == SOLVER.host
    for path in ("/v1/models", "/", "/.well-known/other", "/grafana/"):
        assert ingress.answer(acme, 80, HOST, path, others=(SOLVER,)) == "redirect:https", path
    # The redirect is the only rule on port 80, and it matches every path.
    (redirect,) = [r for r in ingress.rules(acme, "llm-https-redirect").values()]
    assert not redirect.get("matches") and not redirect.get("backendRefs")
    assert redirect["filters"] == [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]
    assert ingress.answer(acme, 443, HOST, "/v1/models") == "litellm.front-door.svc.cluster.local"
    assert ingress.answer(acme, 443, HOST, "/v1/chat/completions") == "litellm.front-door.svc.cluster.local"
    assert ingress.answer(acme, 443, HOST, "/") == "open-webui.open-webui.svc.cluster.local"
    assert ingress.answer(acme, 443, HOST, "/grafana/") == "kps-grafana.monitoring.svc.cluster.local"


def test_the_challenge_ingress_is_one_istiod_serves_on_our_gateway(acme):
    issuer = acme.one("kubernetes:cert-manager.io/v1:ClusterIssuer").inputs
    cls_name = issuer["spec"]["acme"]["solvers"][0]["http01"]["ingress"]["ingressClassName"]
    ingress_class = acme.one("kubernetes:networking.k8s.io/v1:IngressClass")
    # istiod (ingressControllerMode STRICT) serves an Ingress whose class names its controller.
    assert ingress_class.inputs["metadata"]["name"] == cls_name
    assert ingress_class.inputs["spec"]["controller"] == "istio.io/ingress-controller"
    assert ingress_class.urn in acme.one("kubernetes:cert-manager.io/v1:ClusterIssuer").dependencies
    istiod = acme.one("kubernetes:helm.sh/v3:Release", "mesh-istiod").inputs["values"]
    gateway = acme.one("kubernetes:helm.sh/v3:Release", "mesh-gateway").inputs
    # istiod puts the derived Gateway, and looks for meshConfig.ingressService, in K8S_INGRESS_NS.
    assert istiod["env"]["K8S_INGRESS_NS"] == gateway["namespace"]
    assert istiod["meshConfig"]["ingressService"] == gateway["name"]
    assert istiod["meshConfig"]["ingressControllerMode"] == "STRICT"


def test_a_static_tls_secret_also_redirects_http():
    rec = harness.run("eks", {"llm-platform:gateway": {"host": HOST, "tlsSecret": "llm-cert"}})
    assert ingress.answer(rec, 80, HOST, "/v1/models") == "redirect:https"
    assert ingress.answer(rec, 443, HOST, "/v1/models") == "litellm.front-door.svc.cluster.local"
    https = next(lst for lst in ingress.listeners(rec) if lst["port"] == 443)
    assert https["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "llm-cert"}]
    assert not rec.of_type("kubernetes:cert-manager.io/v1:Certificate")


@pytest.mark.parametrize("stack_name", harness.STACKS)
def test_no_plaintext_way_in_through_the_public_listener(stack_name):
    """The in-cluster Service name is no back door: with TLS, port 80 answers it with nothing."""
    rec = harness.run(stack_name, {"llm-platform:gateway": {"host": HOST, "tlsSecret": "llm-cert"}})
    internal = "istio-ingress.istio-ingress.svc.cluster.local"
    for port in (80, 443):
        assert ingress.answer(rec, port, internal, "/v1/models") is None
        assert ingress.answer(rec, port, internal, "/") is None
    assert all(lst["hostname"] == HOST for lst in ingress.listeners(rec))
    # The API answers on HTTPS alone: its routes attach to the HTTPS listener only.
    assert [ref["sectionName"] for ref in ingress.http_route(rec)["spec"]["parentRefs"]] == ["https"]


def test_the_ui_reaches_the_front_door_through_the_mesh_not_the_ingress(guarded):
    values = guarded.one("kubernetes:argoproj.io/v1alpha1:Application").inputs["spec"]["source"]["helm"]["valuesObject"]
    svc = guarded.one("kubernetes:core/v1:Service", "front-door-service").inputs["metadata"]
    assert [url.split("//")[1].split(".svc")[0] for url in values["openaiBaseApiUrls"]] == [
        f"{svc['name']}.{svc['namespace']}"]
    assert network_admits(guarded, "open-webui", svc["namespace"])
    assert mesh_admits(guarded, ui_principal(guarded), svc["namespace"])


def test_without_tls_no_redirect():
    rec = harness.run("local")
    assert [lst["protocol"] for lst in ingress.listeners(rec)] == ["HTTP"]
    assert all("tls" not in lst for lst in ingress.listeners(rec))
    assert all(f["type"] != "RequestRedirect" for r in ingress.rules(rec).values() for f in r.get("filters", ()))
    assert ingress.answer(rec, 80, harness.MINIKUBE_IP, "/v1/models") == "litellm.front-door.svc.cluster.local"


@pytest.mark.parametrize("gateway, expected", [
    ({"tlsSecret": "llm-cert"}, "llm-platform:gateway.host: required when TLS is on"),
    ({"host": HOST, "tlsSecret": "c", "certManager": {"acmeEmail": "a@b.io"}},
     "llm-platform:gateway.certManager: expected either tlsSecret or certManager"),
    ({"host": HOST, "certManager": {"acmeEmail": "not-an-email"}},
     "llm-platform:gateway.certManager.acmeEmail: String should match pattern"),
])
def test_bad_tls_config_is_refused(gateway, expected):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:gateway": gateway})
    assert str(info.value.error).startswith(f"Pulumi.eks.yaml: {expected}")


# --- the clouds' load balancer: plain HTTP never faces the internet -----------------------------

AWS_INTERNAL = "service.beta.kubernetes.io/aws-load-balancer-internal"
GKE_LB_TYPE = "networking.gke.io/load-balancer-type"


def ingress_service(rec) -> dict:
    """The ingress Service as the gateway chart renders it from the program's values."""
    release = harness.reveal(rec.one("kubernetes:helm.sh/v3:Release", "mesh-gateway").inputs)
    (svc,) = [d for d in render_chart(f"gateway-{release['version']}.tgz", release["values"], release["name"],
                                      release["namespace"]) if d["kind"] == "Service"]
    return svc


def on_the_internet(stack: str, svc: dict) -> bool:
    """What the cloud's own service controller reads: EKS's (in-tree) makes an NLB internal with
    `aws-load-balancer-internal` set to anything but "false"; GKE's with load-balancer-type
    Internal."""
    annotations = svc["metadata"].get("annotations") or {}
    assert svc["spec"]["type"] == "LoadBalancer"
    if stack == "eks":
        assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
        return annotations.get(AWS_INTERNAL, "false") == "false"
    return annotations.get(GKE_LB_TYPE) != "Internal"


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
def test_without_tls_the_cloud_load_balancer_stays_inside_the_network(stack_name):
    """As shipped (no gateway.host, no certificate) the master key and the UI's passwords would
    cross the internet in clear: the load balancer is internal until TLS is on."""
    need_charts()
    rec = harness.run(stack_name)
    assert not on_the_internet(stack_name, ingress_service(rec))
    assert all("tls" not in lst for lst in ingress.listeners(rec))


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
@pytest.mark.parametrize("tls", [{"certManager": {"acmeEmail": "ops@example.com"}}, {"tlsSecret": "llm-cert"}])
def test_with_tls_the_cloud_load_balancer_faces_the_internet_on_https(stack_name, tls):
    need_charts()
    rec = harness.run(stack_name, {"llm-platform:gateway": {"host": HOST, **tls}})
    assert on_the_internet(stack_name, ingress_service(rec))
    assert ingress.answer(rec, 80, HOST, "/v1/models") == "redirect:https"


def test_an_internal_load_balancer_with_tls_may_be_asked_for():
    need_charts()
    rec = harness.run("eks", {"llm-platform:gateway": {"host": HOST, "tlsSecret": "llm-cert",
                                                       "loadBalancer": "internal"}})
    assert not on_the_internet("eks", ingress_service(rec))


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
def test_the_stack_files_say_how_to_go_public_and_it_works(stack_name):
    """The commented gateway block in Pulumi.<stack>.yaml, uncommented, is accepted and puts the
    load balancer on the internet behind HTTPS."""
    lines = (harness.PROJECT_DIR / f"Pulumi.{stack_name}.yaml").read_text().splitlines()
    start = lines.index("  # llm-platform:gateway:")
    block = [line.replace("  # ", "  ", 1) for line in lines[start:start + 3]]
    gateway = yaml.safe_load("\n".join(block))["llm-platform:gateway"]
    rec = harness.run(stack_name, {"llm-platform:gateway": gateway})
    need_charts()
    assert on_the_internet(stack_name, ingress_service(rec))
    assert ingress.answer(rec, 80, gateway["host"], "/v1/models") == "redirect:https"


@pytest.mark.parametrize("stack_name, gateway, expected", [
    ("eks", {"loadBalancer": "internet"},
     "llm-platform:gateway.loadBalancer: 'internet' needs TLS"),
    ("gke", {"host": HOST, "loadBalancer": "internet"},
     "llm-platform:gateway.loadBalancer: 'internet' needs TLS"),
    ("eks", {"host": HOST, "certManager": {"acmeEmail": "ops@example.com"}, "loadBalancer": "internal"},
     "llm-platform:gateway.certManager: expected tlsSecret with an internal load balancer"),
    ("local", {"loadBalancer": "internal"},
     "llm-platform:gateway.loadBalancer: only eks and gke create a cloud load balancer"),
])
def test_plain_http_on_the_internet_is_refused(stack_name, gateway, expected):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run(stack_name, {"llm-platform:gateway": gateway})
    message = str(info.value.error)
    assert "\n" not in message and info.value.registrations == []
    assert message.startswith(f"Pulumi.{stack_name}.yaml: {expected}"), message


def test_the_removed_metrics_from_setting_is_refused_with_what_happens_instead():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:security": {"metricsFrom": ["monitoring"]}})
    message = str(info.value.error)
    assert message.startswith("Pulumi.local.yaml: llm-platform:security.metricsFrom: no longer a setting; ")


def test_supplemental_groups_reach_the_model_pod():
    rec = harness.run("local", {"llm-platform:security": {"supplementalGroups": [109]}})
    pod = model_server(rec).inputs["spec"]["template"]["spec"]
    assert pod["securityContext"]["supplementalGroups"] == [109]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert restricted_violations(pod) == []


# --- Open WebUI as its pinned chart renders it -------------------------------------------

CHARTS = harness.PROJECT_DIR.parent / "shared" / "upstream" / "charts"
# Istio reads a Service port's protocol from appProtocol, else from its name's prefix.
ISTIO_PROTOCOLS = ("http", "http2", "https", "grpc", "grpc-web", "mongo", "redis", "mysql", "tcp", "tls", "udp")


def render_chart(archive_name: str, values: dict, release: str, namespace: str) -> list[dict]:
    archive = CHARTS / archive_name
    if not archive.is_file():
        pytest.skip(f"chart archive {archive} is not there")
    from helm_python import Chart
    import yaml

    rendered = Chart.load(str(archive)).render(harness.reveal(values), name=release, namespace=namespace,
                                               is_install=True)
    return [doc for path, text in rendered.items() if path.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text) if doc]


def rendered_ui(rec) -> list[dict]:
    source = rec.one("kubernetes:argoproj.io/v1alpha1:Application").inputs["spec"]
    return render_chart(f"{source['source']['chart']}-{source['source']['targetRevision']}.tgz",
                        source["source"]["helm"]["valuesObject"], source["source"]["helm"]["releaseName"],
                        source["destination"]["namespace"])


def ui_workload(docs) -> dict:
    (workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and not d["metadata"]["name"].endswith("-redis")]
    return workload


def ui_principal(rec) -> str:
    docs = rendered_ui(rec)
    sa = ui_workload(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs), sa
    ns = rec.one("kubernetes:argoproj.io/v1alpha1:Application").inputs["spec"]["destination"]["namespace"]
    return f"cluster.local/ns/{ns}/sa/{sa}"


def istio_protocol(port: dict) -> str:
    if port.get("appProtocol"):
        return port["appProtocol"]
    prefix = port.get("name", "").split("-")[0]
    return prefix if prefix in ISTIO_PROTOCOLS else "auto-detect"


def test_the_ui_account_in_the_allow_list_is_the_one_the_chart_creates(guarded):
    """The AuthorizationPolicy names the service account the chart's pods really run as."""
    principal = ui_principal(guarded)
    (policy,) = [p for p in in_namespace(guarded, AUTHZ, "front-door") if p["spec"]["action"] == "ALLOW"]
    assert principal in policy["spec"]["rules"][0]["from"][0]["source"]["principals"]


def test_every_ui_service_port_speaks_the_protocol_istio_reads_from_its_name(guarded):
    services = {d["metadata"]["name"]: d for d in rendered_ui(guarded) if d["kind"] == "Service"}
    redis = services["open-webui-redis"]["spec"]["ports"]
    assert [istio_protocol(p) for p in redis] == ["tcp"]
    assert [istio_protocol(p) for p in services["open-webui"]["spec"]["ports"]] == ["http"]


def ui_env(rec) -> dict:
    container = ui_workload(rendered_ui(rec))["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def test_the_ui_follows_the_stack_on_every_start(guarded):
    env = ui_env(guarded)
    # Otherwise connections and keys are read from the DB the first start filled.
    assert env["ENABLE_PERSISTENT_CONFIG"]["value"] == "False"
    # One connection, the front door: models added later appear without touching the UI.
    urls = env["OPENAI_API_BASE_URLS"]["value"].split(";")
    assert len(urls) == 1 and ".front-door.svc.cluster.local:" in urls[0]


def test_the_ui_embeds_with_its_own_model_not_through_the_front_door(guarded):
    """Open WebUI embeds its knowledge base locally unless RAG_EMBEDDING_ENGINE names a service
    (0.11: its default is empty), so the UI's key is not let into the front door's embeddings."""
    from components.edge.files.front_door_auth import UI_ROUTES

    env = ui_env(guarded)
    assert not {"RAG_EMBEDDING_ENGINE", "RAG_OPENAI_API_BASE_URL", "RAG_OPENAI_API_KEY"} & set(env)
    assert not [path for _, path in UI_ROUTES if "embeddings" in path]


def test_every_ui_account_sees_every_model(guarded):
    # The UI hides models without an access entry in its own DB from non-admin accounts unless
    # this is "true" (case-insensitive); access is by the UI's accounts, not per model.
    assert ui_env(guarded)["BYPASS_MODEL_ACCESS_CONTROL"]["value"].lower() == "true"


def test_the_ui_admin_comes_from_a_secret_and_sign_up_is_closed(guarded):
    env = ui_env(guarded)
    assert env["ENABLE_SIGNUP"]["value"] == "False"
    assert env["WEBUI_ADMIN_EMAIL"]["value"] == guarded.outputs["uiAdminEmail"]
    ref = env["WEBUI_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = next(r for r in guarded.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == ref["name"])
    data = secret.inputs["stringData"]
    assert harness.is_secret(data) or harness.is_secret(data[ref["key"]])
    password = harness.reveal(data)[ref["key"]]
    generated = guarded.one("random:index/randomPassword:RandomPassword", "ui-admin-password")
    assert len(password) == generated.inputs["length"] >= 24
    assert "uiAdminPassword" in guarded.secret_outputs and guarded.outputs["uiAdminPassword"] == password
    assert secret.urn in guarded.one("kubernetes:argoproj.io/v1alpha1:Application").dependencies


def test_sign_ins_survive_a_restart_of_the_ui(guarded):
    """Open WebUI signs its sessions with WEBUI_SECRET_KEY; without one its start script writes a
    new random key beside the code (outside the data volume), so every new pod logs everyone
    out. The chart (16.0.0) has no value for it: the key is generated once, kept in state and
    reaches the pod, as the chart renders it, only from a Secret."""
    env = ui_env(guarded)
    ref = env["WEBUI_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    secret = next(r for r in guarded.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == ref["name"]
                  and r.inputs["metadata"]["namespace"] == "open-webui")
    assert harness.is_secret(secret.inputs["stringData"]) or harness.is_secret(secret.inputs["stringData"][ref["key"]])
    key = harness.reveal(secret.inputs["stringData"])[ref["key"]]
    generated = guarded.one("random:index/randomPassword:RandomPassword", "ui-admin-secret-key")
    assert len(key) == generated.inputs["length"] >= 32
    assert key != guarded.outputs["uiAdminPassword"]
    for r in guarded.registrations:
        assert key not in plain_text(r.inputs), f"{r.type} {r.name}"
    assert secret.urn in guarded.one("kubernetes:argoproj.io/v1alpha1:Application").dependencies


def test_the_ui_admin_and_sign_up_are_configurable():
    rec = harness.run("local", {"llm-platform:uiAdminPassword": "admin-pass-0123456789",
                                "llm-platform:ui": {"signup": True, "adminEmail": "me@example.org"}},
                      secrets=("llm-platform:uiAdminPassword",))
    env = ui_env(rec)
    assert env["ENABLE_SIGNUP"]["value"] == "True" and env["WEBUI_ADMIN_EMAIL"]["value"] == "me@example.org"
    assert harness.reveal(rec.one("kubernetes:core/v1:Secret", "gitops-secret-open-webui-admin")
                          .inputs["stringData"])["WEBUI_ADMIN_PASSWORD"] == "admin-pass-0123456789"
    # The configured password is used: none is generated for the admin.
    assert "ui-admin-password" not in [r.name for r in rec.of_type("random:index/randomPassword:RandomPassword")]


def test_plain_text_ui_admin_password_is_refused():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:uiAdminPassword": "admin-pass-0123456789"})
    assert "llm-platform:uiAdminPassword: expected a secret" in str(info.value.error)


# --- NetworkPolicies only where the cluster enforces them ----------------------------------

def test_every_stack_starts_a_cni_that_enforces_network_policies():
    local, eks, gke = (harness.run(s) for s in harness.STACKS)
    start = next(r for r in local.of_type("command:local:Command") if "minikube start" in r.inputs["create"])
    assert "--cni calico" in start.inputs["create"]
    addon = eks.one("aws:eks/addon:Addon", "cluster-vpc-cni").inputs
    assert addon["addonName"] == "vpc-cni"
    assert json.loads(addon["configurationValues"])["enableNetworkPolicy"] == "true"
    assert gke.one("gcp:container/cluster:Cluster").inputs["datapathProvider"] == "ADVANCED_DATAPATH"
    # Istio's CNI plugin finds the platform's CNI folders.
    for rec, platform in ((local, "minikube"), (gke, "gke")):
        cni = rec.one("kubernetes:helm.sh/v3:Release", "mesh-cni").inputs["values"]
        assert cni["global"]["platform"] == platform
    for rec in (local, eks, gke):
        assert in_namespace(rec, NETPOL, "models")


@pytest.mark.parametrize("enforced, created", [(None, False), ("unknown", False), ("enforced", True)])
def test_an_existing_cluster_gets_policies_only_when_config_says_its_cni_enforces_them(tmp_path, enforced, created):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(harness.KUBECONFIG)
    cluster = {"kind": "existing", "kubeconfig": str(kubeconfig), "accelerator": None}
    cluster.pop("accelerator")
    if enforced:
        cluster["networkPolicy"] = enforced
    rec = harness.run("local", {"llm-platform:cluster": cluster, "llm-platform:accelerator": {"kind": "none"}})
    assert bool(rec.of_type(NETPOL)) is created


# --- HTTPS egress reaches the internet, not the cluster --------------------------------------

def egress_443_allowed(rec, ip: str) -> bool:
    """Would the model namespace's policies let a pod open ip:443 (Kubernetes semantics)?"""
    import ipaddress

    addr = ipaddress.ip_address(ip)
    for policy in in_namespace(rec, NETPOL, "models"):
        for rule in policy["spec"].get("egress", []):
            if not any(p["port"] == 443 for p in rule.get("ports", [])):
                continue
            for peer in rule.get("to", []):
                block = peer.get("ipBlock")
                if block and addr in ipaddress.ip_network(block["cidr"]) and not any(
                        addr in ipaddress.ip_network(e) for e in block.get("except", [])):
                    return True
    return False


@pytest.mark.parametrize("stack_name", ["eks", "gke"])
def test_https_egress_reaches_the_hub_but_not_the_cluster(stack_name):
    rec = harness.run(stack_name)
    assert egress_443_allowed(rec, "18.164.174.23")  # a public address (huggingface.co's CDN)
    for inside in ("169.254.169.254", "10.0.1.10", "10.64.3.4", "10.68.0.1", "172.20.0.1", "192.168.1.1",
                   "100.64.0.10"):
        assert not egress_443_allowed(rec, inside), inside
    if stack_name == "gke":  # the public control-plane endpoint the mocks answer
        assert not egress_443_allowed(rec, "34.30.0.10")


def test_a_vpc_on_public_addresses_is_excluded_too():
    from components.core.trust import outside_ranges

    ranges = outside_ranges(["10.0.0.0/16", "44.0.0.0/16"])
    assert "44.0.0.0/16" in ranges and "10.0.0.0/16" not in ranges and "169.254.0.0/16" in ranges


def test_istiod_as_its_chart_renders_it_serves_the_challenge_from_our_ingress(acme):
    """The istiod chart turns the values into the env var and mesh config istiod reads."""
    import yaml

    release = acme.one("kubernetes:helm.sh/v3:Release", "mesh-istiod").inputs
    gateway = acme.one("kubernetes:helm.sh/v3:Release", "mesh-gateway").inputs
    docs = render_chart(f"{release['chart']}-{release['version']}.tgz", release["values"], release["name"],
                        release["namespace"])
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["K8S_INGRESS_NS"] == gateway["namespace"]
    (mesh_cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "istio"]
    mesh = yaml.safe_load(mesh_cm["data"]["mesh"])
    assert mesh["ingressService"] == gateway["name"] and mesh["ingressControllerMode"] == "STRICT"
    # The challenge's Ingress is served on the pods the gateway chart runs, the same pods the
    # Gateway API Gateway binds through their Service (named after the release).
    values = harness.reveal(gateway)
    chart = render_chart(f"gateway-{values['version']}.tgz", values["values"], values["name"], values["namespace"])
    (pods,) = [d["spec"]["template"]["metadata"]["labels"] for d in chart if d["kind"] == "Deployment"]
    (svc,) = [d for d in chart if d["kind"] == "Service"]
    assert pods["istio"] == mesh["ingressSelector"]
    assert ingress.bound_service(ingress.gateway(acme)) == [(svc["metadata"]["name"], svc["metadata"]["namespace"])]
    # istiod configures the inference pools' endpoint picker on the pods labelled with the
    # Gateway's name, with the Inference Extension switched on.
    assert pods["gateway.networking.k8s.io/gateway-name"] == ingress.gateway(acme)["metadata"]["name"]
    assert env["ENABLE_GATEWAY_API_INFERENCE_EXTENSION"] == "true"


def test_the_ui_rolls_with_its_own_key_not_the_client_key():
    """Open WebUI reads its key from the Secret only at start: the pod template the real chart
    renders from the program's values carries a keyed digest of the UI's own key (a new one rolls
    the UI through Argo CD), and a rotated client key leaves the UI alone."""
    def ui_template(client_key: str) -> tuple[dict, str]:
        rec = harness.run("local", {**SECRET_OVERRIDES, "llm-platform:apiKey": client_key}, secrets=SECRETS)
        return ui_workload(rendered_ui(rec))["spec"]["template"], ui_key(rec)

    (before, key), (rotated, _) = ui_template(CLIENT_KEY), ui_template(CLIENT_KEY + "-rotated")
    value = before["metadata"]["annotations"]["llm-platform/api-keys-digest"]
    assert key not in value and value != hashlib.sha256(key.encode()).hexdigest()
    assert value == hmac.new(hashlib.sha256(b"api-keys-digest-salt").hexdigest()[:32].encode(), key.encode(),
                             hashlib.sha256).hexdigest()
    assert rotated == before


@pytest.mark.parametrize("key", ["-flag-like-0123456789ab", "two;keys-0123456789ab", "line\nbreak-0123456789", "short"])
def test_a_key_the_servers_would_misread_is_refused_without_repeating_it(key):
    """vLLM expands its config-file key list into flags (a leading '-' becomes a flag), Open
    WebUI splits its keys on ';', llama.cpp's key file holds one key a line."""
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:apiKey": key}, secrets=("llm-platform:apiKey",))
    message = str(info.value.error)
    assert message.startswith("Pulumi.local.yaml: llm-platform:apiKey: expected 16 to 256 characters")
    assert key not in message and "\n" not in message
    assert info.value.registrations == []
