"""The real program through the Automation API, on a local file backend with a passphrase.

- `preview` of every stack with the policy pack: needs the pulumi CLI (and, for eks/gke, that
  cloud's credentials, since the program asks AWS/GCP who is deploying).
- `up`, GET /v1/models through the gateway, `destroy`: needs a reachable cluster; name the stack
  to use in LLM_PLATFORM_E2E_STACK (e.g. `local` on a Mac, or your own stack of kind `existing`).

Anything missing skips the test with one line saying what. Run them alone, outside the suite's
network namespace: `LLM_PLATFORM_NETNS=0 pytest -m automation`. The engine tests (tests/engine)
run the same program through the same API on a local control plane, with no network.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import netns
from tools.mock_engine import PROJECT_DIR, STACKS

pytestmark = pytest.mark.automation
POLICY_DIR = PROJECT_DIR / "policy"
CLOUD_CREDENTIALS = {
    "eks": lambda: bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
                        or (Path.home() / ".aws" / "credentials").exists()),
    "gke": lambda: bool(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
                        or (Path.home() / ".config" / "gcloud" / "application_default_credentials.json").exists()),
}


@pytest.fixture
def workspace_env(tmp_path):
    if shutil.which("pulumi") is None:
        pytest.skip("pulumi CLI not on PATH: install it to run the Automation API tests")
    if netns.why_not_isolated() is None:
        pytest.skip("these reach a real cluster, a cloud and the package index: run them with "
                    f"{netns.ENV}=0 (the engine tests in tests/engine need no network)")
    return {
        "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": "automation-tests",
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }


@pytest.fixture
def policy_pack(workspace_env) -> str:
    """The pack's own virtualenv, as `pulumi preview --policy-pack` expects it (made once, and
    only where the CLI is there to use it)."""
    venv = POLICY_DIR / ".venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(POLICY_DIR / "requirements.txt")],
                       check=True)
    return str(POLICY_DIR)


def _stack(name: str, env: dict):
    from pulumi import automation as auto

    return auto.create_or_select_stack(
        name, work_dir=str(PROJECT_DIR), opts=auto.LocalWorkspaceOptions(env_vars=env)
    )


@pytest.mark.parametrize("stack_name", STACKS)
def test_preview(stack_name, workspace_env, policy_pack):
    has_credentials = CLOUD_CREDENTIALS.get(stack_name, lambda: True)
    if not has_credentials():
        pytest.skip(f"no {stack_name} cloud credentials: the program asks the cloud who deploys")
    stack = _stack(stack_name, workspace_env)
    try:
        result = stack.preview(on_output=print, policy_packs=[policy_pack], diff=True)
        assert result.change_summary.get("create", 0) > 10
    finally:
        stack.workspace.remove_stack(stack_name)


def test_up_serves_v1_models_then_destroys(workspace_env, policy_pack):
    stack_name = os.environ.get("LLM_PLATFORM_E2E_STACK")
    if not stack_name:
        pytest.skip("set LLM_PLATFORM_E2E_STACK to a stack with a reachable cluster (e.g. local) to run up/destroy")
    stack = _stack(stack_name, workspace_env)
    try:
        up = stack.up(on_output=print, policy_packs=[policy_pack])
        base = up.outputs["apiBaseUrl"].value
        aliases = up.outputs["modelAliases"].value
        models = None
        for _ in range(60):  # the gateway may need a moment after the servers turn ready
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=10) as resp:
                    models = json.load(resp)
                break
            except OSError:
                time.sleep(5)
        assert models is not None, f"{base}/models never answered"
        assert aliases[0] in [m["id"] for m in models["data"]]
    finally:
        stack.destroy(on_output=print)
        stack.workspace.remove_stack(stack_name)
