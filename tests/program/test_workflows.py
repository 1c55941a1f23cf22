"""The GitHub workflows are valid: they parse, carry the keys GitHub needs, give the Pulumi action
only inputs it has, preview every stack with the policy pack, and pass actionlint."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import mock_engine as harness

WORKFLOWS = harness.PROJECT_DIR / ".github" / "workflows"
# Inputs of pulumi/actions (its action.yml).
PULUMI_ACTION_INPUTS = {
    "command", "stack-name", "work-dir", "comment-on-pr", "comment-on-summary", "github-token", "cloud-url",
    "secrets-provider", "parallel", "message", "config-map", "expect-no-changes", "diff", "replace", "target",
    "target-dependents", "policyPacks", "policyPackConfigs", "refresh", "upsert", "edit-pr-comment", "color",
    "pulumi-version", "pulumi-version-file", "plan", "suppress-outputs", "suppress-progress",
    "always-include-summary", "exclude-protected", "remove", "continue-on-error", "include-secrets",
}


def load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def pulumi_steps(doc: dict) -> list[dict]:
    return [s for job in doc["jobs"].values() for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@")]


@pytest.mark.parametrize("name", ["preview.yml", "up.yml"])
def test_workflow_shape(name):
    doc = load(name)
    assert doc["name"] and doc["on"] and doc["jobs"]
    for job_name, job in doc["jobs"].items():
        assert job["runs-on"], job_name
        assert job["steps"] and all("uses" in s or "run" in s for s in job["steps"]), job_name
    steps = pulumi_steps(doc)
    assert steps
    for step in steps:
        assert step["uses"].split("@")[1].startswith("v")
        assert set(step["with"]) <= PULUMI_ACTION_INPUTS, set(step["with"]) - PULUMI_ACTION_INPUTS
        assert {"command", "stack-name"} <= set(step["with"])
        pack = harness.PROJECT_DIR / step["with"]["policyPacks"]
        assert (pack / "PulumiPolicy.yaml").is_file() and (pack / "__main__.py").is_file()


def test_pull_requests_preview_every_stack_with_diff_and_comment():
    doc = load("preview.yml")
    assert "pull_request" in doc["on"]
    assert doc["permissions"]["pull-requests"] == "write"
    test_job = doc["jobs"]["test"]
    # The README's test command, as root (the suite makes its own network namespace).
    assert any(s.get("run", "").endswith("bash .ci/run") for s in test_job["steps"])
    preview = doc["jobs"]["preview"]
    assert preview["needs"] == "test"
    stacks = preview["strategy"]["matrix"]["stack"]
    assert sorted(stacks) == sorted(harness.STACKS)
    assert all((harness.PROJECT_DIR / f"Pulumi.{s}.yaml").is_file() for s in stacks)
    (step,) = pulumi_steps(doc)
    assert step["with"]["command"] == "preview"
    assert step["with"]["diff"] is True and step["with"]["comment-on-pr"] is True
    # pip dependencies are installed before the action (it does not install them).
    names = [s.get("name", s.get("uses")) for s in preview["steps"]]
    assert names.index("Install the program's and the policy pack's requirements") < names.index(step["uses"])


def test_missing_credentials_skip_with_a_notice():
    doc = load("preview.yml")
    check = next(s for s in doc["jobs"]["preview"]["steps"] if s.get("id") == "creds")
    assert "::notice" in check["run"] and "GITHUB_STEP_SUMMARY" in check["run"]
    (step,) = pulumi_steps(doc)
    assert step["if"] == "steps.creds.outputs.run == 'true'"


def test_up_runs_only_on_the_default_branch_for_enabled_stacks():
    doc = load("up.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    job = doc["jobs"]["up"]
    assert job["if"] == "vars.DEPLOY_STACKS != ''"
    (step,) = pulumi_steps(doc)
    assert step["with"]["command"] == "up"


def actionlint() -> str:
    # Installed by requirements-dev.txt next to this interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    assert found, "actionlint comes with requirements-dev.txt"
    return found


def test_actionlint_passes():
    result = subprocess.run([actionlint(), "-color=false"], cwd=harness.PROJECT_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ matrix.nope }}\n")
    result = subprocess.run([actionlint(), "-color=false", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0 and "matrix" in result.stdout
