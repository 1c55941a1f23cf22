"""The Pulumi Kubernetes Operator's `Stack` object, as the program writes it, on a real API server
that holds the operator chart's own CRDs (rendered from the pinned chart archive): admitted under
strict field validation, and a misspelt or mistyped field refused, so a wrong spec fails `up`
instead of leaving an operator that never runs the stack."""

from __future__ import annotations

import copy

import pytest

from components.platform import pulumi_operator
from tests.program.test_pulumi_operator import OPERATOR, STACK, recorded  # noqa: F401 (the module's fixture)
from tests.program.test_schemas import manifest
from tools import charts


@pytest.fixture(scope="module")
def operator_crds(control_plane, recorded):  # noqa: F811
    (release,) = [r for r in charts.chart_releases(recorded) if r.chart == pulumi_operator.CHART]
    rendered = charts.render_release(release, charts.kube_version("eks"))
    crds = [o for o in rendered if o["kind"] == "CustomResourceDefinition"]
    assert {c["spec"]["names"]["kind"] for c in crds} >= {"Stack", "Program", "Workspace", "Update"}
    for crd in crds:
        assert control_plane.apply(crd) is None
    control_plane.wait_established([c["metadata"]["name"] for c in crds])
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": pulumi_operator.NAMESPACE}}
    assert control_plane.apply(namespace) is None
    yield control_plane
    control_plane.core.delete_namespace(pulumi_operator.NAMESPACE)


def test_the_stack_object_is_admitted_by_the_operators_own_crd(operator_crds, recorded):  # noqa: F811
    stack = manifest(recorded.one(STACK).inputs)
    assert operator_crds.apply(stack) is None
    live = operator_crds.get(stack)["spec"]
    assert live["projectRepo"] == OPERATOR["repository"] and live["branch"] == "main"
    assert live["stack"] == "eks"
    assert live["serviceAccountName"] == pulumi_operator.WORKSPACE_ACCOUNT
    assert live["envRefs"]["PULUMI_CONFIG_PASSPHRASE"] == {"type": "Secret", "secret": OPERATOR["passphrase"]}


@pytest.mark.parametrize("field, value, said", [
    ("projectRepository", "https://github.com/acme/llm-platform.git", ".spec.projectRepository: field not declared"),
    ("resyncFrequencySeconds", "often", "spec.resyncFrequencySeconds"),
])
def test_a_wrong_field_is_refused(operator_crds, recorded, field, value, said):  # noqa: F811
    stack = copy.deepcopy(manifest(recorded.one(STACK).inputs))
    stack["metadata"]["name"] = "wrong"
    stack["spec"][field] = value
    refused = operator_crds.apply(stack)
    assert refused is not None and said in refused.reason, refused
