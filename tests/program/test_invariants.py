"""Invariants across the whole cluster a stack would have: the program's objects and every
chart's objects as Helm renders them (`tools.charts.cluster_objects`). Each check is a plain
function returning what it finds wrong, so each is shown once to fire on a broken copy.

Where today's program breaks an invariant, the test is marked `xfail(strict=True)` with the
reason: it flips to a failure (XPASS) the day the program is fixed, and the mark goes.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Iterator, Optional

import pytest

from tests import docs
from tools import charts
from tools import mock_engine as harness

@pytest.fixture(autouse=True)
def _charts_here():
    from tests.conftest import need_charts
    need_charts()


# --- helpers --------------------------------------------------------------------------------------


def ns_of(obj: dict) -> str:
    return obj["metadata"].get("namespace", "")


def name_of(obj: dict) -> str:
    return obj["metadata"]["name"]


def where(m: charts.Manifest) -> str:
    return f"{m.source} {m.obj['kind']} {ns_of(m.obj)}/{name_of(m.obj)}".replace(" /", " ")


def pod_templates(cluster: list[charts.Manifest]) -> Iterator[tuple[charts.Manifest, dict, dict]]:
    """(object, pod spec, pod labels) for every object that makes pods."""
    for m in cluster:
        kind, spec = m.obj["kind"], m.obj.get("spec") or {}
        if kind == "Pod":
            yield m, spec, m.obj["metadata"].get("labels") or {}
            continue
        if kind == "CronJob":
            spec = (spec.get("jobTemplate") or {}).get("spec") or {}
        elif kind not in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            continue
        template = spec.get("template") or {}
        yield m, template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {}


def containers(pod: dict) -> list[dict]:
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def exists(cluster, kind: str, name: str, namespace: Optional[str] = None) -> bool:
    return any(m.obj["kind"] == kind and name_of(m.obj) == name and (namespace is None or ns_of(m.obj) == namespace)
               for m in cluster)


# --- Istio protocol selection -----------------------------------------------------------------
# Istio picks a Service port's protocol from `appProtocol`, else from the port name's prefix
# before the first "-" ("grpc-web" whole), case-insensitive; an unknown prefix is sniffed, and
# the well-known ports 25/53/3306/27017 are TCP (pilot/pkg/serviceregistry/kube/conversion.go,
# pkg/config/protocol/instance.go in istio/istio).
ISTIO_PROTOCOLS = {"tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls",
                   "mongo", "redis", "mysql"}
HTTP_PROTOCOLS = {"http", "http2", "grpc", "grpc-web", "http_proxy"}
WELL_KNOWN_TCP = {25, 53, 3306, 27017}
# What a server speaks, from its image's repository name: the servers that never speak HTTP.
WIRE_BY_IMAGE = {"redis": "redis", "valkey": "redis", "keydb": "redis", "postgres": "postgres",
                 "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "mongo": "mongo",
                 "mongodb": "mongo", "memcached": "memcached"}


def istio_protocol(port: dict) -> str:
    if port.get("protocol") == "UDP":
        return "udp"
    name = (port.get("appProtocol") or port.get("name") or "").lower()
    if name.startswith("grpc-web"):
        return "grpc-web"
    prefix = name.split("-", 1)[0]
    if prefix in ISTIO_PROTOCOLS:
        return prefix
    return "tcp" if port.get("port") in WELL_KNOWN_TCP else "sniffed"


def image_repository(image: str) -> str:
    """`redis` for `docker.io/library/redis:7.4@sha256:...`."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def wire_protocol(image: str) -> Optional[str]:
    repo = image_repository(image)
    return next((wire for key, wire in WIRE_BY_IMAGE.items() if repo == key or repo.startswith(key + "-")), None)


def served_by(cluster, service: dict, port: dict) -> list[dict]:
    """The containers behind a Service port: pods its selector matches, the container port its
    targetPort names or numbers."""
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return []
    target = port.get("targetPort", port.get("port"))
    found = []
    for m, pod, labels in pod_templates(cluster):
        if ns_of(m.obj) != ns_of(service) or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for c in pod.get("containers") or []:
            for cp in c.get("ports") or []:
                if cp.get("name") == target or cp.get("containerPort") == target:
                    found.append(c)
    return found


def protocol_mismatches(cluster: list[charts.Manifest]) -> list[str]:
    """Service ports Istio would parse as HTTP while the server behind them speaks something else."""
    out = []
    for m in cluster:
        if m.obj["kind"] != "Service":
            continue
        for port in m.obj["spec"].get("ports") or []:
            declared = istio_protocol(port)
            if declared not in HTTP_PROTOCOLS:
                continue
            for c in served_by(cluster, m.obj, port):
                wire = wire_protocol(c.get("image", ""))
                if wire:
                    out.append(f"{where(m)} port {port.get('name')!r} ({port.get('port')}): Istio parses it "
                               f"as {declared}, but {c['image']} speaks {wire} (name it tcp-… or set appProtocol)")
    return out


# --- identities -----------------------------------------------------------------------------------

PRINCIPAL = re.compile(r"^[^/]+/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


def missing_principals(cluster: list[charts.Manifest]) -> list[str]:
    """AuthorizationPolicy principals whose ServiceAccount is rendered nowhere (every namespace
    has `default`, made by the controller manager)."""
    out = []
    for m in cluster:
        if m.obj["kind"] != "AuthorizationPolicy":
            continue
        for rule in m.obj.get("spec", {}).get("rules") or []:
            for src in rule.get("from") or []:
                source = src.get("source") or {}
                for principal in (source.get("principals") or []) + (source.get("notPrincipals") or []):
                    match = PRINCIPAL.match(principal)
                    if not match or "*" in principal:
                        continue
                    ns, sa = match["ns"], match["sa"]
                    if sa != "default" and not exists(cluster, "ServiceAccount", sa, ns):
                        out.append(f"{where(m)}: principal {principal} names ServiceAccount {ns}/{sa}, "
                                   f"which nothing creates")
    return out


# --- references -------------------------------------------------------------------------------------
# What the cluster itself (or its cloud) creates at run time, per stack: nothing renders these.
EVERY_CLUSTER = {
    # The scheduling system's own classes (kube-apiserver creates them at start).
    ("PriorityClass", None, "system-node-critical"),
    ("PriorityClass", None, "system-cluster-critical"),
}
# ConfigMaps published into every namespace: the API server's CA (kube-controller-manager) and
# the mesh's root certificate (istiod writes it where sidecars run).
EVERY_NAMESPACE = {("ConfigMap", "kube-root-ca.crt"), ("ConfigMap", "istio-ca-root-cert")}
PLATFORM = {
    # minikube's default-storageclass addon: class `standard` (hostpath provisioner), the default.
    "local": {("StorageClass", None, "standard")},
    # EKS creates `gp2` (in-tree EBS); the program's gp3 is the default class.
    "eks": {("StorageClass", None, "gp2")},
    # GKE creates `standard` (pd-standard), `standard-rwo` (pd-balanced CSI, the default) and
    # `premium-rwo` (pd-ssd CSI).
    "gke": {("StorageClass", None, "standard"), ("StorageClass", None, "standard-rwo"),
            ("StorageClass", None, "premium-rwo")},
}
DEFAULT_STORAGE_CLASS = {"local": "standard", "eks": None, "gke": "standard-rwo"}
# Secrets written at run time by the platform's own controllers and charts' hooks.
RUNTIME_SECRETS = {
    # Argo CD's chart makes the Redis password with a pre-install Job (redis-secret-init).
    ("argocd", "argocd-redis"),
    # istiod's self-signed root CA, written on first start.
    ("istio-system", "istio-ca-secret"),
    # KEDA's operator writes the TLS certificates of its metrics server and webhook on start
    # (the chart's certificates.autoGenerated).
    ("keda", "kedaorg-certs"),
}


def created_at_run_time(cluster) -> set[tuple[str, Optional[str], str]]:
    """Secrets that controllers in this render will write: cert-manager's Certificate secrets and
    ACME account keys (in cert-manager's namespace)."""
    out = set()
    cm_ns = next((ns_of(m.obj) for m in cluster if m.obj["kind"] == "Deployment"
                  and name_of(m.obj) == "cert-manager"), "cert-manager")
    for m in cluster:
        spec = m.obj.get("spec") or {}
        if m.obj["kind"] == "Certificate" and spec.get("secretName"):
            out.add(("Secret", ns_of(m.obj), spec["secretName"]))
        if m.obj["kind"] in ("ClusterIssuer", "Issuer"):
            key = ((spec.get("acme") or {}).get("privateKeySecretRef") or {}).get("name")
            if key:
                out.add(("Secret", cm_ns if m.obj["kind"] == "ClusterIssuer" else ns_of(m.obj), key))
    return out


def references(cluster) -> Iterator[tuple[charts.Manifest, str, Optional[str], str]]:
    """(referring object, kind, namespace or None, name) for every reference to a class, Secret,
    ConfigMap or ServiceAccount that must exist (optional references left out)."""
    for m in cluster:
        obj, spec = m.obj, m.obj.get("spec") or {}
        kind = obj["kind"]
        if kind == "Ingress" and spec.get("ingressClassName"):
            yield m, "IngressClass", None, spec["ingressClassName"]
        if kind in ("ClusterIssuer", "Issuer"):
            for solver in (spec.get("acme") or {}).get("solvers") or []:
                ingress = (solver.get("http01") or {}).get("ingress") or {}
                if ingress.get("ingressClassName"):
                    yield m, "IngressClass", None, ingress["ingressClassName"]
        if kind == "PersistentVolumeClaim" and spec.get("storageClassName"):
            yield m, "StorageClass", None, spec["storageClassName"]
        if kind == "StatefulSet":
            for claim in spec.get("volumeClaimTemplates") or []:
                if (claim.get("spec") or {}).get("storageClassName"):
                    yield m, "StorageClass", None, claim["spec"]["storageClassName"]
        if kind == "Gateway" and obj["apiVersion"].startswith("networking.istio.io/"):
            # Istio reads a server's certificate from a Secret in the gateway pods' namespace,
            # which the program keeps as the Gateway's own.
            for server in spec.get("servers") or []:
                if (server.get("tls") or {}).get("credentialName"):
                    yield m, "Secret", ns_of(obj), server["tls"]["credentialName"]
        if kind == "Gateway" and obj["apiVersion"].startswith("gateway.networking.k8s.io/"):
            # A listener's certificate: a Secret, in the Gateway's namespace unless it names another.
            for listener in spec.get("listeners") or []:
                for ref in (listener.get("tls") or {}).get("certificateRefs") or []:
                    if ref.get("kind", "Secret") == "Secret" and ref.get("group", "") == "":
                        yield m, "Secret", ref.get("namespace", ns_of(obj)), ref["name"]
        if kind == "HTTPRoute":
            # A rule's backend: a Service, in the route's namespace unless it names another.
            for rule in spec.get("rules") or []:
                for ref in rule.get("backendRefs") or []:
                    if ref.get("kind", "Service") == "Service" and ref.get("group", "") == "":
                        yield m, "Service", ref.get("namespace", ns_of(obj)), ref["name"]
    for m, pod, _ in pod_templates(cluster):
        ns = ns_of(m.obj)
        if pod.get("serviceAccountName") not in (None, "", "default"):
            yield m, "ServiceAccount", ns, pod["serviceAccountName"]
        if pod.get("priorityClassName"):
            yield m, "PriorityClass", None, pod["priorityClassName"]
        for c in containers(pod):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {})
                for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if key in ref and not ref[key].get("optional"):
                        yield m, kind, ns, ref[key]["name"]
            for src in c.get("envFrom") or []:
                for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                    if key in src and not src[key].get("optional"):
                        yield m, kind, ns, src[key]["name"]
        for vol in pod.get("volumes") or []:
            sources = [vol] + [s for s in (vol.get("projected") or {}).get("sources") or []]
            for s in sources:
                if "secret" in s and not s["secret"].get("optional"):
                    yield m, "Secret", ns, s["secret"].get("secretName") or s["secret"].get("name")
                if "configMap" in s and not s["configMap"].get("optional"):
                    yield m, "ConfigMap", ns, s["configMap"]["name"]
        for secret in pod.get("imagePullSecrets") or []:
            yield m, "Secret", ns, secret["name"]


def dangling_references(cluster: list[charts.Manifest], stack: str) -> list[str]:
    made = {(m.obj["kind"], ns_of(m.obj) or None, name_of(m.obj)) for m in cluster}
    made |= EVERY_CLUSTER | PLATFORM.get(stack, set()) | created_at_run_time(cluster)
    made |= {("Secret", ns, name) for ns, name in RUNTIME_SECRETS}
    # A claim may bind statically to a PersistentVolume of the same class name.
    made |= {("StorageClass", None, (m.obj.get("spec") or {}).get("storageClassName"))
             for m in cluster if m.obj["kind"] == "PersistentVolume"}
    out = []
    for m, kind, ns, name in references(cluster):
        if (kind, name) in EVERY_NAMESPACE or (kind, ns, name) in made:
            continue
        out.append(f"{where(m)} refers to {kind} {ns + '/' if ns else ''}{name}, which nothing creates")
    # A claim without a class takes the cluster's default: there must be one.
    defaults = {name_of(m.obj) for m in cluster if m.obj["kind"] == "StorageClass" and
                (m.obj["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true"}
    if DEFAULT_STORAGE_CLASS.get(stack):
        defaults.add(DEFAULT_STORAGE_CLASS[stack])
    for m in cluster:
        claims = [m.obj] if m.obj["kind"] == "PersistentVolumeClaim" else (
            (m.obj.get("spec") or {}).get("volumeClaimTemplates") or [] if m.obj["kind"] == "StatefulSet" else [])
        for claim in claims:
            if "storageClassName" not in (claim.get("spec") or {}) and not defaults:
                out.append(f"{where(m)} asks the default StorageClass, and the cluster has none")
    return out


# --- NetworkPolicy enforcement --------------------------------------------------------------------
ENFORCING_MINIKUBE_CNIS = {"calico", "cilium"}
ENFORCING_CNI_CHARTS = {"cilium", "calico", "tigera-operator"}


def enforces_network_policies(rec: harness.Recording) -> Optional[bool]:
    """Whether the cluster the recording creates enforces NetworkPolicies (None: not known, an
    existing cluster). Read from what the program really creates."""
    if any(r.chart in ENFORCING_CNI_CHARTS for r in charts.chart_releases(rec)):
        return True
    for reg in rec.registrations:
        inputs = harness.reveal(reg.inputs)
        if reg.type == "command:local:Command" and "minikube start" in str(inputs.get("create", "")):
            cni = re.search(r"--cni[= ](\S+)", inputs["create"])
            return bool(cni) and cni.group(1) in ENFORCING_MINIKUBE_CNIS
        if reg.type == "aws:eks/cluster:Cluster":
            addon = next((harness.reveal(a.inputs) for a in rec.of_type("aws:eks/addon:Addon")
                          if harness.reveal(a.inputs).get("addonName") == "vpc-cni"), None)
            raw = (addon or {}).get("configurationValues") or "{}"
            return str(json.loads(raw).get("enableNetworkPolicy", "")).lower() == "true"
        if reg.type == "gcp:container/cluster:Cluster":
            return (inputs.get("datapathProvider") == "ADVANCED_DATAPATH"
                    or bool((inputs.get("networkPolicy") or {}).get("enabled")))
    return None


def unenforced_network_policies(rec: harness.Recording, cluster: list[charts.Manifest]) -> list[str]:
    policies = [m for m in cluster if m.obj["kind"] == "NetworkPolicy"]
    if not policies or enforces_network_policies(rec) is not False:
        return []
    return [f"{where(m)}: the cluster's CNI does not enforce NetworkPolicies" for m in policies]


# --- pins -------------------------------------------------------------------------------------------
FLOATING_TAGS = {"", "latest", "main", "master", "nightly", "stable", "edge", "dev", "head"}
DOCS = docs.text()  # README.md and docs/*.md


def image_tag(image: str) -> Optional[str]:
    if "@sha256:" in image:
        return None  # a digest pins it
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def injected_proxy_image(cluster) -> Optional[str]:
    """The proxy image istiod injects where a chart says `image: auto` (its injector values)."""
    for m in cluster:
        if m.obj["kind"] == "ConfigMap" and name_of(m.obj).startswith("istio-sidecar-injector"):
            glob = json.loads(m.obj["data"]["values"])["global"]
            return f"{glob['hub']}/{glob['proxy']['image']}:{glob['tag']}"
    return None


def unpinned_images(cluster: list[charts.Manifest]) -> list[str]:
    out = []
    proxy = injected_proxy_image(cluster)
    for m, pod, _ in pod_templates(cluster):
        for c in containers(pod):
            image = c.get("image", "")
            if image == "auto":  # Istio's gateway chart: istiod injects its proxy image
                image = proxy or image
            if image_tag(image) is not None and image_tag(image).lower() in FLOATING_TAGS:
                out.append(f"{where(m)} container {c.get('name')}: {image} is not pinned to a version")
    if proxy and image_tag(proxy) is not None and image_tag(proxy).lower() in FLOATING_TAGS:
        out.append(f"istiod injects sidecars of {proxy}, not pinned to a version")
    return sorted(set(out))


def undocumented_program_images(cluster: list[charts.Manifest]) -> list[str]:
    """Images the program itself chooses must be the pins the docs state (docs/operations.md)."""
    return sorted({f"{where(m)}: {c['image']} is not named in README.md or docs/"
                   for m, pod, _ in pod_templates(cluster) if m.source.startswith("program:")
                   for c in containers(pod) if f"`{c['image']}`" not in DOCS})


def unvendored_charts(rec: harness.Recording) -> list[str]:
    return [f"{r.name}: {r.chart} {r.version} is not in ../shared/upstream/charts"
            for r in charts.chart_releases(rec) if not r.extra and not r.archive.is_file()]


# --- custom resources wait for the release with their CRDs ----------------------------------------
# A custom resource applied before its CRD exists fails (`no matches for kind`), and so does a
# chart whose templates hold one: each must wait for the registration that installs the CRD,
# found by rendering every release and reading the group and kind of the CRDs it installs.

BUILTIN_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "admissionregistration.k8s.io", "apiextensions.k8s.io",
    "apiregistration.k8s.io", "certificates.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
    "events.k8s.io", "flowcontrol.apiserver.k8s.io", "networking.k8s.io", "node.k8s.io",
    "rbac.authorization.k8s.io", "resource.k8s.io", "scheduling.k8s.io", "storage.k8s.io",
}


def group_kind(obj: dict) -> tuple[str, str]:
    return obj.get("apiVersion", "").rpartition("/")[0], obj.get("kind", "")


def crd_installers(rec: harness.Recording) -> dict[tuple[str, str], set[str]]:
    """(group, kind) -> URNs of what installs its CRD: the Helm releases whose rendered chart
    carries it, the ConfigGroups whose files do, or the program's own CustomResourceDefinition."""
    kube = charts.kube_version(rec.stack)
    out: dict[tuple[str, str], set[str]] = {}
    for release in charts.chart_releases(rec):
        if release.via != "helm":
            continue  # Argo CD syncs its apps itself, retrying until their CRDs exist
        urn = rec.one(charts.HELM_RELEASE, release.logical).urn
        for obj in charts.render_release(release, kube):
            if obj["kind"] == "CustomResourceDefinition":
                out.setdefault((obj["spec"]["group"], obj["spec"]["names"]["kind"]), set()).add(urn)
    for reg in rec.of_type(charts.CONFIG_GROUP):
        for obj in charts.config_group_objects(reg):
            if obj["kind"] == "CustomResourceDefinition":
                out.setdefault((obj["spec"]["group"], obj["spec"]["names"]["kind"]), set()).add(reg.urn)
    for reg in rec.kubernetes_objects():
        obj = charts.plain(reg.inputs)
        if obj.get("kind") == "CustomResourceDefinition":
            out.setdefault((obj["spec"]["group"], obj["spec"]["names"]["kind"]), set()).add(reg.urn)
    return out


def custom_resources_before_their_crds(rec: harness.Recording) -> list[str]:
    """Every custom resource the program applies, and every Helm release whose templates render
    one, that does not wait (directly or through what it waits for) for the installer of its CRD."""
    installers = crd_installers(rec)
    kube = charts.kube_version(rec.stack)
    problems = []

    def check(what: str, reg: harness.Registration, key: tuple[str, str]) -> None:
        if key[0] in BUILTIN_GROUPS:
            return
        if key not in installers:
            problems.append(f"{what}: {key[1]} ({key[0]}): no registration of the stack installs its CRD")
        elif not installers[key] & (rec.depends_transitively(reg) | {reg.urn}):
            problems.append(f"{what}: {key[1]} ({key[0]}) does not wait for "
                            f"{sorted(rec.by_urn(u).name for u in installers[key])}, which installs its CRD")

    for reg in rec.kubernetes_objects():
        obj = charts.plain(reg.inputs)
        if obj.get("kind") and obj["kind"] != "CustomResourceDefinition":
            check(reg.name, reg, group_kind(obj))
    for release in charts.chart_releases(rec):
        if release.via != "helm":
            continue
        reg = rec.one(charts.HELM_RELEASE, release.logical)
        objs = charts.render_release(release, kube)
        own = {(o["spec"]["group"], o["spec"]["names"]["kind"]) for o in objs if o["kind"] == "CustomResourceDefinition"}
        for key in sorted({group_kind(o) for o in objs} - own):
            check(f"{reg.name} (chart {release.chart})", reg, key)
    return problems


# --- the tests --------------------------------------------------------------------------------------


def stack_of(variant: str) -> str:
    return variant.split("-", 1)[0]


def test_istio_parses_every_port_as_what_it_serves(cluster):
    assert not protocol_mismatches(cluster)


def test_every_principal_names_a_rendered_service_account(cluster):
    assert not missing_principals(cluster)


def test_every_class_secret_and_config_map_referenced_is_created(cluster, variant):
    assert not dangling_references(cluster, stack_of(variant))


def test_network_policies_only_where_the_cni_enforces_them(stack_recording, cluster):
    assert not unenforced_network_policies(stack_recording, cluster)


def test_every_image_is_pinned(cluster):
    assert not unpinned_images(cluster)


def test_every_image_the_program_chooses_is_documented(cluster):
    assert not undocumented_program_images(cluster)


def test_every_chart_is_pinned_to_a_vendored_release(stack_recording):
    assert not unvendored_charts(stack_recording)


def test_custom_resources_wait_for_the_release_with_their_crds(stack_recording):
    problems = custom_resources_before_their_crds(stack_recording)
    assert not problems, "\n".join(problems)


# --- each invariant fires -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eks_cluster():
    from tests.conftest import need_charts, recording
    need_charts()
    return recording("eks"), charts.cluster_objects(recording("eks"))


def _edited(cluster, kind, name, edit):
    out = []
    for m in cluster:
        if m.obj["kind"] == kind and name_of(m.obj) == name:
            obj = copy.deepcopy(m.obj)
            edit(obj)
            m = charts.Manifest(m.source, obj)
        out.append(m)
    return out


def _redis_port(name, app_protocol=None):
    def edit(obj):
        obj["spec"]["ports"][0]["name"] = name
        obj["spec"]["ports"][0].pop("appProtocol", None)
        if app_protocol:
            obj["spec"]["ports"][0]["appProtocol"] = app_protocol
    return edit


def test_a_redis_port_named_http_is_flagged_and_tcp_is_not(eks_cluster):
    _, cluster = eks_cluster
    found = protocol_mismatches(_edited(cluster, "Service", "open-webui-redis", _redis_port("http")))
    assert any("open-webui-redis port 'http'" in f and "speaks redis" in f for f in found), found
    assert not protocol_mismatches(_edited(cluster, "Service", "open-webui-redis", _redis_port("tcp-redis")))
    assert not protocol_mismatches(_edited(cluster, "Service", "open-webui-redis", _redis_port("http", "redis")))


def test_istio_protocol_rules():
    assert istio_protocol({"name": "http-web", "port": 80}) == "http"
    assert istio_protocol({"name": "HTTP2", "port": 80}) == "http2"
    assert istio_protocol({"name": "grpc-web-x", "port": 80}) == "grpc-web"
    assert istio_protocol({"name": "http", "appProtocol": "tcp", "port": 80}) == "tcp"
    assert istio_protocol({"name": "database", "port": 3306}) == "tcp"
    assert istio_protocol({"name": "web", "port": 8080}) == "sniffed"
    assert wire_protocol("docker.io/library/redis:7.4.2-alpine3.21") == "redis"
    assert wire_protocol("ghcr.io/open-webui/open-webui:0.9.1") is None


def test_a_principal_without_its_service_account_is_flagged(eks_cluster):
    _, cluster = eks_cluster

    def principals(*sas):
        def edit(obj):
            # The UI calls the front door (the models take only the front door's identity).
            if obj["metadata"]["namespace"] == "front-door":
                obj["spec"]["rules"][0]["from"][0]["source"]["principals"] = [f"cluster.local/ns/{sa}" for sa in sas]
        return edit
    # The chart's own default name, which the program overrides.
    wrong = principals("istio-ingress/sa/istio-ingress", "open-webui/sa/open-webui-sa")
    assert missing_principals(_edited(cluster, "AuthorizationPolicy", "allowed-callers", wrong)) == [
        "program:mesh AuthorizationPolicy front-door/allowed-callers: principal "
        "cluster.local/ns/open-webui/sa/open-webui-sa names ServiceAccount open-webui/open-webui-sa, which nothing creates"]
    right = principals("istio-ingress/sa/istio-ingress", "open-webui/sa/open-webui")
    assert not missing_principals(_edited(cluster, "AuthorizationPolicy", "allowed-callers", right))


def test_a_reference_to_nothing_is_flagged(eks_cluster):
    _, cluster = eks_cluster

    def no_class(obj):
        obj["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = "fast-nvme"
    found = dangling_references(_edited(cluster, "StatefulSet", "qwen", no_class), "eks")
    assert found == ["program:model-qwen StatefulSet models/qwen refers to StorageClass fast-nvme, "
                     "which nothing creates"]

    def no_secret(obj):
        env = obj["spec"]["template"]["spec"]["containers"][0].setdefault("env", [])
        env.append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}})
    found = dangling_references(_edited(cluster, "StatefulSet", "open-webui", no_secret), "eks")
    assert found == ["chart:open-webui StatefulSet open-webui/open-webui refers to Secret open-webui/missing, "
                     "which nothing creates"]

    def no_account(obj):
        obj["spec"]["template"]["spec"]["serviceAccountName"] = "open-webui-sa"
    assert dangling_references(_edited(cluster, "StatefulSet", "open-webui", no_account), "eks") == [
        "chart:open-webui StatefulSet open-webui/open-webui refers to ServiceAccount open-webui/open-webui-sa, "
        "which nothing creates"]

    def no_priority(obj):
        obj["spec"]["template"]["spec"]["priorityClassName"] = "llm-servng"
    assert dangling_references(_edited(cluster, "StatefulSet", "qwen", no_priority), "eks")

    def no_backend(obj):
        ui = next(r for r in obj["spec"]["rules"] if r["name"] == "ui")
        ui["backendRefs"][0]["name"] = "openwebui"
    assert dangling_references(_edited(cluster, "HTTPRoute", "llm-routes", no_backend), "eks") == [
        "program:gateway HTTPRoute istio-ingress/llm-routes refers to Service open-webui/openwebui, "
        "which nothing creates"]

    issuer = charts.Manifest("program:gateway", {
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "acme"},
        "spec": {"acme": {"privateKeySecretRef": {"name": "acme-key"},
                          "solvers": [{"http01": {"ingress": {"ingressClassName": "istio"}}}]}}})
    assert dangling_references(cluster + [issuer], "eks") == [
        "program:gateway ClusterIssuer acme refers to IngressClass istio, which nothing creates"]
    ingress_class = charts.Manifest("program:gateway", {
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "istio"},
        "spec": {"controller": "istio.io/ingress-controller"}})
    assert not dangling_references(cluster + [issuer, ingress_class], "eks")


def _without_vpc_cni(rec):
    bare = copy.copy(rec)
    bare.registrations = [r for r in rec.registrations
                          if not (r.type == "aws:eks/addon:Addon" and r.inputs.get("addonName") == "vpc-cni")]
    return bare


def test_unenforced_network_policies_are_flagged_and_an_enforcing_cni_clears_them(eks_cluster):
    rec, cluster = eks_cluster
    bare = _without_vpc_cni(rec)
    assert enforces_network_policies(bare) is False
    assert unenforced_network_policies(bare, cluster)
    enforcing = copy.copy(bare)
    addon = copy.deepcopy(rec.registrations[0])
    addon.type, addon.inputs = "aws:eks/addon:Addon", {"addonName": "vpc-cni",
                                                        "configurationValues": '{"enableNetworkPolicy": "true"}'}
    enforcing.registrations = bare.registrations + [addon]
    assert enforces_network_policies(enforcing) is True
    assert not unenforced_network_policies(enforcing, cluster)


def test_network_policy_enforcement_is_read_from_each_cluster_kind():
    from tests.conftest import recording
    for variant in ("local", "gke"):
        rec = recording(variant)
        assert enforces_network_policies(rec) is True, variant
        # The same recording without the enforcing CNI.
        bare = copy.copy(rec)
        regs = copy.deepcopy(rec.registrations)
        for reg in regs:
            if reg.type == "command:local:Command" and "minikube start" in str(harness.reveal(reg.inputs.get("create"))):
                reg.inputs = {**reg.inputs, "create": harness.reveal(reg.inputs["create"]).replace(
                    "--cni calico", "")}
            if reg.type == "gcp:container/cluster:Cluster":
                reg.inputs = {k: v for k, v in reg.inputs.items() if k != "datapathProvider"}
        bare.registrations = regs
        assert enforces_network_policies(bare) is False, variant


def test_floating_and_undocumented_images_are_flagged(eks_cluster):
    _, cluster = eks_cluster

    def pinned(obj):
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/istio/pilot:1.30.3"
    assert not any("Deployment istio-system/istiod" in f for f in unpinned_images(_edited(cluster, "Deployment", "istiod", pinned)))

    def latest(obj):
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.istio.io/testing/pilot:latest"
    found = unpinned_images(_edited(cluster, "Deployment", "istiod", latest))
    assert any("registry.istio.io/testing/pilot:latest" in f for f in found), found

    def floating(obj):
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:latest"
    edited = _edited(cluster, "StatefulSet", "qwen", floating)
    assert any("vllm/vllm-openai:latest" in f for f in unpinned_images(edited))
    assert any("vllm/vllm-openai:latest" in f for f in undocumented_program_images(edited))
    assert image_tag("redis@sha256:" + "0" * 64) is None and image_tag("redis") == ""


def test_a_chart_pin_with_no_archive_is_flagged(eks_cluster):
    rec, _ = eks_cluster
    broken = copy.copy(rec)
    regs = copy.deepcopy(rec.registrations)
    for reg in regs:
        if reg.type == charts.HELM_RELEASE and reg.inputs.get("chart") == "argo-cd":
            reg.inputs = {**reg.inputs, "version": "10.1.3"}
    broken.registrations = regs
    assert unvendored_charts(broken) == ["argocd: argo-cd 10.1.3 is not in ../shared/upstream/charts"]


@pytest.mark.parametrize("variant, name", [
    ("eks", "monitoring-envoy-stats"),         # the PodMonitor
    ("eks", "monitoring-model-qwen"),          # a ServiceMonitor
    ("eks-autoscaled", "autoscaling-qwen"),     # the ScaledObject
    ("eks", "cluster-gpu-nodes-node-pool"),    # Karpenter's NodePool
    ("eks", "gpu-metrics-exporter"),           # a chart whose ServiceMonitor needs kps's CRD
    ("eks", "gateway-routes"),                 # the HTTPRoute, whose CRD a ConfigGroup applies
    ("eks", "gateway-routes-to-models"),       # a ReferenceGrant
])
def test_a_custom_resource_that_does_not_wait_for_its_crd_is_flagged(variant, name):
    """The same registration without its dependencies: nothing makes it wait for the release
    that installs its CRD any more (a first `up` would race)."""
    from tests.conftest import recording

    rec = recording(variant)
    assert not [p for p in custom_resources_before_their_crds(rec) if p.startswith(name)]
    broken = copy.copy(rec)
    regs = copy.deepcopy(rec.registrations)
    target = next(r for r in regs if r.name == name)
    target.dependencies = []
    target.parent = ""  # nor through its component's dependencies
    broken.registrations = regs
    problems = custom_resources_before_their_crds(broken)
    assert any("does not wait for" in p for p in problems), problems
