"""What the team-budgets script sends the proxy's key API, checked against the LiteLLM release the
front door runs (.venv-litellm): each body against the endpoint's own request model, each query
parameter against the route's, each field it reads from a listed key against the key's model.
Registering a key for real needs LiteLLM's database (tests/unit/test_team_budgets.py walks the
script against a stand-in)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.unit import test_team_budgets as stand_in

pytestmark = pytest.mark.parts
ROOT = Path(__file__).resolve().parents[2]
LITELLM_PYTHON = ROOT / ".venv-litellm" / "bin" / "python"
# The fields of a listed key the script reads.
READ_FIELDS = ["token", "key_alias", "metadata", "models", "budget_duration", "max_budget", "rpm_limit", "tpm_limit"]

CHECK = r"""
import json, sys
from litellm.proxy._types import KeyRequest, LiteLLM_VerificationToken, UpdateKeyRequest
from litellm.types.proxy.management_endpoints.key_requests import GenerateKeyRequest
from litellm.proxy.management_endpoints import key_management_endpoints as km

calls, read = json.load(sys.stdin)
models = {"/key/generate": GenerateKeyRequest, "/key/update": UpdateKeyRequest, "/key/delete": KeyRequest}
routes = {(m, r.path): r for r in km.router.routes for m in r.methods}
problems = []
for method, path, query, body in calls:
    route = routes.get((method, path))
    if route is None:
        problems.append(f"{method} {path}: no such route")
        continue
    if body is not None:
        fields = models[path].model_fields
        unknown = sorted(set(body) - set(fields))
        if unknown:
            problems.append(f"{path}: fields the request model does not declare: {unknown}")
        models[path].model_validate(body)
    params = {p.name for p in route.dependant.query_params}
    unknown = sorted(set(query) - params)
    if unknown:
        problems.append(f"{method} {path}: query parameters the route does not take: {unknown}")
missing = sorted(set(read) - set(LiteLLM_VerificationToken.model_fields))
if missing:
    problems.append(f"listed keys have no {missing}")
print(json.dumps(problems))
"""


def test_every_call_is_one_the_release_takes(tmp_path):
    if not LITELLM_PYTHON.exists():
        pytest.skip("needs .venv-litellm (`make setup`)")
    with stand_in.serving() as (state, base):
        stand_in.walk(base, state)
    sent = {(m, p) for m, p, _, _ in state.calls}
    assert sent == {("GET", "/key/list"), ("POST", "/key/generate"), ("POST", "/key/update"),
                    ("POST", "/key/delete")}, sent
    done = subprocess.run([str(LITELLM_PYTHON), "-c", CHECK], input=json.dumps([state.calls, READ_FIELDS]),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], done.stdout


def test_the_fields_read_are_the_ones_the_script_reads():
    """READ_FIELDS above stays the script's: every `row.get(...)` it makes is listed."""
    import re

    source = Path(stand_in.team_budgets.__file__).read_text()
    read = set(re.findall(r'row\.get\("(\w+)"\)', source)) | set(re.findall(r'row\["(\w+)"\]', source))
    limits = set(stand_in.team_budgets.LIMITS) if "row.get(k)" in source else set()
    assert read | limits <= set(READ_FIELDS), read | limits
