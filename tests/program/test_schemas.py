"""Every core Kubernetes object the program applies validates, strictly, against the
Kubernetes version the stack targets."""

import copy

import kubernetes_validate
import pytest

from tools import mock_engine as harness


def manifest(value):
    """Mock-engine numbers come back as floats; the schemas want integers."""
    value = harness.reveal(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: manifest(v) for k, v in value.items()}
    if isinstance(value, list):
        return [manifest(v) for v in value]
    return value


# Custom resources: their schemas come with their CRDs, not with Kubernetes.
CUSTOM_GROUPS = ("networking.istio.io", "security.istio.io", "argoproj.io", "cert-manager.io", "monitoring.coreos.com",
                 "gateway.networking.k8s.io")
# Custom resources whose CRDs come with the charts the stack installs (KEDA, Karpenter): the
# cluster tests apply them against those CRDs on a real API server.
CHART_CRD_GROUPS = ("keda.sh", "karpenter.sh", "karpenter.k8s.aws")


def core_objects(rec):
    return [r for r in rec.kubernetes_objects()
            if r.inputs["apiVersion"].split("/")[0] not in CUSTOM_GROUPS + CHART_CRD_GROUPS]


def k8s_minor(rec) -> str:
    version = harness.reveal(rec.one("command:local:Command", "cluster-minikube").inputs["create"])
    minor = version.split("--kubernetes-version ", 1)[1].split()[0]
    return minor.lstrip("v").rsplit(".", 1)[0]


def test_every_core_object_validates_strictly(local):
    objs = core_objects(local)
    kinds = {o.inputs["kind"] for o in objs}
    assert {"Deployment", "Service", "Namespace", "DaemonSet"} <= kinds
    version = k8s_minor(local)
    assert version == "1.34"
    for o in objs:
        kubernetes_validate.validate(manifest(o.inputs), version, strict=True)


def test_validation_catches_a_misspelt_field(local):
    dep = manifest(local.one("kubernetes:apps/v1:Deployment", "llama-router-deployment").inputs)
    dep["spec"]["template"]["spec"]["containers"][0]["argz"] = dep["spec"]["template"]["spec"]["containers"][0].pop("args")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.34", strict=True)


# --- objects whose CRDs the stack applies from files ------------------------------------------------
# The Gateway API's objects against the CRDs the stack itself applies (its ConfigGroup's files, at
# their pinned release): the apiVersion is one the CRD serves, and the object fits that version's
# schema, with no field the schema does not name (the API server would drop it, or refuse it with
# strict field validation). CEL rules (x-kubernetes-validations) are left to the real API server.


def _strict(schema: dict, structural: bool = True) -> dict:
    """An OpenAPI schema of a CRD as JSON Schema that refuses fields it does not name. Only the
    structural part says which fields exist; the branches of allOf/anyOf/oneOf/not only add
    constraints on those."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        out["properties"] = {k: _strict(v, structural) for k, v in schema["properties"].items()}
        if structural and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"], structural)
    if isinstance(schema.get("items"), dict):
        out["items"] = _strict(schema["items"], structural)
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(s, False) for s in schema[key]]
    if "not" in schema:
        out["not"] = _strict(schema["not"], False)
    return out


def crd_schema_errors(rec, obj: dict) -> list[str]:
    import jsonschema

    from tools import charts

    group, _, version = obj["apiVersion"].rpartition("/")
    crds = [o for reg in rec.of_type(charts.CONFIG_GROUP) for o in charts.config_group_objects(reg)
            if o["kind"] == "CustomResourceDefinition"]
    crd = next((c for c in crds if (c["spec"]["group"], c["spec"]["names"]["kind"]) == (group, obj["kind"])), None)
    where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
    if crd is None:
        return [f"{where}: no CRD the stack applies defines {obj['kind']} ({group})"]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
    if version not in served:
        return [f"{where}: {obj['apiVersion']} is not served (the CRD serves {sorted(served)})"]
    validator = jsonschema.Draft7Validator(_strict(served[version]["schema"]["openAPIV3Schema"]))
    return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def gateway_api_objects(rec) -> list[dict]:
    return [manifest(r.inputs) for r in rec.kubernetes_objects()
            if r.inputs["apiVersion"].startswith("gateway.networking.k8s.io/")]


TLS = {"llm-platform:gateway": {"host": "llm.example.com", "tlsSecret": "llm-cert"}}


@pytest.mark.parametrize("stack, overrides", [("local", {}), ("eks", {}), ("gke", TLS)], ids=["local", "eks", "gke-tls"])
def test_gateway_api_objects_fit_the_crds_the_stack_applies(stack, overrides):
    from tests.conftest import need_charts

    need_charts()
    rec = harness.run(stack, overrides)
    objs = gateway_api_objects(rec)
    assert {o["kind"] for o in objs} == {"Gateway", "HTTPRoute", "ReferenceGrant"}
    assert [e for o in objs for e in crd_schema_errors(rec, o)] == []


def test_a_gateway_api_object_off_its_schema_is_caught(local):
    from tests.conftest import need_charts

    need_charts()
    objs = {o["kind"]: o for o in gateway_api_objects(local)}
    route = copy.deepcopy(objs["HTTPRoute"])
    route["spec"]["rules"][0]["backendRefs"][0]["prot"] = route["spec"]["rules"][0]["backendRefs"][0].pop("port")
    assert any("'prot' was unexpected" in e for e in crd_schema_errors(local, route))
    gateway = copy.deepcopy(objs["Gateway"])
    gateway["spec"]["listeners"][0]["port"] = "eighty"
    assert any("listeners/0/port" in e for e in crd_schema_errors(local, gateway))
    old = {**objs["HTTPRoute"], "apiVersion": "gateway.networking.k8s.io/v1alpha2"}
    assert crd_schema_errors(local, old) == [
        "HTTPRoute istio-ingress/llm-routes: gateway.networking.k8s.io/v1alpha2 is not served (the CRD serves ['v1', 'v1beta1'])"]
