"""Every core Kubernetes object the program applies validates, strictly, against the
Kubernetes version the stack targets."""

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
CUSTOM_GROUPS = ("networking.istio.io", "security.istio.io", "argoproj.io", "cert-manager.io", "monitoring.coreos.com")
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
