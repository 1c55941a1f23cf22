"""Render what a stack would apply, without a cluster, cloud account or the Pulumi CLI.

    python -m tools.render <stack> [--out DIR]

Runs the real program with the stack's real config under the mock engine and writes, into
DIR (default `out/<stack>`):
  <component>.yaml   every Kubernetes object the component applies, plus its Helm releases
                     (chart, repository, version, values) as `HelmRelease` documents and the
                     manifest files it applies (the pinned CRDs) as `ConfigGroup` documents
  chart-<release>.yaml  the objects each chart release installs (Helm releases and the charts
                     Argo CD delivers), rendered by Helm from the vendored archive with the
                     program's values and the stack's Kubernetes version
  cloud.yaml         the cloud and host resources (AWS, GCP, local commands) with their inputs
Secrets are written as "[secret]" (also where a chart copies one into what it renders).
Diff two branches' folders to review a change.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from tools import charts, mock_engine

SECRET = "[secret]"
# libyaml's emitter when present: the charts' CRDs are large.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
COMPONENT_PREFIX = "llm-platform:index:"


def masked(value: Any) -> Any:
    """Secrets replaced, mock-engine floats that are whole numbers turned back into ints."""
    if mock_engine.is_secret(value):
        return SECRET
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def component_of(rec: mock_engine.Recording, reg: mock_engine.Registration) -> str:
    for ancestor in rec.ancestors(reg):
        if ancestor.type.startswith(COMPONENT_PREFIX):
            return ancestor.name
    return "stack"


def render(rec: mock_engine.Recording) -> dict[str, list[dict]]:
    """File name -> YAML documents."""
    files: dict[str, list[dict]] = defaultdict(list)
    for reg in rec.registrations:
        if reg.type == charts.CONFIG_GROUP:
            files[f"{component_of(rec, reg)}.yaml"].append({"kind": "ConfigGroup", "metadata": {"name": reg.name},
                                                            "spec": {"files": masked(reg.inputs).get("files") or []}})
        if not reg.custom:
            continue
        inputs = masked(reg.inputs)
        if "helm.sh" in reg.type:
            files[f"{component_of(rec, reg)}.yaml"].append({"kind": "HelmRelease", "metadata": {
                "name": inputs.get("name"), "namespace": inputs.get("namespace")}, "spec": {
                "chart": inputs.get("chart"), "version": inputs.get("version"),
                "repository": (inputs.get("repositoryOpts") or {}).get("repo"),
                "values": inputs.get("values") or {}}})
        elif reg.type.startswith("kubernetes:"):
            files[f"{component_of(rec, reg)}.yaml"].append(inputs)
        elif not reg.type.startswith("pulumi:providers:"):
            files["cloud.yaml"].append({"type": reg.type, "name": reg.name,
                                        "component": component_of(rec, reg), "inputs": inputs})
    return dict(files)


def secret_texts(value: Any) -> set[str]:
    """The plain text of every secret in recorded inputs, as written and base64-encoded."""
    found: set[str] = set()
    if mock_engine.is_secret(value):
        plain = mock_engine.reveal(value)
        for text in (plain.values() if isinstance(plain, dict) else [plain]):
            if isinstance(text, str) and text:
                found |= {text, base64.b64encode(text.encode()).decode()}
    elif isinstance(value, dict):
        for v in value.values():
            found |= secret_texts(v)
    elif isinstance(value, list):
        for v in value:
            found |= secret_texts(v)
    return found


def scrubbed(value: Any, secrets: set[str]) -> Any:
    """`value` with every secret text replaced."""
    if isinstance(value, str):
        for text in sorted(secrets, key=len, reverse=True):
            value = value.replace(text, SECRET)
        return value
    if isinstance(value, dict):
        return {k: scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrubbed(v, secrets) for v in value]
    return value


def render_charts(rec: mock_engine.Recording) -> dict[str, list[dict]]:
    """chart-<release>.yaml -> the objects each chart release installs, secrets masked."""
    secrets = set().union(*(secret_texts(reg.inputs) for reg in rec.registrations))
    files: dict[str, list[dict]] = defaultdict(list)
    for m in charts.cluster_objects(rec):
        if m.source.startswith("chart:"):
            files[f"chart-{m.source.split(':', 1)[1]}.yaml"].append(scrubbed(m.obj, secrets))
    return dict(files)


def write(files: dict[str, list[dict]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        old.unlink()
    for name, docs in sorted(files.items()):
        (out / name).write_text(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=True, default_flow_style=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a stack's Kubernetes objects and cloud resources offline.")
    parser.add_argument("stack", choices=mock_engine.STACKS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        rec = mock_engine.run(args.stack)
    except mock_engine.ProgramFailed as failed:
        print(failed.error, file=sys.stderr)
        return 1
    out = args.out or Path("out") / args.stack
    files = render(rec)
    if charts.CHARTS_DIR.is_dir():
        try:
            files.update(render_charts(rec))
        except charts.ChartError as err:
            print(err, file=sys.stderr)
            return 1
    else:
        print(f"charts not rendered: {charts.CHARTS_DIR} is absent", file=sys.stderr)
    write(files, out)
    for name, docs in sorted(files.items()):
        print(f"{out / name}: {len(docs)} documents")
    for release, reason in sorted(charts.SKIPPED.items()):
        print(f"{release}: not rendered ({reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
