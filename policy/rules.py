"""The llm-platform policies as plain functions: each takes the resource (or stack) and a
`report` callback, so the suite can run them against recorded registrations.

Mandatory rules stop a preview or update; advisory ones are reported and let it go on.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Optional

Report = Callable[..., None]

WORKLOADS = {
    "kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:DaemonSet", "kubernetes:apps/v1:StatefulSet",
    "kubernetes:batch/v1:Job", "kubernetes:core/v1:Pod",
}
HELM = {"kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v4:Chart"}
MODEL_SERVER_LABEL = ("app.kubernetes.io/component", "model-server")
MESH_INGRESS_NAMESPACE = "istio-ingress"
ISTIO_GATEWAY_CHART = "gateway"
CREDENTIAL_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY)", re.I)
# Extended resources model servers may ask for, per stack; policy config can override.
DEFAULT_ACCELERATORS = {
    "local": ["squat.ai/dri"],
    "eks": ["nvidia.com/gpu"],
    "gke": ["google.com/tpu", "nvidia.com/gpu"],
}
ACCELERATOR_RESOURCES = {"squat.ai/dri", "nvidia.com/gpu", "google.com/tpu", "amd.com/gpu"}


def pod_spec(resource_type: str, props: dict) -> Optional[dict]:
    if resource_type not in WORKLOADS:
        return None
    if resource_type == "kubernetes:core/v1:Pod":
        return props.get("spec") or {}
    return ((props.get("spec") or {}).get("template") or {}).get("spec") or {}


def containers(spec: dict) -> Iterator[dict]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def stack_of(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<type>::<name>
    return urn.split("::", 1)[0].rsplit(":", 1)[-1] if urn.startswith("urn:pulumi:") else ""


# --- resource rules ------------------------------------------------------------------------


def requires_resources(resource_type: str, props: dict, report: Report, **_) -> None:
    """Every container sets CPU and memory requests and limits."""
    spec = pod_spec(resource_type, props)
    for c in containers(spec or {}):
        res = c.get("resources") or {}
        missing = [f"{kind}.{r}" for kind in ("requests", "limits") for r in ("cpu", "memory")
                   if not (res.get(kind) or {}).get(r)]
        if missing:
            report(f"container '{c.get('name')}' has no {', '.join(missing)}; set CPU and memory requests and limits")


def pinned_images(resource_type: str, props: dict, report: Report, **_) -> None:
    """Images carry a fixed tag (not latest) or a digest."""
    for c in containers(pod_spec(resource_type, props) or {}):
        image = c.get("image") or ""
        if "@sha256:" in image:
            continue
        name, _colon, tag = image.rpartition(":")
        if not name or "/" in tag or tag in ("", "latest"):
            report(f"container '{c.get('name')}' uses image '{image}', which is not pinned; use a version tag or digest")


def model_server_accelerator(resource_type: str, props: dict, report: Report, urn: str = "",
                             config: Optional[dict] = None, **_) -> None:
    """Model servers ask for the accelerator their stack provides."""
    labels = ((props.get("metadata") or {}).get("labels") or {})
    if labels.get(MODEL_SERVER_LABEL[0]) != MODEL_SERVER_LABEL[1]:
        return
    allowed_by_stack = {**DEFAULT_ACCELERATORS, **((config or {}).get("acceleratorsByStack") or {})}
    stack = stack_of(urn)
    if stack not in allowed_by_stack:
        return
    allowed = set(allowed_by_stack[stack])
    for c in containers(pod_spec(resource_type, props) or {}):
        limits = (c.get("resources") or {}).get("limits") or {}
        asked = {r for r in limits if r in ACCELERATOR_RESOURCES}
        if not asked & allowed:
            report(f"model server container '{c.get('name')}' asks for {sorted(asked) or 'no accelerator'}; "
                   f"stack '{stack}' serves on {sorted(allowed)}")
        elif asked - allowed:
            report(f"model server container '{c.get('name')}' asks for {sorted(asked - allowed)}, "
                   f"which stack '{stack}' does not have")


def _env_with_literal_credentials(env: Any) -> list[str]:
    found = []
    for e in env or []:
        if isinstance(e, dict) and CREDENTIAL_NAME.search(str(e.get("name", ""))) and e.get("value"):
            found.append(str(e["name"]))
    return found


def _values_env(values: Any) -> Iterator[Any]:
    """Env lists anywhere in a chart's values (extraEnvVars, env, ...)."""
    if isinstance(values, dict):
        for key, value in values.items():
            if isinstance(value, list) and re.search(r"env", key, re.I):
                yield value
            else:
                yield from _values_env(value)
    elif isinstance(values, list):
        for item in values:
            yield from _values_env(item)


def no_plaintext_credentials(resource_type: str, props: dict, report: Report, **_) -> None:
    """Credentials reach pods from Secrets, never as literal env values in manifests or chart values."""
    for c in containers(pod_spec(resource_type, props) or {}):
        for name in _env_with_literal_credentials(c.get("env")):
            report(f"container '{c.get('name')}' sets {name} in plain text; read it from a Secret (valueFrom.secretKeyRef)")
    values = None
    if resource_type in HELM:
        values = props.get("values")
    elif resource_type == "kubernetes:argoproj.io/v1alpha1:Application":
        values = (((props.get("spec") or {}).get("source") or {}).get("helm") or {}).get("valuesObject")
    for env in _values_env(values):
        for name in _env_with_literal_credentials(env):
            report(f"chart values set {name} in plain text; reference a Secret instead")


def load_balancers_only_at_mesh_ingress(resource_type: str, props: dict, report: Report, **_) -> None:
    """Only the mesh's ingress gateway is exposed through a cloud load balancer."""
    if resource_type == "kubernetes:core/v1:Service":
        ns = (props.get("metadata") or {}).get("namespace")
        if (props.get("spec") or {}).get("type") == "LoadBalancer" and ns != MESH_INGRESS_NAMESPACE:
            report(f"Service of type LoadBalancer in namespace '{ns}'; expose it through the mesh ingress instead")
    elif resource_type in HELM:
        service = ((props.get("values") or {}).get("service") or {})
        is_ingress = props.get("chart") == ISTIO_GATEWAY_CHART and props.get("namespace") == MESH_INGRESS_NAMESPACE
        if service.get("type") == "LoadBalancer" and not is_ingress:
            report(f"chart '{props.get('chart')}' asks for a LoadBalancer Service; only the mesh ingress may")


def pinned_charts(resource_type: str, props: dict, report: Report, **_) -> None:
    """Helm charts (and Argo CD apps) name an exact version."""
    version = None
    if resource_type in HELM:
        version = props.get("version")
    elif resource_type == "kubernetes:argoproj.io/v1alpha1:Application":
        source = (props.get("spec") or {}).get("source") or {}
        if not source.get("chart"):
            return  # git sources pin by revision, not chart version
        version = source.get("targetRevision")
    else:
        return
    if not version or not re.match(r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$", str(version)):
        report(f"chart version {version!r} is not pinned; set an exact version such as 1.2.3")


def model_server_probes(resource_type: str, props: dict, report: Report, **_) -> None:
    """Model servers have startup and readiness probes (slow loads must not receive traffic)."""
    labels = ((props.get("metadata") or {}).get("labels") or {})
    if labels.get(MODEL_SERVER_LABEL[0]) != MODEL_SERVER_LABEL[1]:
        return
    for c in containers(pod_spec(resource_type, props) or {}):
        missing = [p for p in ("startupProbe", "readinessProbe") if not c.get(p)]
        if missing:
            report(f"model server container '{c.get('name')}' has no {' or '.join(missing)}")


# --- stack rules ---------------------------------------------------------------------------


def model_namespaces_injected(resources: list[tuple[str, dict]], report: Report) -> None:
    """Every namespace with a model server is a Namespace of this stack with sidecar injection on.

    `resources` is (type, props) for every resource of the stack."""
    namespaces = {
        (props.get("metadata") or {}).get("name"): (props.get("metadata") or {}).get("labels") or {}
        for type_, props in resources if type_ == "kubernetes:core/v1:Namespace"
    }
    for type_, props in resources:
        meta = props.get("metadata") or {}
        if type_ not in WORKLOADS or (meta.get("labels") or {}).get(MODEL_SERVER_LABEL[0]) != MODEL_SERVER_LABEL[1]:
            continue
        ns = meta.get("namespace") or "default"
        labels = namespaces.get(ns)
        if labels is None:
            report(f"model server '{meta.get('name')}' runs in namespace '{ns}', which this stack does not manage")
        elif labels.get("istio-injection") != "enabled" and not labels.get("istio.io/rev"):
            report(f"namespace '{ns}' runs model server '{meta.get('name')}' without sidecar injection "
                   "(label istio-injection=enabled)")


# name -> (function, mandatory?, description)
RESOURCE_RULES = {
    "containers-have-resources": (requires_resources, True),
    "images-pinned": (pinned_images, True),
    "model-server-accelerator": (model_server_accelerator, True),
    "no-plaintext-credentials": (no_plaintext_credentials, True),
    "load-balancers-only-at-mesh-ingress": (load_balancers_only_at_mesh_ingress, True),
    "charts-pinned": (pinned_charts, True),
    "model-server-probes": (model_server_probes, False),
}
STACK_RULES = {
    "model-namespaces-injected": (model_namespaces_injected, True),
}
