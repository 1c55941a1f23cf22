"""Virtual keys (frontDoor.virtualKeys): the CloudNativePG operator from its pinned chart, one
PostgreSQL `Cluster` outside the mesh that only the front door reaches, and its credentials in
Secrets alone. Off by default: then none of it exists. (LiteLLM's release and Istio's schemas:
tests/parts/test_virtual_keys.py.)"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest

from components.edge import database as db
from components.cluster import eks, gke
from tests.conftest import VKEYS, need_charts, recording
from tests.program.test_security import plain_text
from tools import charts
from tools import mock_engine as harness

SECRET = "kubernetes:core/v1:Secret"
POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
RELEASE = "kubernetes:helm.sh/v3:Release"


@pytest.fixture(scope="module")
def on() -> harness.Recording:
    return recording("local-vkeys")


def proxy_env(rec) -> dict:
    spec = rec.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"]["spec"]
    return {e["name"]: e for e in spec["containers"][0]["env"]}


def policies(rec, namespace: str) -> dict[str, dict]:
    return {p.inputs["metadata"]["name"]: harness.reveal(p.inputs["spec"]) for p in rec.of_type(POLICY)
            if p.inputs["metadata"]["namespace"] == namespace}


def test_off_by_default_nothing_of_it_exists(local):
    assert not local.of_type("llm-platform:index:KeysDatabase") and not local.of_type(CLUSTER)
    assert not any(r.inputs["chart"] == db.CNPG_CHART for r in local.of_type(RELEASE))
    assert "DATABASE_URL" not in proxy_env(local)
    assert local.outputs["virtualKeys"] is False


def test_the_operator_is_the_pinned_chart_with_its_crds(on):
    release = harness.reveal(on.one(RELEASE, "keys-database-operator").inputs)
    assert (release["chart"], release["version"], release["namespace"]) == (db.CNPG_CHART, "0.29.0", "cnpg-system")
    assert release["values"]["crds"]["create"] is True
    need_charts()
    rendered = [m.obj for m in charts.cluster_objects(on) if m.source == f"chart:{db.CNPG_RELEASE}"]
    crds = {o["metadata"]["name"] for o in rendered if o["kind"] == "CustomResourceDefinition"}
    assert "clusters.postgresql.cnpg.io" in crds
    (operator,) = [o for o in rendered if o["kind"] == "Deployment"]
    assert operator["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/cloudnative-pg/cloudnative-pg:1.30.0"
    # The database's NetworkPolicy admits the operator by these labels, in this namespace.
    labels = operator["spec"]["template"]["metadata"]["labels"]
    assert db.OPERATOR_POD_LABELS.items() <= labels.items()
    assert operator["metadata"]["namespace"] == "cnpg-system"
    admitted = policies(on, "litellm-db")["allow-operator"]["ingress"][0]
    assert admitted["from"][0]["podSelector"]["matchLabels"] == db.OPERATOR_POD_LABELS
    assert admitted["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "cnpg-system"}
    assert [int(p["port"]) for p in admitted["ports"]] == [db.STATUS_PORT]


@pytest.mark.parametrize("stack, instances", [("local", 1), ("eks", 3), ("gke", 3)])
def test_one_instance_on_a_laptop_three_on_the_clouds(stack, instances):
    rec = recording("local-vkeys") if stack == "local" else harness.run(stack, VKEYS)
    spec = harness.reveal(rec.one(CLUSTER).inputs["spec"])
    assert int(spec["instances"]) == instances
    # A single instance's PodDisruptionBudget would only block node drains.
    assert spec["enablePDB"] is (instances > 1)
    assert spec["imageName"] == db.POSTGRES_IMAGE and spec["storage"]["size"] == "5Gi"
    # The cluster's own class where it names one (EKS's encrypted gp3, GKE's balanced disks).
    assert spec["storage"].get("storageClass") == {"local": None, "eks": eks.STORAGE_CLASS, "gke": gke.STORAGE_CLASS}[stack]


def test_instances_and_size_follow_the_config():
    rec = harness.run("eks", {"llm-platform:frontDoor": {"virtualKeys": {
        "enabled": True, "instances": 2, "storageSize": "20Gi"}}})
    spec = harness.reveal(rec.one(CLUSTER).inputs["spec"])
    assert (int(spec["instances"]), spec["storage"]["size"]) == (2, "20Gi")


def test_the_password_lives_only_in_secrets(on):
    owner = on.one(SECRET, "keys-database-owner").inputs
    assert owner["type"] == "kubernetes.io/basic-auth"
    creds = harness.reveal(owner["stringData"])
    assert creds["username"] == db.OWNER and len(creds["password"]) >= 32
    initdb = harness.reveal(on.one(CLUSTER).inputs["spec"])["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"], initdb["secret"]["name"]) == (
        db.DATABASE, db.OWNER, owner["metadata"]["name"])
    assert owner["metadata"]["namespace"] == "litellm-db"

    url_secret = on.one(SECRET, "keys-database-url").inputs
    assert url_secret["metadata"]["namespace"] == "front-door"
    url = urlparse(harness.reveal(url_secret["stringData"])[db.URL_KEY])
    assert (url.scheme, url.username, url.password) == ("postgresql", db.OWNER, creds["password"])
    # The operator's read-write Service of the Cluster, in the database's namespace.
    assert (url.hostname, url.port, url.path) == ("litellm-db-rw.litellm-db.svc", 5432, "/litellm")
    assert parse_qs(url.query) == {"sslmode": ["verify-full"], "sslrootcert": [f"{db.CLIENT_CA_DIR}/{db.CA_CERT}"]}
    for r in on.registrations:
        assert creds["password"] not in plain_text(r.inputs), f"{r.type} {r.name}"
    assert creds["password"] not in str(on.outputs)


# CloudNativePG 1.30's names in a server certificate (api/v1 Cluster.GetClusterAltDNSNames): each
# enabled Service (rw, r, ro) as `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.<domain>`,
# then spec.certificates.serverAltDNSNames.
def cnpg_server_names(cluster: dict, domain: str = "cluster.local") -> list[str]:
    name, ns = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    names = [n for svc in ("rw", "r", "ro") for n in (f"{name}-{svc}", f"{name}-{svc}.{ns}", f"{name}-{svc}.{ns}.svc",
                                                       f"{name}-{svc}.{ns}.svc.{domain}")]
    return names + list(cluster["spec"].get("certificates", {}).get("serverAltDNSNames", []))


def url_of(rec) -> str:
    return harness.reveal(rec.one(SECRET, "keys-database-url").inputs["stringData"])[db.URL_KEY]


def secret_named(rec, namespace: str, name: str) -> dict:
    (found,) = [r.inputs for r in rec.of_type(SECRET)
                if r.inputs["metadata"]["namespace"] == namespace and r.inputs["metadata"]["name"] == name]
    return found


def test_the_front_door_checks_the_database_server_against_its_ca(on):
    """`sslmode=require` alone encrypts but checks nothing: anyone who answers for the Service
    gets the password. The URL verifies the chain against the database's CA and the host name
    (libpq's verify-full), with the CA mounted where the URL names it."""
    cluster = {**harness.reveal(on.one(CLUSTER).inputs), "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster"}
    url = urlparse(url_of(on))
    query = parse_qs(url.query)
    assert query["sslmode"] == ["verify-full"]
    # The host checked is one the operator puts in the server certificate.
    assert url.hostname in cnpg_server_names(cluster)
    assert cluster["spec"]["certificates"]["serverAltDNSNames"] == [url.hostname]
    # The CA the operator signs the server certificate with: a Secret beside the Cluster with
    # ca.crt and ca.key, the key an ECDSA one (CloudNativePG parses only "EC PRIVATE KEY").
    ca = secret_named(on, "litellm-db", cluster["spec"]["certificates"]["serverCASecret"])
    ca_data = harness.reveal(ca["stringData"])
    assert set(ca_data) == {"ca.crt", "ca.key"}
    assert harness.is_secret(ca["stringData"]) or harness.is_secret(ca["stringData"]["ca.key"])
    key = on.one("tls:index/privateKey:PrivateKey", "keys-database-server-ca-key").inputs
    assert key["algorithm"] == "ECDSA"
    cert = on.one("tls:index/selfSignedCert:SelfSignedCert", "keys-database-server-ca").inputs
    assert cert["isCaCertificate"] is True and "cert_signing" in cert["allowedUses"]
    assert cert["validityPeriodHours"] > cert["earlyRenewalHours"] >= 24 * 365
    # The same certificate, without its key, is mounted into the front door where the URL looks.
    spec = on.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (root,) = query["sslrootcert"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if root.startswith(m["mountPath"] + "/")]
    source = volumes[mount["name"]]["secret"]
    item = next(i for i in source["items"] if f"{mount['mountPath']}/{i['path']}" == root)
    client_ca = harness.reveal(secret_named(on, "front-door", source["secretName"])["stringData"])
    assert set(client_ca) == {"ca.crt"} and client_ca[item["key"]] == ca_data["ca.crt"]
    # `up` starts the proxy only once its CA is there.
    assert on.one(SECRET, "keys-database-client-ca").urn in on.one(
        "kubernetes:apps/v1:Deployment", "front-door-deployment").dependencies
    # The CA's private key stays in the database's namespace, and is never in plain text.
    key_pem = ca_data["ca.key"]
    for r in on.registrations:
        assert key_pem not in plain_text(r.inputs), f"{r.type} {r.name}"


def test_the_front_door_reads_the_url_from_the_secret_and_migrates_into_scratch(on):
    env = proxy_env(on)
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": db.URL_SECRET, "key": db.URL_KEY}
    # The root filesystem is read-only; /tmp is the pod's scratch volume.
    assert env["LITELLM_MIGRATION_DIR"]["value"].startswith("/tmp/")
    spec = on.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"]["spec"]
    assert {"name": "tmp", "mountPath": "/tmp"} in spec["containers"][0]["volumeMounts"]
    # `up` starts the proxy with the URL only once the database is ready.
    deployment = on.one("kubernetes:apps/v1:Deployment", "front-door-deployment")
    assert on.one(CLUSTER).urn in deployment.dependencies
    assert on.one(CLUSTER).inputs["metadata"]["annotations"]["pulumi.com/waitFor"] == "condition=Ready"
    assert on.outputs["virtualKeys"] is True


def proxy_container(rec) -> dict:
    return rec.one("kubernetes:apps/v1:Deployment", "front-door-deployment").inputs["spec"]["template"]["spec"][
        "containers"][0]


def test_a_database_restart_leaves_the_front_door_ready_and_its_first_start_may_migrate(on, local):
    c = proxy_container(on)
    # LiteLLM's readiness path answers 503 while the database is unreachable: that would take every
    # replica out of the Service (and all of /v1) on a restart of a one-instance database.
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/liveliness"
    # A replica may wait on the migration lock, then run one `prisma migrate deploy` (a fresh
    # database replays every migration): the startup probe outlasts both, as set in the env.
    env = {e["name"]: e.get("value") for e in c["env"]}
    waits = int(env["LITELLM_MIGRATION_LOCK_TIMEOUT"]) + int(env["LITELLM_PRISMA_MIGRATE_DEPLOY_TIMEOUT"])
    startup = c["startupProbe"]
    assert waits >= 1200 and startup["periodSeconds"] * startup["failureThreshold"] > waits
    # Without a database the readiness path is LiteLLM's own.
    assert proxy_container(local)["readinessProbe"]["httpGet"]["path"] == "/health/readiness"


def test_stored_credentials_are_encrypted_with_a_generated_salt_not_the_master_key(on, local):
    env = proxy_env(on)
    ref = env["LITELLM_SALT_KEY"]["valueFrom"]["secretKeyRef"]
    secret = next(r for r in on.of_type(SECRET) if r.inputs["metadata"]["name"] == ref["name"]
                  and r.inputs["metadata"]["namespace"] == "front-door")
    keys = harness.reveal(secret.inputs["stringData"])
    salt = keys[ref["key"]]
    generated = on.one("random:index/randomPassword:RandomPassword", "front-door-salt-key")
    assert len(salt) == generated.inputs["length"] >= 32
    assert salt != keys["LITELLM_MASTER_KEY"]
    for r in on.registrations:
        assert salt not in plain_text(r.inputs), f"{r.type} {r.name}"
    # No database, nothing stored: no salt.
    assert "LITELLM_SALT_KEY" not in proxy_env(local)


def test_the_database_is_outside_the_mesh_and_only_the_front_door_reaches_it(on):
    ns = next(r.inputs for r in on.of_type("kubernetes:core/v1:Namespace") if r.inputs["metadata"]["name"] == "litellm-db")
    labels = ns["metadata"]["labels"]
    assert labels["istio-injection"] == "disabled"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    p = policies(on, "litellm-db")
    assert p["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    callers = sorted((json.dumps(peer, sort_keys=True), [int(x["port"]) for x in rule["ports"]])
                     for spec in p.values() for rule in spec.get("ingress", []) for peer in rule["from"])
    assert callers == sorted((json.dumps(peer, sort_keys=True), ports) for peer, ports in [
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "front-door"}}}, [5432]),
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "cnpg-system"}},
          "podSelector": {"matchLabels": db.OPERATOR_POD_LABELS}}, [8000]),
        ({"podSelector": {}}, [5432, 8000]),
    ])
    # Out: DNS, the other instances, and the API server on private ranges only.
    api = p["allow-api-server"]["egress"][0]
    assert {b["ipBlock"]["cidr"] for b in api["to"]} >= {"10.0.0.0/8", "192.168.0.0/16"}
    assert not any(b["ipBlock"]["cidr"] == "0.0.0.0/0" for b in api["to"])


def test_the_front_door_sidecar_and_policies_let_it_reach_the_database(on):
    host = "litellm-db-rw.litellm-db.svc.cluster.local"
    sidecar = on.one("kubernetes:networking.istio.io/v1:Sidecar").inputs["spec"]
    assert f"litellm-db/{host}" in sidecar["egress"][0]["hosts"]
    # PostgreSQL speaks TLS itself to a pod without a sidecar: no mesh mTLS on top.
    rule = on.one("kubernetes:networking.istio.io/v1:DestinationRule", "front-door-database-tls").inputs
    assert rule["spec"] == {"host": host, "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "DISABLE"}}}
    assert rule["metadata"]["namespace"] == "front-door"
    out = policies(on, "front-door")["allow-database"]["egress"][0]
    assert out["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "litellm-db"}}}]
    assert [int(x["port"]) for x in out["ports"]] == [5432]


def test_no_network_policies_where_the_cluster_does_not_enforce_them(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(harness.KUBECONFIG)
    rec = harness.run("local", {**VKEYS, "llm-platform:cluster": {"kind": "existing", "kubeconfig": str(kubeconfig)},
                                "llm-platform:accelerator": {"kind": "none"}})
    assert not policies(rec, "litellm-db") and rec.one(CLUSTER)
    assert int(harness.reveal(rec.one(CLUSTER).inputs["spec"])["instances"]) == 1


def test_the_policy_pack_passes_with_virtual_keys_on(on):
    from tests.program.test_policy import recorded, rules, violations

    for reg, props in recorded(on):
        for name, (check, _) in rules.RESOURCE_RULES.items():
            assert violations(check, reg.type, props, reg.urn) == [], f"{name} on {reg.type} {reg.name}"
    found = []
    rules.STACK_RULES["model-namespaces-injected"][0]([(reg.type, props) for reg, props in recorded(on)], found.append)
    assert found == []
