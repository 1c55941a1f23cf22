"""The upstream charts a stack installs, rendered by real Helm (the SDK bundled by PyPI's
helm-python-sdk: no helm binary, no network), with exactly the values the program passes.

Every chart release comes from a mock-engine recording: the Helm releases the program
registers and the Argo CD Applications it creates (Argo CD renders those with Helm too).
Each is rendered from the archive vendored in `<repo>/../shared/upstream/charts`, checked
against its SHA256SUMS; a release whose pinned chart is not there fails, because what the
suite renders must be what a real `up` would install.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from tools import mock_engine


# libyaml's parser when present: the charts' CRDs are large.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


# YAML 1.1's "=" (value) tag: a plain `=` in the Prometheus operator's CRDs (an enum of
# relabel actions) is just the string, as Kubernetes reads it.
_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))

SHARED_DIR = mock_engine.PROJECT_DIR.parent / "shared"
CHARTS_DIR = SHARED_DIR / "upstream" / "charts"
CRDS_DIR = SHARED_DIR / "upstream" / "crds"

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
# Manifests the program applies from files (the Gateway API's and the Inference Extension's CRDs).
CONFIG_GROUP = "kubernetes:yaml/v2:ConfigGroup"
APPLICATION = "Application"

# Kinds the API server keeps outside namespaces (built in; CRDs say their own scope).
CLUSTER_SCOPED = {
    "APIService", "CertificateSigningRequest", "ClusterRole", "ClusterRoleBinding", "CSIDriver",
    "CSINode", "CustomResourceDefinition", "DeviceClass", "FlowSchema", "IngressClass",
    "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding", "MutatingWebhookConfiguration",
    "Namespace", "Node", "PersistentVolume", "PriorityClass", "PriorityLevelConfiguration",
    "RuntimeClass", "StorageClass", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration", "VolumeAttachment", "VolumeAttributesClass",
}

# Istio's charts keep their defaults under this key and merge them in a template.
ISTIO_DEFAULTS = "_internal_defaults_do_not_set"


class ChartError(Exception):
    """A chart release cannot be rendered as pinned, or its values do not fit the chart."""


@dataclass(frozen=True)
class ChartRelease:
    """One chart the stack installs: by a Helm release or through an Argo CD Application."""

    via: str            # "helm" or "argocd"
    logical: str        # the registration's logical name
    chart: str
    version: str
    name: str           # release name
    namespace: str
    repo: str
    values: dict = field(compare=False, hash=False)
    # A chart the user added under `apps`: not pinned by the platform, may be absent here.
    extra: bool = False
    # Installed without the chart's crds/ folder (they come from a chart of their own).
    skip_crds: bool = False

    @property
    def archive(self) -> Path:
        return CHARTS_DIR / f"{self.chart}-{self.version}.tgz"

    @property
    def key(self) -> str:
        return json.dumps([self.chart, self.version, self.name, self.namespace, self.values, self.skip_crds],
                          sort_keys=True)


@dataclass(frozen=True)
class Manifest:
    source: str   # "program:<component name>" or "chart:<release name>"
    obj: dict     # one Kubernetes object, secrets revealed


def plain(value: Any) -> Any:
    """A recorded input as the API server would receive it: secrets revealed, and the
    engine's floats that are whole numbers turned back into integers."""
    value = mock_engine.reveal(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --- what the stack installs ---------------------------------------------------------------


def stack_config(stack: str):
    from components import config
    raw = {k.split(":", 1)[1]: v for k, v in mock_engine.stack_config(stack).items()
           if k.startswith(f"{config.PROJECT}:")}
    return config.parse(raw, f"Pulumi.{stack}.yaml")


def kube_version(stack: str) -> str:
    """The Kubernetes version the stack's cluster runs, as Helm's capabilities spell it."""
    version = stack_config(stack).cluster.kubernetes_version
    version = version if version.startswith("v") else f"v{version}"
    return version if version.count(".") == 2 else f"{version}.0"


def _platform_app(name: str) -> bool:
    """Whether an Argo CD app is one the platform pins (not one the user added under `apps`)."""
    from components.edge import apps
    return name == apps.OPEN_WEBUI


def chart_releases(rec: mock_engine.Recording) -> list[ChartRelease]:
    """Every chart the recorded program installs: Helm releases and Argo CD chart apps."""
    out = []
    for reg in rec.registrations:
        if reg.type == HELM_RELEASE:
            i = plain(reg.inputs)
            chart, repo = i["chart"], (i.get("repositoryOpts") or {}).get("repo", "")
            if chart.startswith("oci://"):  # an OCI registry names the chart in its reference
                repo, _, chart = chart.rpartition("/")
            out.append(ChartRelease(
                via="helm", logical=reg.name, chart=chart, version=str(i.get("version") or ""),
                name=i.get("name") or reg.name, namespace=i.get("namespace") or "default",
                repo=repo, values=i.get("values") or {}, skip_crds=bool(i.get("skipCrds"))))
        elif reg.type.startswith("kubernetes:") and reg.inputs.get("kind") == APPLICATION:
            i = plain(reg.inputs)
            source, dest = i["spec"]["source"], i["spec"]["destination"]
            if not source.get("chart"):
                continue  # a Git path, not a chart
            helm = source.get("helm") or {}
            values = helm.get("valuesObject") or (yaml.safe_load(helm["values"]) if helm.get("values") else {})
            name = helm.get("releaseName") or i["metadata"]["name"]
            out.append(ChartRelease(
                via="argocd", logical=reg.name, chart=source["chart"], version=str(source.get("targetRevision", "")),
                name=name, namespace=dest.get("namespace") or "default", repo=source.get("repoURL", ""),
                values=values, extra=not _platform_app(i["metadata"]["name"])))
    return out


# --- archives ---------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _sums() -> dict[str, str]:
    sums = {}
    for line in (CHARTS_DIR / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


@lru_cache(maxsize=None)
def provenance() -> dict[tuple[str, str], dict[str, str]]:
    """(chart, version) -> its PROVENANCE.tsv row (upstream repository, tag, commit, path)."""
    lines = (CHARTS_DIR / "PROVENANCE.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line.strip()]
    return {(r["chart"], r["version"]): r for r in rows}


def archive(release: ChartRelease) -> Path:
    """The vendored archive of the release's pinned chart, its checksum verified."""
    path = release.archive
    if not path.is_file():
        raise ChartError(f"{release.name}: chart {release.chart} {release.version} is pinned but "
                         f"{path.name} is not in ../shared/upstream/charts (is the pin a real release?)")
    return _verified(path)


@lru_cache(maxsize=None)
def _verified(path: Path) -> Path:
    expected = _sums().get(path.name)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected != actual:
        raise ChartError(f"{path.name}: sha256 {actual} does not match SHA256SUMS ({expected})")
    return path


@lru_cache(maxsize=None)
def _chart(path: Path):
    return _load(path)


def _load(path: Path):
    import helm_python
    return helm_python.Chart.load(str(_with_subcharts(path)))


@lru_cache(maxsize=None)
def _with_subcharts(path: Path) -> Path:
    """The archive, or where there are vendored subcharts to add, the chart unpacked with them
    beside it, as `helm dependency build` would leave it."""
    subcharts = _vendored_subcharts(path)
    if not subcharts:
        return path
    root = Path(tempfile.mkdtemp(prefix="chart-"))
    with tarfile.open(path) as tar:
        tar.extractall(root, filter="data")
    (chart_dir,) = [d for d in root.iterdir() if d.is_dir()]
    for sub in subcharts.values():
        with tarfile.open(sub) as tar:
            tar.extractall(chart_dir / "charts", filter="data")
    return chart_dir


def _chart_yaml(path: Path) -> dict:
    with tarfile.open(path) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/Chart.yaml")]
        chart_yaml = tar.extractfile(member)
        assert chart_yaml is not None  # a regular file, by its name
        return yaml.safe_load(chart_yaml.read())


@lru_cache(maxsize=None)
def _vendored_subcharts(path: Path) -> dict[str, Path]:
    """Dependency name (or alias) -> vendored archive, for the subcharts a chart names from a
    repository but does not carry (kube-prometheus-stack's archive is cut from its Git source;
    the published package has them), found vendored at a version the chart accepts. One not
    vendored is left out, as for a disabled one (Argo CD's redis-ha): tests that need a
    subchart's objects look for them."""
    with tarfile.open(path) as tar:
        carried = {m.name.split("/")[2] for m in tar.getmembers() if m.name.count("/") >= 3
                   and m.name.split("/")[1] == "charts"}
    out = {}
    for dep in _chart_yaml(path).get("dependencies") or []:
        if not dep.get("repository") or dep["name"] in carried:
            continue
        found = sorted(p for p in CHARTS_DIR.glob(f"{dep['name']}-*.tgz")
                       if fnmatch.fnmatch(p.name[len(dep["name"]) + 1:-len(".tgz")], str(dep["version"])))
        if found:
            out[dep.get("alias") or dep["name"]] = _verified(found[-1])
    return out


def chart_of(release: ChartRelease):
    """The loaded Helm chart (kept for the session)."""
    return _chart(archive(release))


# --- rendering ------------------------------------------------------------------------------

# (release@kube version, seconds) of every render this process made.
RENDER_SECONDS: list[tuple[str, float]] = []
_RENDERED: dict[tuple[str, str], list[dict]] = {}


def _helm_render(chart, values: dict, name: str, namespace: str, kube_version: str) -> dict[str, str]:
    # Chart.render does not pass the capabilities through; the library's render call takes
    # them in its options (as `helm template --kube-version` does).
    from helm_python import _native
    opts = {"name": name, "namespace": namespace, "revision": 1, "is_install": True,
            "kube_version": kube_version}
    return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))


# Helm's own split of a rendered template into documents: "---" ends a document even when
# a comment follows it on the same line ("---# ..."), which a YAML parser refuses.
_SEPARATOR = re.compile(r"(?:^|\s*\n)---\s*")


def split_manifests(text: str) -> list:
    return [yaml.load(part, Loader=_Loader) for part in _SEPARATOR.split(text) if part.strip()]


def _is_test_hook(obj: dict) -> bool:
    hooks = ((obj.get("metadata") or {}).get("annotations") or {}).get("helm.sh/hook", "")
    return "test" in [h.strip() for h in hooks.split(",")]


def render_release(release: ChartRelease, kube_version: str) -> list[dict]:
    """The objects Helm installs for `release` (CRDs first, then templates; test hooks left
    out), namespaced objects in the release namespace. Rendered once per session; each call
    returns its own copy."""
    cache_key = (release.key, kube_version)
    if cache_key in _RENDERED:
        return copy.deepcopy(_RENDERED[cache_key])
    # Rendering drops a chart's disabled subcharts from the loaded chart itself: one with
    # subcharts is loaded afresh for each render.
    path = archive(release)
    chart = _load(path) if _vendored_subcharts(path) else chart_of(release)
    started = time.perf_counter()
    try:
        rendered = _helm_render(chart, release.values, release.name, release.namespace, kube_version)
    except Exception as err:
        raise ChartError(f"{release.name}: {release.chart} {release.version} does not render: {err}") from err
    objs = []
    for crd in [] if release.skip_crds else chart.crds:
        objs += [d for d in yaml.load_all(crd["data"], Loader=_Loader) if d]
    for template in sorted(rendered):
        if template.endswith("NOTES.txt") or not rendered[template].strip():
            continue
        for doc in split_manifests(rendered[template]):
            if isinstance(doc, dict) and doc.get("kind") and not _is_test_hook(doc):
                objs.append(doc)
    scopes = crd_scopes(objs)
    for obj in objs:
        if namespaced(obj, scopes):
            obj.setdefault("metadata", {})
            if not obj["metadata"].get("namespace"):
                obj["metadata"]["namespace"] = release.namespace
    RENDER_SECONDS.append((f"{release.name}@{kube_version}", time.perf_counter() - started))
    _RENDERED[cache_key] = objs
    return copy.deepcopy(objs)


def crd_scopes(objs: list[dict]) -> dict[tuple[str, str], str]:
    """(group, kind) -> "Namespaced" or "Cluster", for every CRD among `objs`."""
    return {(o["spec"]["group"], o["spec"]["names"]["kind"]): o["spec"].get("scope", "Namespaced")
            for o in objs if o.get("kind") == "CustomResourceDefinition"}


def namespaced(obj: dict, scopes: Optional[dict] = None) -> bool:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    kind = obj.get("kind", "")
    if scopes and (group, kind) in scopes:
        return scopes[(group, kind)] == "Namespaced"
    # cert-manager's cluster-wide issuer; its CRD may come from a chart not rendered here.
    return kind not in CLUSTER_SCOPED and kind != "ClusterIssuer"


# --- manifests applied from files ----------------------------------------------------------------

_RELEASE_FILE = re.compile(r"^https://raw\.githubusercontent\.com/[^/]+/(?P<repo>[^/]+)/(?P<tag>[^/]+)/(?:.+/)?"
                           r"(?P<folder>[^/]+)/(?P<file>[^/]+)$")


@lru_cache(maxsize=None)
def _crd_sums() -> dict[str, str]:
    sums = {}
    for line in (CRDS_DIR / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*").removeprefix("./")] = digest
    return sums


def manifest_file(source: str) -> Path:
    """Where a file a ConfigGroup applies is here: a local path as it is (the folder of
    `charts.archiveDir`); a release file of a GitHub repository
    (`https://raw.githubusercontent.com/<owner>/<repo>/<tag>/.../<folder>/<file>`) in the vendored
    copy, `../shared/upstream/crds/<repo>-<tag>/<folder>/<file>`, checked against its SHA256SUMS."""
    if "://" not in source:
        return Path(source)
    found = _RELEASE_FILE.match(source)
    if not found:
        raise ChartError(f"{source}: not a release file of a GitHub repository")
    relative = f"{found['repo']}-{found['tag']}/{found['folder']}/{found['file']}"
    path = CRDS_DIR / relative
    if not path.is_file():
        raise ChartError(f"{source}: {relative} is not in ../shared/upstream/crds (is the pin a real release?)")
    expected, actual = _crd_sums().get(relative), hashlib.sha256(path.read_bytes()).hexdigest()
    if expected != actual:
        raise ChartError(f"{relative}: sha256 {actual} does not match SHA256SUMS ({expected})")
    return path


@lru_cache(maxsize=None)
def _manifests(path: Path) -> tuple:
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=_Loader) if isinstance(d, dict) and d)


def config_group_objects(reg: mock_engine.Registration) -> list[dict]:
    """The objects a ConfigGroup registration applies, read from its files."""
    files = plain(reg.inputs).get("files") or []
    assert not plain(reg.inputs).get("yaml") and not plain(reg.inputs).get("objs"), reg.name
    return [copy.deepcopy(d) for f in files for d in _manifests(manifest_file(f))]


# --- the whole cluster ------------------------------------------------------------------------

# Release name -> why the last `cluster_objects` call left its chart out.
SKIPPED: dict[str, str] = {}


def _component_of(rec: mock_engine.Recording, reg: mock_engine.Registration) -> str:
    for ancestor in rec.ancestors(reg):
        if ancestor.type.startswith("llm-platform:index:"):
            return ancestor.name
    return "stack"


def program_objects(rec: mock_engine.Recording) -> list[Manifest]:
    """The Kubernetes objects the program applies itself (the Helm release wrappers are not
    objects; Argo CD Applications are), those its ConfigGroups read from files too."""
    out = []
    for reg in rec.kubernetes_objects():
        obj = plain(reg.inputs)
        if "kind" not in obj:
            continue
        obj.setdefault("metadata", {}).setdefault("name", reg.name)
        if namespaced(obj) and not obj["metadata"].get("namespace"):
            obj["metadata"]["namespace"] = "default"
        out.append(Manifest(f"program:{_component_of(rec, reg)}", obj))
    for reg in rec.of_type(CONFIG_GROUP):
        for obj in config_group_objects(reg):
            if namespaced(obj) and not obj["metadata"].get("namespace"):
                obj["metadata"]["namespace"] = "default"
            out.append(Manifest(f"program:{_component_of(rec, reg)}", obj))
    return out


def cluster_objects(rec: mock_engine.Recording, kube: Optional[str] = None) -> list[Manifest]:
    """Everything the stack would have in its cluster: the program's objects and every chart's
    (Argo CD apps included), at `kube` (default: the version in the stack's file). User-added
    apps whose chart is not vendored are skipped (see SKIPPED)."""
    kube = kube or kube_version(rec.stack)
    SKIPPED.clear()
    out = program_objects(rec)
    for release in chart_releases(rec):
        if release.extra and not release.archive.is_file():
            SKIPPED[release.name] = f"user app chart {release.chart} {release.version} is not vendored"
            continue
        out += [Manifest(f"chart:{release.name}", obj) for obj in render_release(release, kube)]
    return out


# --- values checks ----------------------------------------------------------------------------


def value_paths(values: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every leaf path the values set (lists are leaves: a chart takes them whole)."""
    if isinstance(values, dict) and values:
        for k, v in values.items():
            yield from value_paths(v, prefix + (k,))
    elif prefix:
        yield prefix


@lru_cache(maxsize=None)
def _template_text(path: Path) -> str:
    """Templates, and the files they render through `.Files.Get` (Istio's injection templates)."""
    chart = _chart(path)
    files = [f["data"] for f in chart.files if f["name"].endswith((".yaml", ".yml", ".tpl", ".json"))]
    return "\n".join([t["data"] for t in chart.templates] + files)


def _aliases(templates: str) -> set[str]:
    """Top-level keys a template merges onto `.Values` (istiod's legacy `pilot.` prefix)."""
    return set(re.findall(r'mustMergeOverwrite \$?\.Values \(index \$?\.Values "(\w+)"\)', templates))


def _defaults(chart) -> dict:
    values = chart.values
    hidden = values.pop(ISTIO_DEFAULTS, None)
    return {**hidden, **values} if isinstance(hidden, dict) else values


def unknown_value_paths(release: ChartRelease) -> list[str]:
    """Paths the program sets that the chart neither defaults nor reads: a misspelt or
    removed value, which Helm would silently ignore."""
    path = archive(release)
    chart = _chart(path)
    defaults = _defaults(chart)
    templates = _template_text(path)
    aliases = _aliases(templates)
    subcharts = _vendored_subcharts(path)
    unknown = []
    for p in value_paths(release.values):
        if _known(p, defaults, templates) or (p[0] in aliases and _known(p[1:], defaults, templates)):
            continue
        # A subchart's values sit under its name.
        sub = subcharts.get(p[0])
        if sub and len(p) > 1 and _known(p[1:], _defaults(_chart(sub)), _template_text(sub)):
            continue
        unknown.append(".".join(p))
    return unknown


def _read_by_template(prefix: tuple, templates: str, whole: bool) -> bool:
    dotted = re.escape(".Values." + ".".join(prefix))
    # `whole`: the template takes the map as it is (toYaml, merge, range), so any key under it counts.
    pattern = dotted + (r"(?![\w.])" if whole else r"(?![\w])")
    if whole and len(prefix) == 1:
        # A key no dotted path can spell, read with `index` (grafana's "grafana.ini").
        pattern = f"(?:{pattern})|(?:index \\$?\\.Values {re.escape(json.dumps(prefix[0]))})"
    return re.search(pattern, templates) is not None


def _known(path: tuple, defaults: Any, templates: str) -> bool:
    node = defaults
    for i, key in enumerate(path):
        if _read_by_template(path[: i + 1], templates, whole=False) and i == len(path) - 1:
            return True
        if i > 0 and _read_by_template(path[:i], templates, whole=True):
            return True
        if isinstance(node, dict):
            if key in node:
                node = node[key]
                continue
            # An empty map or null in values.yaml is free-form (nodeSelector: {}, podLabels: {}).
            return not node and i > 0
        return node is None and i > 0
    return True


def schema_errors(release: ChartRelease) -> list[str]:
    """The chart's values.schema.json (where it has one) applied by Helm to the values."""
    chart = chart_of(release)
    if chart.schema is None:
        return []
    try:
        chart.validate_schema(release.values)
    except Exception as err:
        return [str(err)]
    return []


# --- object validation ------------------------------------------------------------------------


def custom_groups(objs: list[dict]) -> set[str]:
    """API groups defined by CRDs: among `objs`, and those vendored in ../shared/upstream/crds
    (Gateway API and the like, which no chart here installs)."""
    groups = {o["spec"]["group"] for o in objs if o.get("kind") == "CustomResourceDefinition"}
    return groups | _vendored_crd_groups() | KNOWN_CRD_GROUPS


# CRD groups of objects the program applies whose CRDs come with charts it installs
# conditionally (cert-manager only when TLS is issued by it).
KNOWN_CRD_GROUPS = {"cert-manager.io", "acme.cert-manager.io"}


@lru_cache(maxsize=None)
def _vendored_crd_groups() -> frozenset[str]:
    groups = set()
    if CRDS_DIR.is_dir():
        for path in CRDS_DIR.rglob("*.yaml"):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    groups.add(doc["spec"]["group"])
    return frozenset(groups)


def validation_errors(objs: list[dict], kube: str, groups: set[str]) -> list[str]:
    """Every object of a built-in kind, validated strictly by kubernetes-validate against the
    schemas of `kube` (e.g. "v1.33.0"); objects of CRD-defined groups are left to their CRDs."""
    import kubernetes_validate
    minor = kube.lstrip("v").rsplit(".", 1)[0]
    errors = []
    for obj in objs:
        if obj["apiVersion"].rpartition("/")[0] in groups:
            continue
        try:
            kubernetes_validate.validate(obj, minor, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as err:
            where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata'].get('name')}"
            errors.append(f"{where}: {getattr(err, 'message', err)}")
    return errors
