"""The real program through the Automation API: a preview of each stack on a local file backend.
Runs where the pulumi CLI is installed; elsewhere each test skips with the reason."""

import shutil

import pytest

from tests.harness import PROJECT_DIR, STACKS

pytestmark = pytest.mark.automation


@pytest.fixture
def workspace_env(tmp_path):
    if shutil.which("pulumi") is None:
        pytest.skip("pulumi CLI not on PATH: install it to run the Automation API tests")
    return {
        "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": "automation-tests",
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }


@pytest.mark.parametrize("stack", STACKS)
def test_preview(stack, workspace_env):
    from pulumi import automation as auto

    ws = auto.create_or_select_stack(
        stack, work_dir=str(PROJECT_DIR),
        opts=auto.LocalWorkspaceOptions(env_vars=workspace_env),
    )
    try:
        result = ws.preview(on_output=print)
        assert result.change_summary.get("create", 0) > 10
    finally:
        ws.workspace.remove_stack(stack)
