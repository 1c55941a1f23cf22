"""Metrics: every scrape target's port and path exist on the objects the stack applies (its
own and the charts'), and the mesh and the NetworkPolicies admit Prometheus to exactly those;
Grafana is served under /grafana with its admin password from a Secret; KEDA reaches Prometheus.
(LiteLLM's own metric names and Grafana's dashboard downloads run for real:
tests/parts/test_monitoring.py.)"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from components.edge import front_door
from components.platform import gpu_metrics
from components.platform import monitoring
from components.platform.mesh import ENVOY_STATS_PORT, ENVOY_STATS_PORT_NAME
from components.serving.runtimes import FRONT_DOOR_KEY, METRICS_KEY, VLLM_RELEASE
from tests import ingress_routes as ingress
from tests.conftest import need_charts, recording
from tools import charts
from tools import mock_engine as harness

VARIANTS = ("local", "eks", "local-pods")
AUTHZ, NETPOL = "AuthorizationPolicy", "NetworkPolicy"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


@pytest.fixture(scope="module", params=VARIANTS)
def stack(request):
    need_charts()
    rec = recording(request.param)
    return rec, [m.obj for m in charts.cluster_objects(rec)]


def of_kind(objs, kind, ns=None):
    return [o for o in objs if o["kind"] == kind and (ns is None or o["metadata"].get("namespace") == ns)]


def named(objs, kind, name, ns=None):
    (obj,) = [o for o in of_kind(objs, kind, ns) if o["metadata"]["name"] == name]
    return obj


def selects(selector: dict, labels: dict) -> bool:
    return all((labels or {}).get(k) == v for k, v in selector.items())


def pod_templates(objs, ns, selector) -> list[dict]:
    return [w["spec"]["template"] for w in objs if w["kind"] in WORKLOADS and w["metadata"].get("namespace") == ns
            and selects(selector, w["spec"]["template"]["metadata"].get("labels"))]


def container_port(template: dict, target) -> int:
    """A Service targetPort (name or number) resolved on the pod template."""
    ports = [p for c in template["spec"]["containers"] for p in c.get("ports") or []]
    if isinstance(target, int):
        assert target in [p["containerPort"] for p in ports], (target, ports)
        return target
    (port,) = [p["containerPort"] for p in ports if p.get("name") == target]
    return port


def scrape_paths(objs) -> dict[str, dict[tuple[str, int], set[str]]]:
    """Namespace -> (the server, its container port) -> the metrics paths Prometheus GETs there,
    each endpoint's port and path checked against the Service and the pods it selects."""
    out: dict = {}
    for sm in of_kind(objs, "ServiceMonitor"):
        ns = sm["metadata"]["namespace"]
        if ns in (monitoring.NAMESPACE, gpu_metrics.NAMESPACE):
            # The chart's own (Prometheus, operator, Grafana...) and the GPU exporter, outside
            # the mesh, scraped in plain text (tests/program/test_gpu_metrics.py).
            continue
        (svc,) = [s for s in of_kind(objs, "Service", ns)
                  if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels"))]
        (template,) = pod_templates(objs, ns, svc["spec"]["selector"])
        for ep in sm["spec"]["endpoints"]:
            (port,) = [p for p in svc["spec"]["ports"] if p.get("name") == ep["port"]]
            number = container_port(template, port.get("targetPort", port["port"]))
            assert ep["scheme"] == "https" and ep["tlsConfig"] == monitoring.MESH_TLS, sm["metadata"]["name"]
            out.setdefault(ns, {}).setdefault((sm["metadata"]["name"], number), set()).add(ep["path"])
    return out


def test_every_server_and_the_front_door_are_scraped_where_they_serve_metrics(stack):
    rec, objs = stack
    paths = scrape_paths(objs)
    fd = rec.one("kubernetes:core/v1:ConfigMap", "front-door-config").inputs["data"][front_door.CONFIG_FILE]
    assert "prometheus" in yaml.safe_load(fd)["litellm_settings"]["callbacks"]
    assert paths["front-door"] == {("litellm", front_door.PORT): {front_door.METRICS_PATH}}
    servers = paths["models"]
    for template in pod_templates(objs, "models", {"app.kubernetes.io/component": "model-server"}):
        c = template["spec"]["containers"][0]
        port = c["ports"][0]["containerPort"]
        (served,) = [v for (name, p), v in servers.items() if p == port]
        assert served == {"/metrics"}
        if "llama.cpp" in c["image"] or "ramalama" in c["image"]:
            assert "--metrics" in c["args"]  # llama.cpp serves /metrics only when told to
    assert len(servers) == len(pod_templates(objs, "models", {"app.kubernetes.io/component": "model-server"}))


def test_llama_cpp_endpoints_carry_the_key_the_server_accepts(stack):
    rec, objs = stack
    for sm in of_kind(objs, "ServiceMonitor", "models"):
        (template,) = pod_templates(objs, "models", sm["spec"]["selector"]["matchLabels"])
        args = template["spec"]["containers"][0]["args"]
        for ep in sm["spec"]["endpoints"]:
            if "--api-key-file" not in args:
                assert "authorization" not in ep  # vLLM's key guards /v1 only
                continue
            ref = ep["authorization"]["credentials"]
            secret = named(objs, "Secret", ref["name"], "models")
            keys_file = secret["stringData"]["keys"].splitlines()
            assert secret["stringData"][ref["key"]] in keys_file
            # Its own key: the front door's stays with the front door.
            assert ref["key"] == METRICS_KEY != FRONT_DOOR_KEY
            assert secret["stringData"][ref["key"]] != secret["stringData"][FRONT_DOOR_KEY]


def test_router_is_scraped_once_per_model():
    rec = recording("local")
    sm = rec.one("kubernetes:monitoring.coreos.com/v1:ServiceMonitor", "monitoring-llama-router").inputs["spec"]
    models = [m["name"] for m in harness.stack_config("local")["llm-platform:models"]]
    # autoload=false: a scrape never loads a model (tests/parts/test_llama_router.py).
    assert [ep["params"] for ep in sm["endpoints"]] == [{"model": [m], "autoload": ["false"]} for m in models]
    assert [ep["relabelings"][0]["replacement"] for ep in sm["endpoints"]] == models


def prometheus_rules(objs, ns) -> list[dict]:
    return [rule for p in of_kind(objs, AUTHZ, ns) for rule in p["spec"]["rules"]
            if monitoring.PROMETHEUS_PRINCIPAL in [pr for f in rule.get("from", []) for pr in f["source"].get("principals", [])]]


def test_the_mesh_admits_prometheus_to_exactly_the_metrics_ports_and_paths(stack):
    _, objs = stack
    for ns, targets in scrape_paths(objs).items():
        (rule,) = prometheus_rules(objs, ns)
        assert rule["from"] == [{"source": {"principals": [monitoring.PROMETHEUS_PRINCIPAL]}}]
        (op,) = [t["operation"] for t in rule["to"]]
        assert op["methods"] == ["GET"]
        assert set(op["paths"]) == set().union(*targets.values())
        assert set(op["ports"]) == {str(port) for _, port in targets}


def prometheus_peers(policy: dict) -> list[dict]:
    return [rule for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [])
            if peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == monitoring.NAMESPACE]


def test_network_policies_admit_prometheus_pods_to_exactly_those_ports(stack):
    _, objs = stack
    for ns, targets in scrape_paths(objs).items():
        rules = [r for p in of_kind(objs, NETPOL, ns) for r in prometheus_peers(p)]
        (rule,) = rules
        (peer,) = rule["from"]
        assert peer["podSelector"]["matchLabels"] == monitoring.PROMETHEUS_POD_LABELS
        assert {p["port"] for p in rule["ports"]} == {port for _, port in targets} | {ENVOY_STATS_PORT}


def test_prometheus_pods_are_the_ones_the_policies_name(stack):
    """The chart's Service selects the operator's Prometheus pods by the labels the
    NetworkPolicies name; the pod runs under the account the mesh admits."""
    _, objs = stack
    svc = named(objs, "Service", monitoring.PROMETHEUS_SERVICE, monitoring.NAMESPACE)
    assert svc["spec"]["selector"] == monitoring.PROMETHEUS_POD_LABELS
    assert {(p["port"], p.get("targetPort")) for p in svc["spec"]["ports"]} >= {(monitoring.PROMETHEUS_PORT,) * 2}
    assert monitoring.PROMETHEUS_URL == (f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}"
                                         f".svc.cluster.local:{monitoring.PROMETHEUS_PORT}")
    prom = named(objs, "Prometheus", monitoring.PROMETHEUS_SERVICE, monitoring.NAMESPACE)
    assert prom["spec"]["serviceAccountName"] == monitoring.PROMETHEUS_SERVICE_ACCOUNT
    assert named(objs, "ServiceAccount", monitoring.PROMETHEUS_SERVICE_ACCOUNT, monitoring.NAMESPACE)
    # Every ServiceMonitor and PodMonitor of the cluster, not only the chart's.
    for key in ("serviceMonitorSelector", "serviceMonitorNamespaceSelector", "podMonitorSelector",
                "podMonitorNamespaceSelector"):
        assert prom["spec"].get(key) == {}, key


def test_prometheus_holds_the_mesh_certificates_its_endpoints_present(stack):
    _, objs = stack
    spec = named(objs, "Prometheus", monitoring.PROMETHEUS_SERVICE, monitoring.NAMESPACE)["spec"]
    meta = spec["podMetadata"]
    assert meta["labels"]["sidecar.istio.io/inject"] == "true"
    out_dir = yaml.safe_load(meta["annotations"]["proxy.istio.io/config"])["proxyMetadata"]["OUTPUT_CERTS"]
    (proxy_mount,) = json.loads(meta["annotations"]["sidecar.istio.io/userVolumeMount"])
    assert proxy_mount["mountPath"] == out_dir
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == proxy_mount["name"]]
    (volume,) = [v for v in spec["volumes"] if v["name"] == proxy_mount["name"]]
    assert "emptyDir" in volume
    for f in ("caFile", "certFile", "keyFile"):
        assert monitoring.MESH_TLS[f].startswith(mount["mountPath"].rstrip("/") + "/")
    # No traffic captured: KEDA and Grafana reach it in plain HTTP; Prometheus dials targets itself.
    assert meta["annotations"]["traffic.sidecar.istio.io/includeInboundPorts"] == ""
    assert meta["annotations"]["traffic.sidecar.istio.io/includeOutboundIPRanges"] == ""
    # Istio injects a pod that asks for it, outside the injected namespaces too.
    ns = named(objs, "Namespace", monitoring.NAMESPACE)
    assert "istio-injection" not in ns["metadata"].get("labels", {})
    webhooks = [w for cfg in of_kind(objs, "MutatingWebhookConfiguration") for w in cfg.get("webhooks", [])
                if "sidecar-injector" in w["name"]]
    assert [w["name"] for w in webhooks if label_selects(w.get("namespaceSelector"), ns["metadata"]["labels"])
            and label_selects(w.get("objectSelector"), meta["labels"])] == ["object.sidecar-injector.istio.io"]


def label_selects(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    selector = selector or {}
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    ops = {"In": lambda k, vs: labels.get(k) in vs, "NotIn": lambda k, vs: labels.get(k) not in vs,
           "Exists": lambda k, _: k in labels, "DoesNotExist": lambda k, _: k not in labels}
    return all(ops[e["operator"]](e["key"], e.get("values", [])) for e in selector.get("matchExpressions", []))


def test_envoy_stats_port_is_on_every_injected_proxy(stack):
    """The PodMonitor's port name is the one istiod's injection templates give the proxy."""
    _, objs = stack
    pm = named(objs, "PodMonitor", "envoy-stats", monitoring.NAMESPACE)
    assert [ep["port"] for ep in pm["spec"]["podMetricsEndpoints"]] == [ENVOY_STATS_PORT_NAME]
    injector = named(objs, "ConfigMap", "istio-sidecar-injector", "istio-system")
    templates = yaml.safe_load(injector["data"]["config"])["templates"]
    (label,) = [e["key"] for e in pm["spec"]["selector"]["matchExpressions"] if e["operator"] == "Exists"]
    for name in ("sidecar", "gateway"):
        port = rf"containerPort: {ENVOY_STATS_PORT}(?:\s+\w+: \w+)*?\s+name: {ENVOY_STATS_PORT_NAME}\n"
        assert re.search(port, templates[name]), name
        # The label the PodMonitor selects injected pods by.
        assert re.search(rf"^\s+{re.escape(label)}: ", templates[name], re.M), name


def test_keda_reaches_prometheus_and_the_gateway_grafana_and_nothing_else(stack):
    _, objs = stack
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objs, NETPOL, monitoring.NAMESPACE)}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    keda = policies["allow-keda"]
    assert keda["podSelector"]["matchLabels"] == monitoring.PROMETHEUS_POD_LABELS
    assert keda["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "keda"}}}], "ports": [{"protocol": "TCP", "port": 9090}]}]
    gateway = policies["allow-gateway"]
    (grafana,) = pod_templates(objs, monitoring.NAMESPACE, gateway["podSelector"]["matchLabels"])
    svc = named(objs, "Service", monitoring.GRAFANA_SERVICE, monitoring.NAMESPACE)
    (port,) = svc["spec"]["ports"]
    assert port["port"] == monitoring.GRAFANA_PORT
    assert [p["port"] for p in gateway["ingress"][0]["ports"]] == [container_port(grafana, port["targetPort"])]
    # Only the monitoring namespace's own pods otherwise.
    assert policies["allow-same-namespace"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert set(policies) == {"default-deny-ingress", "allow-same-namespace", "allow-keda", "allow-gateway"}


def test_grafana_is_served_under_its_path_with_the_admin_password_from_a_secret(stack):
    rec, objs = stack
    route = ingress.rules(rec)["grafana"]
    assert route["matches"] == [{"path": {"type": "PathPrefix", "value": monitoring.GRAFANA_PATH}}]
    (ref,) = route["backendRefs"]
    assert f"{ref['name']}.{ref['namespace']}.svc.cluster.local" == monitoring.GRAFANA_SERVICE_HOST
    assert ref["port"] == monitoring.GRAFANA_PORT
    # Not the UI's catch-all "/", and not a path that merely starts the same.
    host = harness.MINIKUBE_IP if rec.stack == "local" else "anything"
    for path in (monitoring.GRAFANA_PATH, f"{monitoring.GRAFANA_PATH}/", f"{monitoring.GRAFANA_PATH}/api/health"):
        assert ingress.answer(rec, 80, host, path) == monitoring.GRAFANA_SERVICE_HOST, path
    assert ingress.answer(rec, 80, host, f"{monitoring.GRAFANA_PATH}ish") != monitoring.GRAFANA_SERVICE_HOST
    assert rec.outputs["grafanaUrl"].endswith(f"{monitoring.GRAFANA_PATH}/")
    assert "grafanaAdminPassword" in rec.secret_outputs
    ini = named(objs, "ConfigMap", monitoring.GRAFANA_SERVICE, monitoring.NAMESPACE)["data"]["grafana.ini"]
    assert "serve_from_sub_path = true" in ini and f"{monitoring.GRAFANA_PATH}/\n" in ini
    (grafana,) = pod_templates(objs, monitoring.NAMESPACE, monitoring.GRAFANA_POD_LABELS)
    env = {e["name"]: e for c in grafana["spec"]["containers"] for e in c.get("env", [])}
    secret = named(objs, "Secret", monitoring.GRAFANA_ADMIN_SECRET, monitoring.NAMESPACE)
    for var in ("GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == monitoring.GRAFANA_ADMIN_SECRET and ref["key"] in secret["stringData"]
    assert secret["stringData"]["admin-password"] == rec.outputs["grafanaAdminPassword"]
    data = rec.one("kubernetes:core/v1:Secret", "monitoring-grafana-admin").inputs["stringData"]
    assert harness.is_secret(data) or harness.is_secret(data["admin-password"])


def test_dashboards_are_provisioned_vllms_from_the_release_the_servers_run(stack):
    _, objs = stack
    script = named(objs, "ConfigMap", monitoring.GRAFANA_SERVICE, monitoring.NAMESPACE)["data"]["download_dashboards.sh"]
    urls = set(re.findall(r"https://raw\.githubusercontent\.com/vllm-project/\S+?\.json", script))
    assert urls == {f"https://raw.githubusercontent.com/vllm-project/vllm/v{VLLM_RELEASE}/examples/observability/"
                    f"dashboards/grafana/{f}" for f in monitoring.VLLM_DASHBOARDS}
    ours = named(objs, "ConfigMap", f"{monitoring.GRAFANA_SERVICE}-dashboards-{monitoring.DASHBOARDS_FOLDER}",
                 monitoring.NAMESPACE)["data"]
    assert set(ours) == set(monitoring.OWN_DASHBOARDS)
    for text in ours.values():
        assert json.loads(text)["panels"]


def kps_values(rec) -> dict:
    return harness.reveal(rec.one("kubernetes:helm.sh/v3:Release", "monitoring-kps").inputs["values"])


def test_light_on_the_laptop_full_on_the_clouds():
    light, full = kps_values(recording("local")), kps_values(recording("eks"))
    for part in ("alertmanager", "kubeStateMetrics", "nodeExporter"):
        assert light[part]["enabled"] is False and full[part]["enabled"] is True
    assert light["prometheus"]["prometheusSpec"]["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                                 "limits": {"memory": "768Mi"}}
    forced = kps_values(harness.run("eks", {"llm-platform:monitoring": {"light": True, "retention": "2d",
                                                                        "storageSize": "20Gi"}}))
    assert forced["alertmanager"]["enabled"] is False
    spec = forced["prometheus"]["prometheusSpec"]
    assert spec["retention"] == "2d"
    assert spec["storageSpec"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_without_monitoring_nothing_scrapes_and_nothing_admits_a_scraper():
    rec = harness.run("local", {"llm-platform:monitoring": {"enabled": False}})
    assert not [r for r in rec.registrations if "monitoring" in r.type or r.name.startswith("monitoring")]
    assert "grafanaUrl" not in rec.outputs
    for p in rec.of_type("kubernetes:security.istio.io/v1:AuthorizationPolicy"):
        assert monitoring.PROMETHEUS_PRINCIPAL not in json.dumps(p.inputs)
    for p in rec.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        assert monitoring.NAMESPACE not in json.dumps(p.inputs)
    assert "grafana" not in ingress.rules(rec)
    assert ingress.answer(rec, 80, harness.MINIKUBE_IP, "/grafana/") == "open-webui.open-webui.svc.cluster.local"
    assert not [g for g in ingress.objects(rec, "ReferenceGrant") if g["metadata"]["namespace"] == monitoring.NAMESPACE]


def test_a_bad_retention_is_refused_in_one_line():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("local", {"llm-platform:monitoring": {"retention": "two weeks"}})
    assert str(info.value.error).startswith("Pulumi.local.yaml: llm-platform:monitoring.retention: String should match")


def test_scrapes_in_plain_http_where_the_mesh_is_permissive():
    """With security.mtls off the targets' sidecars accept TLS on their HTTP chains only with
    Istio's own ALPN, which Prometheus does not offer: the ServiceMonitors scrape in plain HTTP
    there (and with the mesh certificates under STRICT, as shipped)."""
    rec = harness.run("local", {"llm-platform:security": {"mtls": False}})
    monitors = [harness.reveal(r.inputs["spec"]) for r in rec.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")]
    assert monitors
    for spec in monitors:
        for ep in spec["endpoints"]:
            assert ep["scheme"] == "http" and "tlsConfig" not in ep, ep
    strict = recording("local").of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
    assert {ep["scheme"] for r in strict for ep in harness.reveal(r.inputs["spec"])["endpoints"]} == {"https"}
