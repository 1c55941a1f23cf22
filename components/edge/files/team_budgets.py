"""Registers each budgeted team's key as a virtual key of the front door's proxy (beside it in
the pod, on loopback, with the master key): its models, its budget and limits as the stack says,
its spend kept. Keys it registered earlier that no team holds any more (a team gone, its budget
dropped, its key rotated) are deleted, so they stop working.

It makes one pass once the proxy is up, tried again until it succeeds, then waits: a pod runs
the config it started with, and a changed config starts new pods, so a pass that went on
repeating would have the pods of a rollout's old and new config undo each other.

It imports only the standard library (it runs on the proxy's image) and never writes a key out:
not to its log, not into a URL (the proxy's access log prints those).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request

# {"<team>": {"key": "sk-...", "models": [...], "max_budget": 5.0, "budget_duration": "30d",
#             "rpm_limit": null, "tpm_limit": null}}
TEAM_BUDGETS_ENV = "LITELLM_TEAM_BUDGETS"
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
PROXY_URL_ENV = "LITELLM_PROXY_URL"
# Written once a pass succeeded: the container's readiness, so that a rollout keeps the old pods
# until the new ones have their keys in place.
READY_FILE_ENV = "TEAM_BUDGETS_READY_FILE"
DEFAULT_PROXY_URL = "http://127.0.0.1:4000"
ALIAS_PREFIX = "team-"
# What marks a key as this script's to change and delete; other keys are never touched.
ISSUER = {"issued_by": "llm-platform"}
# Seconds before a failed pass is tried again, doubled after each failure up to the most.
RETRY_SECONDS = 15
MAX_RETRY_SECONDS = 300
PAGE_SIZE = 100
# The limits a pass sets on a key; spend is never sent, so it is kept.
LIMITS = ("max_budget", "rpm_limit", "tpm_limit")


class ProxyError(Exception):
    """The proxy refused or failed a call: the message is its answer's, without any key."""


def alias(team: str) -> str:
    return ALIAS_PREFIX + team


def token_of(key: str) -> str:
    """The proxy stores a key as the SHA-256 of its text, in hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def call(base: str, master: str, method: str, path: str, body: "dict | None" = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": f"Bearer {master}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise ProxyError(f"{method} {path.split('?')[0]}: {err.code} {_message(err.read())}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ProxyError(f"{method} {path.split('?')[0]}: {err.__class__.__name__}") from None


def _message(raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error", {})
        text = str(error.get("message", error) if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        text = raw.decode(errors="replace")
    return " ".join(text.split())[:300]


def aliased(base: str, master: str) -> list[dict]:
    """The proxy's keys aliased `team-...`, whoever issued them."""
    rows: list[dict] = []
    page = 1
    while True:
        answer = call(base, master, "GET", f"/key/list?return_full_object=true&key_alias={ALIAS_PREFIX}"
                                           f"&substring_matching=true&size={PAGE_SIZE}&page={page}")
        rows += answer.get("keys") or []
        if page >= int(answer.get("total_pages") or 1):
            break
        page += 1
    return [r for r in rows if isinstance(r, dict) and str(r.get("key_alias") or "").startswith(ALIAS_PREFIX)]


def _ours(row: dict) -> bool:
    return (row.get("metadata") or {}).get("issued_by") == ISSUER["issued_by"]


def settings(team: str, wanted: dict) -> dict:
    return {"key_alias": alias(team), "models": sorted(wanted["models"]), "metadata": dict(ISSUER),
            **{k: wanted.get(k) for k in LIMITS}}


def reconcile(base: str, master: str, teams: dict) -> list[str]:
    """One pass; what it changed, one line each (team names, never keys). A team's failure does
    not stop the others': the first is raised at the end."""
    done: list[str] = []
    failed: list[ProxyError] = []
    tokens = {alias(team): token_of(w["key"]) for team, w in teams.items()}
    present: dict[str, dict] = {}
    rows = aliased(base, master)
    # A key issued by hand under a team's alias is never touched; the team's key waits for it.
    taken = {str(r.get("key_alias")) for r in rows if not _ours(r)}
    for row in (r for r in rows if _ours(r)):
        name = str(row.get("key_alias"))
        if not row.get("token"):
            continue
        if tokens.get(name) == row.get("token"):
            present[name] = row
            continue
        # No team holds it: deleted first, since an alias is unique among the proxy's keys.
        call(base, master, "POST", "/key/delete", {"keys": [row["token"]]})
        done.append(f"deleted the key aliased {name} (no team holds it now)")
    for team, wanted in sorted(teams.items()):
        if alias(team) in taken:
            failed.append(ProxyError(f"team {team}: the alias {alias(team)} is held by a key the platform did "
                                     f"not issue; delete that key or give it another alias"))
            continue
        try:
            change = _put(base, master, team, wanted, present.get(alias(team)))
        except ProxyError as err:
            failed.append(ProxyError(f"team {team}: {err}"))
            continue
        if change:
            done.append(change)
    if failed:
        for line in done:
            log(line)
        raise failed[0]
    return done


def _put(base: str, master: str, team: str, wanted: dict, row: "dict | None") -> "str | None":
    target = settings(team, wanted)
    body = dict(target)
    if row is None:
        call(base, master, "POST", "/key/generate",
             {"key": wanted["key"], **body, "budget_duration": wanted["budget_duration"]})
        return f"registered team {team}'s key"
    # A duration sent again moves the next reset, so it is sent only when it changes.
    if row.get("budget_duration") != wanted["budget_duration"]:
        body["budget_duration"] = wanted["budget_duration"]
    current = {"key_alias": row.get("key_alias"), "models": sorted(row.get("models") or []),
               "metadata": row.get("metadata") or {}, **{k: row.get(k) for k in LIMITS}}
    if "budget_duration" in body or current != target:
        # By its stored token: the key itself need not travel again.
        call(base, master, "POST", "/key/update", {"key": row["token"], **body})
        return f"updated team {team}'s key"
    return None


def wait_ready(base: str, until: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(base + "/health/readiness", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > until:
            raise ProxyError("the proxy did not become ready")
        time.sleep(2)


def log(line: str) -> None:
    print(f"team-budgets: {line}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    once = "--once" in argv
    base = os.environ.get(PROXY_URL_ENV, DEFAULT_PROXY_URL).rstrip("/")
    master = os.environ[MASTER_KEY_ENV]
    teams = json.loads(os.environ.get(TEAM_BUDGETS_ENV) or "{}")
    failures = 0
    while True:
        try:
            wait_ready(base, time.monotonic() + (60 if once else 3600))
            changed = reconcile(base, master, teams)
            for line in changed:
                log(line)
            log(f"{len(teams)} team key(s) in place")
            ready = os.environ.get(READY_FILE_ENV)
            if ready:
                with open(ready, "w") as marker:
                    marker.write("ok\n")
            if once:
                return 0
            # Done for this pod's config: a container that exits is started again.
            while True:
                time.sleep(86400)
        except Exception as err:  # noqa: BLE001 (a pass that fails is tried again; the cause is logged)
            log(f"not in place yet: {err if isinstance(err, ProxyError) else err.__class__.__name__}")
            if once:
                return 1
            failures += 1
            time.sleep(min(RETRY_SECONDS * 2 ** min(failures - 1, 5), MAX_RETRY_SECONDS))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
