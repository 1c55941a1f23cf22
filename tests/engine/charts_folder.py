"""A folder of chart archives as an air-gapped user keeps one (`charts.archiveDir`): every archive
vendored beside the repository, as `helm dependency build` then `helm package` leave it, and the
vendored CRD manifests the stack applies (Gateway API, the Inference Extension) as their
repositories lay them out.

Subcharts a chart declares but does not carry come from the vendored archives where they are
there (kube-prometheus-stack's). One that is not vendored (Argo CD's redis-ha, off unless asked)
gets an empty stand-in chart of its name: Helm refuses to install a chart with a declared
dependency missing, whether or not the values enable it, and a disabled one renders nothing.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import yaml

from tools import charts


def _missing_dependencies(chart_dir: Path) -> list[dict]:
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    present = {p.name for p in (chart_dir / "charts").iterdir()} if (chart_dir / "charts").is_dir() else set()
    present |= {re.sub(r"-[0-9v][^-]*\.tgz$", "", n) for n in present}
    return [d for d in meta.get("dependencies") or [] if d["name"] not in present]


def _stub(chart_dir: Path, dep: dict) -> None:
    version = re.sub(r"^[^0-9]*", "", str(dep.get("version") or "0.0.0")).split(" ")[0] or "0.0.0"
    stub = chart_dir / "charts" / dep["name"]
    (stub / "templates").mkdir(parents=True, exist_ok=True)
    (stub / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": dep["name"], "version": version,
        "description": "Not vendored; disabled by the values the platform passes. Renders nothing."}))


def make(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for bundle in sorted(charts.CRDS_DIR.iterdir()):
        if bundle.is_dir() and not (dest / bundle.name).exists():
            (dest / bundle.name).symlink_to(bundle, target_is_directory=True)
    for archive in sorted(charts.CHARTS_DIR.glob("*.tgz")):
        out = dest / archive.name
        if out.exists():
            continue
        verified = charts._verified(archive)
        unpacked = charts._with_subcharts(verified)
        if unpacked == verified:
            work = Path(tempfile.mkdtemp(prefix="chart-"))
            with tarfile.open(verified) as tar:
                tar.extractall(work, filter="data")
            (unpacked,) = [d for d in work.iterdir() if d.is_dir()]
            missing = _missing_dependencies(unpacked)
            if not missing:
                shutil.rmtree(work)
                out.symlink_to(verified)
                continue
        else:
            missing = _missing_dependencies(unpacked)
        for dep in missing:
            _stub(unpacked, dep)
        with tarfile.open(out, "w:gz") as tar:
            tar.add(unpacked, arcname=unpacked.name)
    return dest
