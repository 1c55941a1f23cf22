"""Where the platform's Helm charts come from: each chart's own repository (the default), or one
folder of chart archives for clusters without internet access.

A folder holds `<chart>-<version>.tgz` files as `helm package` names them (after `helm
dependency build`, so charts that declare subcharts carry them). Every Helm release of the
stack reads from it; nothing is downloaded while previewing or deploying.

A leaf module: the program sets the folder once, from the stack's config, before any component
is built; components ask it for the arguments of their `helm.v3.Release`.
"""

from __future__ import annotations

import os
from typing import Optional

import pulumi

_archive_dir: Optional[str] = None


def use_archives(folder: Optional[str]) -> None:
    """Install every chart from `folder` (None: from the charts' repositories)."""
    global _archive_dir
    _archive_dir = os.path.abspath(os.path.expanduser(folder)) if folder else None


def archive_dir() -> Optional[str]:
    """The folder of archives, when one is set."""
    return _archive_dir


class MissingArchive(pulumi.RunError):
    """The folder lacks a chart the stack installs (RunError: the engine prints one line)."""


def archive(chart: str, version: str) -> Optional[str]:
    """The archive a release of `chart` at `version` installs from, when a folder is set."""
    if not _archive_dir:
        return None
    path = os.path.join(_archive_dir, f"{chart}-{version}.tgz")
    if not os.path.isfile(path):
        raise MissingArchive(f"charts.archiveDir: {_archive_dir} has no {chart}-{version}.tgz; expected every "
                             f"chart the stack installs as <chart>-<version>.tgz (`helm dependency build` "
                             f"then `helm package`)")
    return path


def release_source(chart: str, version: str, repo: str) -> dict:
    """`chart`, `version` and `repository_opts` of a `helm.v3.Release`."""
    path = archive(chart, version)
    if path:
        # A local archive is exactly one version: Helm takes no version or repository for it.
        return {"chart": path}
    if repo.startswith("oci://"):
        # An OCI registry names the chart in its reference; there is no index to point at.
        return {"chart": f"{repo}/{chart}", "version": version}
    return {"chart": chart, "version": version, "repository_opts": {"repo": repo}}
