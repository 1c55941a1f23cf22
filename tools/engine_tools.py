"""The Pulumi engine's tools, pinned: the Pulumi CLI, the Kubernetes resource plugin and kwok.

`python -m tools.engine_tools` makes them available and prints the folder that holds them
(`bin/` inside it goes first on PATH in the engine tests). Each tool is taken, in this order:
1. from PATH, when the one there is the pinned release or newer (`pulumi`, `kwok`; a
   `pulumi-resource-kubernetes` on PATH is used as it is: the engine prefers it too);
2. from the cache folder, when an earlier run built it (a warm machine never rebuilds);
3. built from the Go module proxy into the cache (a cold machine, once: minutes on 2 cores).

The cache is `$LLM_PLATFORM_TOOLS`, else `$XDG_CACHE_HOME/llm-platform/tools`, else
`~/.cache/llm-platform/tools`; it lives outside the repository so a clean clone reuses it.

Why each is built the way it is:
- The CLI's module (`github.com/pulumi/pulumi/pkg/v3`) replaces its own SDK by a relative path,
  which `go install pkg@version` refuses; a small wrapper module requires pkg and sdk at the same
  tag and repeats the one replace the build needs. The version is stamped into the binary, as the
  release build does; the Automation API reads it from `pulumi version`.
- The Kubernetes provider's module is served only as one pseudo-version (no tag names its
  `provider/` folder); its `go:generate` step writes the embedded schema from the module's own
  `schema.json`, so the module is copied out of the read-only cache and generated there.
- kwok installs as `go install` would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The CLI release. The Python SDK (requirements.txt) is the newest the package index serves at or
# below it; a CLI newer than its SDK is supported. pkg/v3 v3.272.0 is not served by the proxy.
PULUMI_VERSION = "3.274.1"
# The one version of the provider's module the proxy serves: a commit of 2026-01-15 on the 4.25.0
# release line (its go.mod still names the SDK module v4.24.0). Stamped as a 4.25.0 build of that
# commit; the Python SDK is pinned to 4.25.0.
K8S_PROVIDER_MODULE = "github.com/pulumi/pulumi-kubernetes/provider/v4"
K8S_PROVIDER_PSEUDO = "v4.0.0-20260115033456-f47bc2d6f199"
K8S_PROVIDER_SDK = "v4.24.0"
K8S_PROVIDER_VERSION = "4.25.0-dev.20260115+f47bc2d6f199"
KWOK_VERSION = "0.8.0"
# The release build's flags: static, no cgo, and the build tags upstream uses.
GO_FLAGS = ["-trimpath", "-tags", "osusergo,grpcnotrace"]


def cache_dir() -> Path:
    if os.environ.get("LLM_PLATFORM_TOOLS"):
        return Path(os.environ["LLM_PLATFORM_TOOLS"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llm-platform" / "tools"


def bin_dir() -> Path:
    return cache_dir() / "bin"


@dataclass(frozen=True)
class Tool:
    name: str
    version: str

    @property
    def folder(self) -> Path:
        return cache_dir() / f"{self.name}-{self.version}"

    @property
    def binary(self) -> Path:
        return self.folder / self.name


PULUMI = Tool("pulumi", PULUMI_VERSION)
K8S_PROVIDER = Tool("pulumi-resource-kubernetes", K8S_PROVIDER_VERSION)
KWOK = Tool("kwok", KWOK_VERSION)
TOOLS = (PULUMI, K8S_PROVIDER, KWOK)


def _semver(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def _on_path(tool: Tool) -> Path | None:
    """The tool on PATH, if it is the pinned release or newer."""
    found = shutil.which(tool.name, path=os.environ.get("PATH", "").replace(str(bin_dir()), ""))
    if not found:
        return None
    if tool is K8S_PROVIDER:
        return Path(found)
    flag = ["version"] if tool is PULUMI else ["--version"]
    try:
        out = subprocess.run([found, *flag], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(found) if _semver(out) >= _semver(tool.version) else None


def _go_env() -> dict:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    # The builds need the proxy's modules only; never a VCS.
    env.setdefault("GOPROXY", "https://proxy.golang.org")
    return env


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    print(f"  $ {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def _build_pulumi(work: Path, out: Path) -> None:
    sdk = "github.com/pulumi/pulumi/sdk/v3"
    (work / "go.mod").write_text(
        "module llm-platform/tools/pulumi\n\ngo 1.26\n\n"
        f"require (\n\tgithub.com/pulumi/pulumi/pkg/v3 v{PULUMI_VERSION}\n\t{sdk} v{PULUMI_VERSION}\n)\n\n"
        # pkg/v3's go.mod replaces a clipboard package by a fork; replaces do not carry over.
        "replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e\n")
    (work / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport _ \"github.com/pulumi/pulumi/pkg/v3/cmd/pulumi\"\n")
    env = _go_env()
    _run(["go", "mod", "tidy"], work, env)
    _run(["go", "build", *GO_FLAGS, "-ldflags",
          f"-s -w -X {sdk}/go/common/version.Version=v{PULUMI_VERSION}",
          "-o", str(out), "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"], work, env)


def _build_k8s_provider(work: Path, out: Path) -> None:
    env = _go_env()
    _run(["go", "mod", "download", "-json", f"{K8S_PROVIDER_MODULE}@{K8S_PROVIDER_PSEUDO}"], work, env)
    modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True,
                              env=env).stdout.strip()
    src = work / "provider"
    shutil.copytree(Path(modcache) / f"{K8S_PROVIDER_MODULE}@{K8S_PROVIDER_PSEUDO}", src)
    for p in src.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    # The module replaces its SDK by a sibling folder that is not part of the module.
    gomod = src / "go.mod"
    gomod.write_text(re.sub(r"(?m)^replace github.com/pulumi/pulumi-kubernetes/sdk/v4 => \.\./sdk$",
                            f"replace github.com/pulumi/pulumi-kubernetes/sdk/v4 => "
                            f"github.com/pulumi/pulumi-kubernetes/sdk/v4 {K8S_PROVIDER_SDK}",
                            gomod.read_text()))
    cmd = src / "cmd" / "pulumi-resource-kubernetes"
    _run(["go", "mod", "download"], src, env)
    _run(["go", "generate", "./cmd/pulumi-resource-kubernetes"], src, {**env, "VERSION": K8S_PROVIDER_VERSION})
    if not (cmd / "schema-embed.json").is_file():
        raise SystemExit("the provider's go:generate step wrote no schema-embed.json")
    _run(["go", "build", *GO_FLAGS, "-ldflags",
          f"-s -w -X {K8S_PROVIDER_MODULE}/pkg/version.Version={K8S_PROVIDER_VERSION}",
          "-o", str(out), "./cmd/pulumi-resource-kubernetes"], src, env)


def _build_kwok(work: Path, out: Path) -> None:
    env = {**_go_env(), "GOBIN": str(work / "bin")}
    _run(["go", "install", *GO_FLAGS[:1], f"sigs.k8s.io/kwok/cmd/kwok@v{KWOK_VERSION}"], work, env)
    shutil.move(str(work / "bin" / "kwok"), out)


BUILDERS = {PULUMI: _build_pulumi, K8S_PROVIDER: _build_k8s_provider, KWOK: _build_kwok}


def kwok_stages_dir() -> Path:
    """kwok's module, for the Stage manifests it ships (read, never copied into the project)."""
    modcache = os.environ.get("GOMODCACHE") or (
        subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
        if shutil.which("go") else str(Path.home() / "go" / "pkg" / "mod"))
    return Path(modcache) / f"sigs.k8s.io/kwok@v{KWOK_VERSION}" / "kustomize" / "stage"


def ensure(tool: Tool) -> Path:
    found = _on_path(tool)
    if found:
        return found
    if tool.binary.is_file():
        return tool.binary
    if shutil.which("go") is None:
        raise SystemExit(f"{tool.name} {tool.version}: not on PATH, not cached in {tool.folder}, and no Go "
                         f"toolchain to build it (Go 1.26 or newer)")
    return build_cached(tool, BUILDERS[tool])


def build_cached(tool: Tool, build: Callable[[Path, Path], None]) -> Path:
    """`build(work, out)` into the tool's cache folder: staged in a temporary folder and moved in
    whole, so an interrupted build leaves no half-written binary to be taken for a built one."""
    print(f"building {tool.name} {tool.version} (once per machine) ...", file=sys.stderr, flush=True)
    tool.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"build-{tool.name}-") as tmp:
        staged = Path(tmp) / "out"
        build(Path(tmp), staged)
        staged.chmod(0o755)
        shutil.move(str(staged), tool.binary)
    return tool.binary


def link_into_bin(tool: Tool, path: Path) -> None:
    """`bin_dir()/<tool>` pointing at `path` (the folder the tests put first on PATH)."""
    link = bin_dir() / tool.name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)


def ensure_all() -> Path:
    """Every tool in `bin_dir()` (links), built where needed; the folder."""
    bins = bin_dir()
    bins.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        link_into_bin(tool, ensure(tool))
    # kwok's stages are read from its module, which `go install` leaves in the module cache.
    if not kwok_stages_dir().is_dir() and shutil.which("go"):
        subprocess.run(["go", "mod", "download", f"sigs.k8s.io/kwok@v{KWOK_VERSION}"], env=_go_env(),
                       check=True, cwd=cache_dir())
    return bins


def missing() -> str | None:
    """Why the engine tests cannot run, in one line; None when every tool is there."""
    lacks = [t.name for t in TOOLS if not (bin_dir() / t.name).exists() and not _on_path(t)]
    if lacks:
        return f"{', '.join(lacks)} not built: run `make setup` (builds them from the Go module proxy once)"
    if not kwok_stages_dir().is_dir():
        return f"kwok's stage definitions are not in the Go module cache ({kwok_stages_dir()}): run `make setup`"
    return None



if __name__ == "__main__":
    try:
        print(ensure_all())
    except SystemExit as err:
        # No Go here: the rest of the suite runs; the engine tests skip, saying what is missing.
        print(f"engine tools not available: {err}; the engine tests will skip", file=sys.stderr)
