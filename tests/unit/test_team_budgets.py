"""The script that keeps budgeted teams' keys registered with the front door's proxy, against a
stand-in for the proxy's key API that keeps LiteLLM's rules as its release's source has them: a
key's alias is unique, a custom key starts with `sk-`, keys are stored as their SHA-256, an
update changes only what it is sent. (LiteLLM's key API needs its database, which the suite
cannot run; tests/parts/test_team_budgets.py checks every body sent here against the release's
own request models.)"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from components.edge.files import team_budgets

pytestmark = pytest.mark.unit
MASTER = "sk-master-0123456789abcdef"


class KeyApi:
    """Rows by token (the key's SHA-256), and every call as (method, path, query, body)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict, dict | None]] = []


def _handler(api: KeyApi):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/health/readiness":
                return self._answer(200, {"status": "healthy"})
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            api.calls.append(("GET", url.path, query, None))
            if self.headers.get("Authorization") != f"Bearer {MASTER}":
                return self._answer(401, {"error": {"message": "Authentication Error"}})
            if url.path != "/key/list":
                return self._answer(404, {"detail": "Not Found"})
            wanted = query.get("key_alias", "")
            rows = [r for r in api.rows.values() if wanted.lower() in (r.get("key_alias") or "").lower()]
            size, page = int(query.get("size", 10)), int(query.get("page", 1))
            pages = max(1, -(-len(rows) // size))
            self._answer(200, {"keys": rows[(page - 1) * size:page * size], "total_count": len(rows),
                               "current_page": page, "total_pages": pages})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            api.calls.append(("POST", self.path, {}, body))
            if self.headers.get("Authorization") != f"Bearer {MASTER}":
                return self._answer(401, {"error": {"message": "Authentication Error"}})
            if self.path == "/key/generate":
                if any(r.get("key_alias") == body.get("key_alias") for r in api.rows.values()):
                    return self._answer(400, {"error": {"message": "Key with alias already exists."}})
                if not body["key"].startswith("sk-"):
                    return self._answer(400, {"error": {"message": "Invalid key format."}})
                token = hashlib.sha256(body["key"].encode()).hexdigest()
                row = {"token": token, "spend": 0.0, "max_budget": None, "rpm_limit": None, "tpm_limit": None,
                       "budget_duration": None, "metadata": {}, "models": [], "key_alias": None}
                row.update({k: v for k, v in body.items() if k != "key"})
                api.rows.setdefault(token, row)
                return self._answer(200, {"key": body["key"]})
            if self.path == "/key/update":
                # A key's text is hashed, a stored token taken as it is.
                token = hashlib.sha256(body["key"].encode()).hexdigest() if body["key"].startswith("sk-") \
                    else body["key"]
                if token not in api.rows:
                    return self._answer(404, {"error": {"message": "Key not found."}})
                if any(r.get("key_alias") == body.get("key_alias") and t != token for t, r in api.rows.items()):
                    return self._answer(400, {"error": {"message": "Key with alias already exists."}})
                api.rows[token].update({k: v for k, v in body.items() if k != "key"})
                return self._answer(200, {"key": body["key"]})
            if self.path == "/key/delete":
                gone = [t for t in body.get("keys", []) if api.rows.pop(t, None) is not None]
                return self._answer(200 if gone else 404, {"deleted_keys": gone})
            self._answer(404, {"detail": "Not Found"})

    return Handler


@contextlib.contextmanager
def serving() -> Iterator[tuple[KeyApi, str]]:
    """A stand-in key API on a free loopback port: its state and its base URL."""
    state = KeyApi()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def api() -> Iterator[tuple[KeyApi, str]]:
    with serving() as served:
        yield served


def wanted(key: str, **limits) -> dict:
    return {"key": key, "models": ["smol", "qwen"], "max_budget": 25.0, "budget_duration": "30d",
            "rpm_limit": None, "tpm_limit": None, **limits}


RESEARCH = "sk-research-" + "a" * 40
SUPPORT = "sk-support-" + "b" * 40


def token(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def walk(base: str, state: KeyApi) -> list[list[str]]:
    """What a platform does over time: teams get budgets, one changes, a key rotates, a team
    goes; the script runs after each step. What each pass reports."""
    said = [team_budgets.reconcile(base, MASTER, {"research": wanted(RESEARCH), "support": wanted(SUPPORT)})]
    state.rows[token(RESEARCH)]["spend"] = 3.5
    said.append(team_budgets.reconcile(base, MASTER, {"research": wanted(RESEARCH, max_budget=40.0, rpm_limit=60),
                                                      "support": wanted(SUPPORT)}))
    said.append(team_budgets.reconcile(base, MASTER, {"research": wanted(RESEARCH, max_budget=40.0, rpm_limit=60),
                                                      "support": wanted(SUPPORT)}))
    rotated = "sk-research-" + "c" * 40
    said.append(team_budgets.reconcile(base, MASTER, {"research": wanted(rotated, max_budget=40.0, rpm_limit=60),
                                                      "support": wanted(SUPPORT)}))
    said.append(team_budgets.reconcile(base, MASTER, {"research": wanted(rotated, max_budget=40.0, rpm_limit=60)}))
    return said


def test_budgeted_teams_keys_are_registered_updated_rotated_and_removed(api):
    state, base = api
    # A key someone issued by hand under a team-like alias: never the script's to touch.
    state.rows["manual"] = {"token": "manual", "key_alias": "team-sales", "metadata": {}, "models": [], "spend": 1.0}
    said = walk(base, state)
    assert said[0] == ["registered team research's key", "registered team support's key"]
    assert said[1] == ["updated team research's key"]
    assert said[2] == [], "a pass with nothing to change changed something"
    assert said[3] == ["deleted the key aliased team-research (no team holds it now)", "registered team research's key"]
    assert said[4] == ["deleted the key aliased team-support (no team holds it now)"]
    assert token(RESEARCH) not in state.rows, "the key rotated out still works"
    assert set(state.rows) == {"manual", token("sk-research-" + "c" * 40)}
    row = state.rows[token("sk-research-" + "c" * 40)]
    assert row["key_alias"] == "team-research" and row["models"] == ["qwen", "smol"]
    assert (row["max_budget"], row["rpm_limit"], row["budget_duration"]) == (40.0, 60, "30d")
    assert row["metadata"] == team_budgets.ISSUER


def test_an_update_keeps_the_spend_and_the_reset_date(api):
    """Spend is never sent, and the duration only when it changes: sending it again would move
    the key's next reset."""
    state, base = api
    team_budgets.reconcile(base, MASTER, {"research": wanted(RESEARCH)})
    state.rows[token(RESEARCH)]["spend"] = 3.5
    team_budgets.reconcile(base, MASTER, {"research": wanted(RESEARCH, max_budget=40.0)})
    updates = [body for method, path, _, body in state.calls if path == "/key/update"]
    assert len(updates) == 1 and "budget_duration" not in updates[0] and "spend" not in updates[0]
    assert state.rows[token(RESEARCH)]["spend"] == 3.5
    team_budgets.reconcile(base, MASTER, {"research": wanted(RESEARCH, max_budget=40.0, budget_duration="7d")})
    assert state.rows[token(RESEARCH)]["budget_duration"] == "7d"


def test_a_teams_alias_held_by_a_hand_made_key_is_left_alone_and_named(api):
    state, base = api
    state.rows["manual"] = {"token": "manual", "key_alias": "team-research", "metadata": {}, "models": []}
    with pytest.raises(team_budgets.ProxyError) as info:
        team_budgets.reconcile(base, MASTER, {"research": wanted(RESEARCH), "support": wanted(SUPPORT)})
    assert str(info.value).startswith("team research: the alias team-research is held by a key the platform did "
                                      "not issue"), info.value
    # The other team's key is registered all the same; the hand-made key is untouched.
    assert set(state.rows) == {"manual", token(SUPPORT)}


def test_no_key_travels_in_a_url(api):
    """The proxy's access log prints every request line: keys go in bodies alone, and a key's
    text only where the proxy has no token for it yet."""
    state, base = api
    walk(base, state)
    urls = json.dumps([(path, query) for _, path, query, _ in state.calls])
    assert "sk-" not in urls, urls
    assert all(path == "/key/generate" for _, path, _, body in state.calls if body and "sk-" in json.dumps(body))


def test_a_refusal_is_one_line_without_the_key(api, capsys, monkeypatch, tmp_path):
    state, base = api
    monkeypatch.setenv(team_budgets.PROXY_URL_ENV, base)
    monkeypatch.setenv(team_budgets.MASTER_KEY_ENV, "sk-not-the-master-key")
    monkeypatch.setenv(team_budgets.TEAM_BUDGETS_ENV, json.dumps({"research": wanted(RESEARCH)}))
    assert team_budgets.main(["--once"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "team-budgets: not in place yet: GET /key/list: 401 Authentication Error", err
    ready = tmp_path / "ready"
    monkeypatch.setenv(team_budgets.READY_FILE_ENV, str(ready))
    assert team_budgets.main(["--once"]) == 1 and not ready.exists(), "ready before its pass succeeded"
    capsys.readouterr()
    monkeypatch.setenv(team_budgets.MASTER_KEY_ENV, MASTER)
    assert team_budgets.main(["--once"]) == 0
    assert ready.exists(), "not ready after its pass"
    err = capsys.readouterr().err
    assert "registered team research's key" in err and RESEARCH not in err and MASTER not in err
