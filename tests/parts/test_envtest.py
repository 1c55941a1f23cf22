"""The control-plane launcher: where it finds its binaries, what it says when it cannot, and that
it stops exactly what it started."""

from __future__ import annotations

import os

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from tests import envtest


def _assets(folder, names) -> str:
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
        (folder / name).chmod(0o755)
    return str(folder)


def test_setup_envtest_folder_lacks_the_controllers(tmp_path, monkeypatch):
    """setup-envtest's folder (kube-apiserver, etcd, kubectl) starts an API server, not the rest."""
    monkeypatch.setenv("KUBEBUILDER_ASSETS", _assets(tmp_path / "k8s", ["kube-apiserver", "etcd", "kubectl"]))
    assert envtest.missing(envtest.APISERVER) is None
    why = envtest.missing(envtest.FULL)
    assert why and "\n" not in why
    assert "lacks kube-controller-manager, kube-scheduler" in why and "setup-envtest" in why


def test_assets_folder_wins_over_the_shared_one(tmp_path, monkeypatch):
    folder = _assets(tmp_path / "k8s", envtest.FULL)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", folder)
    assert envtest.missing() is None
    assert envtest.binaries() == tmp_path / "k8s"


def test_nothing_to_start_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setattr(envtest, "SHARED", tmp_path / "shared" / "envtest")
    why = envtest.missing()
    assert why == f"KUBEBUILDER_ASSETS is unset and {tmp_path / 'shared' / 'envtest' / 'bin'} is missing"


def test_starts_and_stops_exactly_what_it_started(tmp_path):
    """etcd and kube-apiserver (what every envtest folder has): the admin kubeconfig reaches the
    API over the launcher's own certificates; stop ends both processes and removes the workdir."""
    why = envtest.missing(envtest.APISERVER)
    if why:
        pytest.skip(f"no control plane: {why}")
    cp = envtest.start(tmp_path / "run", components=envtest.APISERVER)
    pids = [p.pid for _, p in cp.procs]
    try:
        assert [name for name, _ in cp.procs] == ["etcd", "kube-apiserver"]
        api = k8s_config.new_client_from_config(config_file=str(cp.kubeconfig))
        names = {ns.metadata.name for ns in k8s_client.CoreV1Api(api).list_namespace().items}
        assert "kube-system" in names
    finally:
        cp.stop()
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]
    assert not (tmp_path / "run").exists()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
