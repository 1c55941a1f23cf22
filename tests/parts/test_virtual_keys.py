"""Virtual keys, against the real parts: the LiteLLM release the image runs turns the database URL
into one Prisma verifies, and its own sources bear out what the docs say limits mean across
replicas; the front door's Istio objects for the database validate against Istio's published
schemas (tests/crd). What the program renders: tests/program/test_virtual_keys.py."""

from __future__ import annotations

import json
import re
import subprocess
from urllib.parse import parse_qs, urlparse

import pytest

from components.edge import database as db
from tests import docs
from tests.conftest import VKEYS
from tests.program.test_virtual_keys import on, url_of  # noqa: F401 (on: the module's fixture)
from tools import mock_engine as harness


def test_litellm_turns_the_url_into_a_verifying_prisma_url(on):
    """What the release the image runs does with the URL before Prisma sees it (Prisma reads
    `verify-full` as `prefer` and ignores `sslrootcert`; its default `sslaccept` checks nothing)."""
    from tests.parts.test_front_door import LITELLM

    python = LITELLM.parent / "python"
    if not python.exists():
        pytest.skip(f"LiteLLM is not installed: {python}")
    script = ("import sys; from litellm.proxy.db.db_url_settings import translate_libpq_ssl_params as t; "
              "print(t(sys.argv[1]))")
    out = subprocess.run([str(python), "-c", script, url_of(on)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    prisma = parse_qs(urlparse(out.stdout.strip()).query)
    assert prisma == {"sslmode": ["require"], "sslcert": [f"{db.CLIENT_CA_DIR}/{db.CA_CERT}"],
                      "sslaccept": ["strict"]}


def test_its_istio_objects_match_their_schemas(on):
    from tests.parts.test_crd_schemas import custom_resources, validate

    objects = [o for o in custom_resources(on) if o["kind"] in ("DestinationRule", "Sidecar")
               and o["metadata"]["namespace"] == "front-door"]
    assert {o["kind"] for o in objects} == {"DestinationRule", "Sidecar"}
    assert "keys-database" in {o["metadata"]["name"] for o in objects}
    assert validate(objects) == [None] * len(objects)


def test_the_docs_say_what_limits_mean_across_replicas_as_the_pinned_litellm_does(on):
    """Without Redis, LiteLLM (the release the image runs) counts rate limits and caches the keys
    it has checked in each replica's memory: a cloud stack's two replicas each let a key's full
    limit through, and a revoked key works on another replica until its cached copy expires. The
    docs (docs/front-door.md) say so with the release's own numbers."""
    from tests.parts.test_front_door import LITELLM

    site = next(LITELLM.parent.parent.glob("lib/python*/site-packages"), None)
    if site is None or not (site / "litellm").is_dir():
        pytest.skip(f"LiteLLM is not installed beside {LITELLM}")
    server = (site / "litellm" / "proxy" / "proxy_server.py").read_text()
    key_ttl = int(re.search(r"^\s*in_memory_cache_ttl = (\d+)", server, re.M).group(1))
    assert "UserApiKeyCache(\n    default_in_memory_ttl=UserAPIKeyCacheTTLEnum.in_memory_cache_ttl.value" in server
    constants = (site / "litellm" / "constants.py").read_text()
    spend_write = int(re.search(r'PROXY_BATCH_WRITE_AT: Final = get_env_int\("PROXY_BATCH_WRITE_AT", (\d+)\)',
                                constants).group(1))
    # Nothing in the rendered config shares them through Redis, or shortens the key cache.
    from tests.program.test_front_door import rendered_config

    cfg = rendered_config(on)
    assert "redis" not in json.dumps(cfg).lower() and "cache" not in cfg.get("litellm_settings", {})
    assert "user_api_key_cache_ttl" not in cfg["general_settings"]
    assert int(harness.run("eks", VKEYS).one("kubernetes:apps/v1:Deployment", "front-door-deployment")
               .inputs["spec"]["replicas"]) == 2

    marker = "**What the limits mean with more than one replica.**"
    page = docs.page_with(marker)
    section = page[page.index(marker):]
    section = " ".join(section[:section.index("\n\n", section.index("\n- "))].split())
    assert "a limit of N lets up to N × replicas through" in section
    assert f"up to {key_ttl} s (LiteLLM's key cache)" in section
    assert f"spend is written every {spend_write} s" in section
