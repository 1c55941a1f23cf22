"""Who may call what: on every stack `/v1` needs a key that reaches the servers only through
Kubernetes Secrets, and no key is ever written in plain text."""

import json

import pytest

from tools import mock_engine as harness

CLIENT_KEY = "client-key-0123456789abcdef"
UI_KEY = "ui-key-0123456789abcdef"
SECRET_OVERRIDES = {"llm-platform:apiKey": CLIENT_KEY, "llm-platform:uiApiKey": UI_KEY}
SECRETS = tuple(SECRET_OVERRIDES)


@pytest.fixture(scope="module", params=harness.STACKS)
def keyed(request):
    return harness.run(request.param, SECRET_OVERRIDES, secrets=SECRETS)


def model_server(rec):
    """The model server's workload: a Deployment, or a StatefulSet where it caches weights."""
    return (rec.of_type("kubernetes:apps/v1:Deployment") + rec.of_type("kubernetes:apps/v1:StatefulSet"))[0]


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


def test_keys_never_appear_in_plain_text(keyed):
    for r in keyed.registrations:
        text = plain_text(r.inputs)
        assert CLIENT_KEY not in text and UI_KEY not in text, f"{r.type} {r.name}"
    assert "apiKey" in keyed.secret_outputs and keyed.outputs["apiKey"] == CLIENT_KEY


def test_server_requires_a_key_read_from_a_secret(keyed):
    c = container(keyed)
    secret = next(r for r in keyed.of_type("kubernetes:core/v1:Secret") if r.name.endswith("-api-keys"))
    data = harness.reveal(secret.inputs["stringData"])
    assert data["client"] == CLIENT_KEY and data["ui"] == UI_KEY
    assert data["keys"].splitlines() == [CLIENT_KEY, UI_KEY]
    name = secret.inputs["metadata"]["name"]
    if "--api-key-file" in c["args"]:  # llama.cpp: the Secret mounted as a file
        path = c["args"][c["args"].index("--api-key-file") + 1]
        mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in model_server(keyed).inputs["spec"]["template"]
                      ["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == name
        assert path.rsplit("/", 1)[1] == "keys"
    else:  # vLLM: env vars from the Secret, expanded by the kubelet into --api-key
        i = c["args"].index("--api-key")
        refs = c["args"][i + 1:i + 3]
        env = {e["name"]: e for e in c["env"]}
        for ref, entry in zip(refs, ("client", "ui")):
            var = ref.removeprefix("$(").removesuffix(")")
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": name, "key": entry}


def test_ui_gets_its_own_key_from_a_secret(keyed):
    app = keyed.one("kubernetes:argoproj.io/v1alpha1:Application").inputs
    env = app["spec"]["source"]["helm"]["valuesObject"]["extraEnvVars"]
    assert env == [{"name": "OPENAI_API_KEYS",
                    "valueFrom": {"secretKeyRef": {"name": "open-webui-openai", "key": "OPENAI_API_KEYS"}}}]
    secret = keyed.one("kubernetes:core/v1:Secret", "gitops-secret-open-webui-openai")
    assert secret.inputs["metadata"]["namespace"] == app["spec"]["destination"]["namespace"]
    urls = app["spec"]["source"]["helm"]["valuesObject"]["openaiBaseApiUrls"]
    assert harness.reveal(secret.inputs["stringData"])["OPENAI_API_KEYS"] == ";".join([UI_KEY] * len(urls))
    assert secret.urn in keyed.one("kubernetes:argoproj.io/v1alpha1:Application").dependencies


def test_keys_are_generated_when_not_configured():
    rec = harness.run("local")
    generated = rec.of_type("random:index/randomPassword:RandomPassword")
    assert sorted(r.name for r in generated) == ["api-keys-client", "api-keys-ui"]
    assert all(r.inputs["length"] >= 32 and r.inputs["special"] is False for r in generated)
    assert "apiKey" in rec.secret_outputs


def test_plain_text_api_key_is_refused():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:apiKey": CLIENT_KEY})
    assert "llm-platform:apiKey: expected a secret" in str(info.value.error)


def test_health_and_metrics_are_not_behind_the_gateway_key(keyed):
    c = container(keyed)
    # Probes hit /health, which both servers leave open.
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    # /metrics is only reachable in-cluster: no route of the gateway reaches it.
    routes = keyed.one("kubernetes:networking.istio.io/v1:VirtualService").inputs["spec"]["http"]
    model_prefixes = [m["uri"]["prefix"] for r in routes if r["name"] != "ui" for m in r["match"]]
    assert all(p.endswith("/v1") for p in model_prefixes)


def test_laptop_can_opt_out_of_api_keys():
    rec = harness.run("local", {"llm-platform:security": {"apiAuth": False}})
    c = container(rec)
    assert "--api-key-file" not in c["args"] and "--api-key" not in c["args"]
    assert not rec.of_type("random:index/randomPassword:RandomPassword")
    assert "apiKey" not in rec.outputs


# --- mesh mTLS, authorization and network policies ---------------------------------------

NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
AUTHZ = "kubernetes:security.istio.io/v1:AuthorizationPolicy"
PEERAUTH = "kubernetes:security.istio.io/v1:PeerAuthentication"
INGRESS = ("istio-ingress", "cluster.local/ns/istio-ingress/sa/istio-ingress")
UI = ("open-webui", "cluster.local/ns/open-webui/sa/open-webui")


def in_namespace(rec, type_, ns):
    return [r.inputs for r in rec.of_type(type_) if r.inputs["metadata"]["namespace"] == ns]


def network_admits(rec, source_ns: str, dest_ns: str) -> bool:
    """Would any NetworkPolicy of dest_ns let a pod in source_ns connect (Kubernetes semantics:
    once a policy selects the pods for Ingress, only listed peers get in)?"""
    policies = [p for p in in_namespace(rec, NETPOL, dest_ns) if "Ingress" in p["spec"]["policyTypes"]]
    if not policies:
        return True
    return any(
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == source_ns
        for p in policies for rule in p["spec"].get("ingress", []) for peer in rule.get("from", [])
    )


def mesh_admits(rec, source_principal: str, dest_ns: str) -> bool:
    allows = [p for p in in_namespace(rec, AUTHZ, dest_ns) if p["spec"]["action"] == "ALLOW"]
    if not allows:
        return True
    return any(source_principal in src["source"].get("principals", [])
               for p in allows for rule in p["spec"]["rules"] for src in rule.get("from", []))


def egress_ports(rec, ns) -> set[int]:
    return {port["port"] for p in in_namespace(rec, NETPOL, ns) for rule in p["spec"].get("egress", [])
            for port in rule.get("ports", [])}


@pytest.fixture(scope="module", params=harness.STACKS)
def guarded(request):
    return harness.run(request.param)


def test_strict_mtls_in_model_and_ui_namespaces(guarded):
    for ns in ("models", "open-webui"):
        (peer,) = in_namespace(guarded, PEERAUTH, ns)
        assert peer["spec"] == {"mtls": {"mode": "STRICT"}}


@pytest.mark.parametrize("source, admitted", [
    (INGRESS, True),
    (UI, True),
    (("default", "cluster.local/ns/default/sa/default"), False),
    (("argocd", "cluster.local/ns/argocd/sa/argocd-server"), False),
    (("models", "cluster.local/ns/models/sa/default"), False),
])
def test_only_the_gateway_and_ui_reach_the_model_servers(guarded, source, admitted):
    ns, principal = source
    assert network_admits(guarded, ns, "models") is admitted
    assert mesh_admits(guarded, principal, "models") is admitted


def test_model_namespace_denies_by_default_and_allows_only_what_it_needs(guarded):
    (deny,) = [p for p in in_namespace(guarded, NETPOL, "models") if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    downloads = guarded.stack in ("eks", "gke")
    assert egress_ports(guarded, "models") == ({53, 15012, 443} if downloads else {53, 15012})


def test_laptop_can_opt_out_of_mesh_and_network_policies():
    rec = harness.run("local", {"llm-platform:security": {"mtls": False, "networkPolicies": False}})
    assert not rec.of_type(PEERAUTH) and not rec.of_type(AUTHZ) and not rec.of_type(NETPOL)


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
    pod = rec.of_type("kubernetes:apps/v1:Deployment")[0].inputs["spec"]["template"]["spec"]
    assert "securityContext" not in pod["containers"][0]
    models = next(r for r in rec.of_type("kubernetes:core/v1:Namespace") if r.inputs["metadata"]["name"] == "models")
    assert models.inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"


# --- TLS at the gateway -------------------------------------------------------------------

GATEWAY = "kubernetes:networking.istio.io/v1:Gateway"
HOST = "llm.example.com"


def servers(rec):
    return rec.one(GATEWAY).inputs["spec"]["servers"]


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
    https = next(s for s in servers(rec) if s["port"]["protocol"] == "HTTPS")
    assert https["tls"] == {"mode": "SIMPLE", "credentialName": cert.inputs["spec"]["secretName"]}
    assert cert.inputs["metadata"]["namespace"] == rec.one(GATEWAY).inputs["metadata"]["namespace"]
    assert rec.outputs["apiBaseUrl"] == f"https://{HOST}/v1"


def test_http_redirects_to_https_for_outside_callers_only():
    rec = harness.run("eks", {"llm-platform:gateway": {"host": HOST, "tlsSecret": "llm-cert"}})
    public_http = next(s for s in servers(rec) if s["port"]["number"] == 80 and s["hosts"] == [HOST])
    assert public_http["tls"] == {"httpsRedirect": True}
    internal = next(s for s in servers(rec) if s["hosts"] == ["istio-ingress.istio-ingress.svc.cluster.local"])
    assert "tls" not in internal  # the UI calls the gateway in-cluster over plain HTTP (mTLS inside)
    https = next(s for s in servers(rec) if s["port"]["number"] == 443)
    assert https["tls"]["credentialName"] == "llm-cert"
    assert not rec.of_type("kubernetes:cert-manager.io/v1:Certificate")


def test_without_tls_no_redirect():
    assert all("tls" not in s for s in servers(harness.run("local")))


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


def test_a_monitoring_namespace_may_scrape_metrics_and_nothing_else():
    rec = harness.run("local", {"llm-platform:security": {"metricsFrom": ["monitoring"]}})
    assert network_admits(rec, "monitoring", "models")
    (policy,) = in_namespace(rec, AUTHZ, "models")
    scrape = next(r for r in policy["spec"]["rules"] if "to" in r)
    assert scrape["from"] == [{"source": {"namespaces": ["monitoring"]}}]
    assert scrape["to"] == [{"operation": {"methods": ["GET"], "paths": ["/metrics"]}}]
    # The monitoring namespace is not a caller of the API.
    assert not mesh_admits(rec, "cluster.local/ns/monitoring/sa/prometheus", "models")


def test_supplemental_groups_reach_the_model_pod():
    rec = harness.run("local", {"llm-platform:security": {"supplementalGroups": [109]}})
    pod = rec.of_type("kubernetes:apps/v1:Deployment")[0].inputs["spec"]["template"]["spec"]
    assert pod["securityContext"]["supplementalGroups"] == [109]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert restricted_violations(pod) == []
