"""A loopback-only Kubernetes control plane for the suite: etcd, kube-apiserver, and (unless asked
for less) kube-controller-manager and kube-scheduler. No kubelet: objects are stored, admitted,
reconciled and scheduled for real; containers never run.

Binaries follow the envtest convention: the folder `KUBEBUILDER_ASSETS` names when it is set (what
`setup-envtest` fills: kube-apiserver and etcd only), else `<repo>/../shared/envtest/bin/*.xz`,
unpacked once into a cache folder (the one that folder's `install.sh` uses, so either fills it).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import lzma
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.mock_engine import PROJECT_DIR

SHARED = PROJECT_DIR.parent / "shared" / "envtest"
APISERVER = ("etcd", "kube-apiserver")
CONTROLLERS = ("kube-controller-manager", "kube-scheduler")
FULL = APISERVER + CONTROLLERS
# Address of the `kubernetes` Service in the service range below: in the serving cert, as in a cluster.
SERVICE_RANGE, SERVICE_IP = "10.0.0.0/24", "10.0.0.1"
START_TIMEOUT_S = 120


def missing(need: tuple[str, ...] = FULL) -> Optional[str]:
    """Why the binaries `need` cannot be had here, in one line; None when they can."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        lacks = [b for b in need if not os.access(Path(assets) / b, os.X_OK)]
        if not lacks:
            return None
        why = f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(lacks)}"
        if set(lacks) <= set(CONTROLLERS):
            why += " (setup-envtest ships only kube-apiserver and etcd; these tests need the real controllers and scheduler)"
        return why
    if not (SHARED / "bin" / "SHA256SUMS").is_file():
        return f"KUBEBUILDER_ASSETS is unset and {SHARED / 'bin'} is missing"
    lacks = [f"{b}.xz" for b in need if not (SHARED / "bin" / f"{b}.xz").is_file()]
    return f"KUBEBUILDER_ASSETS is unset and {SHARED / 'bin'} lacks {', '.join(lacks)}" if lacks else None


def binaries() -> Path:
    """The folder holding the binaries (call `missing()` first)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(assets) if assets else _unpacked(SHARED / "bin")


def _unpacked(src: Path) -> Path:
    """Unpack `src/*.xz` once, checked against `src/SHA256SUMS`; the cache folder."""
    sums = (src / "SHA256SUMS").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    dest = cache / "llm-platform-envtest" / hashlib.sha256(sums).hexdigest()[:16]
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.parent / f"{dest.name}.tmp.{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for line in sums.decode().splitlines():
        digest, name = line.split()
        with lzma.open(src / f"{name}.xz") as packed, open(tmp / name, "wb") as out:
            shutil.copyfileobj(packed, out)
        if _sha256(tmp / name) != digest:
            raise RuntimeError(f"{src / name}.xz unpacks to a file whose sha256 is not the one in SHA256SUMS")
        (tmp / name).chmod(0o755)
    (tmp / ".complete").touch()
    # Another process may have finished first: its folder is as good as ours.
    try:
        tmp.rename(dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- certificates ----------------------------------------------------------------------


class _Pki:
    """A CA for the cluster and one for the aggregation layer's front proxy, certs they sign,
    and the key pair service-account tokens are signed with (EC P-256: fast to make)."""

    def __init__(self, folder: Path):
        self.dir = folder
        folder.mkdir(parents=True)
        self.ca = self._authority("ca", "envtest-ca")
        self.front_ca = self._authority("front-proxy-ca", "envtest-front-proxy-ca")
        sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)] + [
            x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                      "kubernetes.default.svc.cluster.local")]
        # One serving cert for every component: all listen on 127.0.0.1, all checked against the CA.
        self._leaf("serving", self.ca, "envtest-serving", server=True, sans=sans)
        self._leaf("admin", self.ca, "envtest-admin", org="system:masters")
        # The names RBAC's bootstrap policy grants the controller-manager's and scheduler's roles to.
        self._leaf("kube-controller-manager", self.ca, "system:kube-controller-manager")
        self._leaf("kube-scheduler", self.ca, "system:kube-scheduler")
        self._leaf("front-proxy-client", self.front_ca, "front-proxy-client")
        sa = ec.generate_private_key(ec.SECP256R1())
        self._write("sa.key", _key_pem(sa), private=True)
        self._write("sa.pub", sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def _authority(self, name: str, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (_builder(subject, subject, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        self._write(f"{name}.key", _key_pem(key), private=True)
        return cert, key

    def _leaf(self, name: str, issuer: tuple, cn: str, org: Optional[str] = None, server: bool = False,
              sans: Optional[list] = None) -> None:
        ca_cert, ca_key = issuer
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []) + [
            x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (_builder(x509.Name(attrs), ca_cert.subject, key.public_key())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        self._write(f"{name}.crt", b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        self._write(f"{name}.key", _key_pem(key), private=True)

    def _write(self, name: str, data: bytes, private: bool = False) -> None:
        path = self.dir / name
        path.write_bytes(data)
        if private:
            path.chmod(0o600)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    # An hour back for clock skew; a week ahead outlives any test session.
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7)))


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# --- processes -------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so that they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    # The components must not outlive a test run that is killed before it can stop them.
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ControlPlane:
    """A started control plane: its admin kubeconfig, and the processes it started."""

    workdir: Path
    kubeconfig: Path
    url: str
    # Seconds from the start until each component answered healthy.
    ready_s: dict[str, float] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def stop(self, keep: bool = False) -> None:
        """Stop what was started, last first (SIGTERM, then SIGKILL after 10 s); remove the workdir
        unless `keep`."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _launch(self, name: str, argv: list[str]) -> None:
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.workdir,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.procs.append((name, proc))

    def _wait_healthy(self, name: str, url: str, ctx: Optional[ssl.SSLContext], deadline: float, t0: float) -> None:
        while True:
            for n, proc in self.procs:
                if proc.poll() is not None:
                    tail = (self.workdir / f"{n}.log").read_text(errors="replace").splitlines()[-15:]
                    raise RuntimeError(f"{n} exited ({proc.returncode}) before {name} was healthy; "
                                       f"end of {self.workdir / n}.log:\n" + "\n".join(tail))
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    body = r.read().decode()
                if body == "ok" or (name == "etcd" and json.loads(body).get("health") == "true"):
                    self.ready_s[name] = time.monotonic() - t0
                    return
            except (OSError, ValueError):
                pass  # not listening yet, or not ready: its answer is not "ok" (HTTP 500)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not healthy within {START_TIMEOUT_S}s ({url}); logs in {self.workdir}")
            time.sleep(0.2)


def start(workdir: Optional[Path] = None, components: tuple[str, ...] = FULL,
          authorization: str = "Node,RBAC") -> ControlPlane:
    """Start `components` (etcd and kube-apiserver at least) with state in `workdir`, wait until
    each is healthy; on failure, stop what was started and raise (the workdir keeps the logs)."""
    why = missing(components)
    if why:
        raise RuntimeError(f"no control plane: {why}")
    bin_dir = binaries()
    if workdir is None:
        import tempfile
        workdir = Path(tempfile.mkdtemp(prefix="envtest-"))
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    deadline = t0 + START_TIMEOUT_S
    pki = _Pki(workdir / "pki")
    etcd_port, peer_port, api_port, kcm_port, sched_port = _free_ports(5)
    url = f"https://127.0.0.1:{api_port}"
    for user in ("admin", "kube-controller-manager", "kube-scheduler"):
        _kubeconfig(workdir / f"{user}.kubeconfig", url, pki, user)
    cp = ControlPlane(workdir, workdir / "admin.kubeconfig", url)
    # Health checks verify each component's cert against the CA, as the admin.
    tls = ssl.create_default_context(cafile=pki.path("ca.crt"))
    tls.load_cert_chain(pki.path("admin.crt"), pki.path("admin.key"))
    serving = [f"--tls-cert-file={pki.path('serving.crt')}", f"--tls-private-key-file={pki.path('serving.key')}"]
    try:
        etcd = f"http://127.0.0.1:{etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        cp._launch("etcd", [
            str(bin_dir / "etcd"), "--name=envtest", f"--data-dir={workdir / 'etcd-data'}",
            f"--listen-client-urls={etcd}", f"--advertise-client-urls={etcd}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=envtest={peer}", "--initial-cluster-state=new",
            "--logger=zap", "--log-level=warn"])
        cp._wait_healthy("etcd", f"{etcd}/health", None, deadline, t0)

        cp._launch("kube-apiserver", [
            str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            *serving, f"--client-ca-file={pki.path('ca.crt')}",
            # The aggregation layer: how the apiserver proves itself to an extension API server.
            f"--requestheader-client-ca-file={pki.path('front-proxy-ca.crt')}",
            "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.path('front-proxy-client.crt')}",
            f"--proxy-client-key-file={pki.path('front-proxy-client.key')}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.path('sa.pub')}",
            f"--service-account-signing-key-file={pki.path('sa.key')}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--authorization-mode={authorization}",
            # The default admission plugins (Pod Security among them) stay on. Privileged pods are
            # allowed here so that Pod Security admission, not this flag, is what refuses them.
            "--allow-privileged=true",
            # The `kubernetes` Service would get 127.0.0.1 as its endpoint, which the API refuses.
            "--endpoint-reconciler-type=none",
            "--profiling=false"])
        cp._wait_healthy("kube-apiserver", f"{url}/readyz", tls, deadline, t0)

        if "kube-controller-manager" in components:
            cfg = str(workdir / "kube-controller-manager.kubeconfig")
            cp._launch("kube-controller-manager", [
                str(bin_dir / "kube-controller-manager"), f"--kubeconfig={cfg}",
                f"--authentication-kubeconfig={cfg}", f"--authorization-kubeconfig={cfg}",
                "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", *serving,
                "--leader-elect=false", "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.path('sa.key')}", f"--root-ca-file={pki.path('ca.crt')}",
                f"--cluster-signing-cert-file={pki.path('ca.crt')}", f"--cluster-signing-key-file={pki.path('ca.key')}",
                # No kubelet ever posts a heartbeat: a year's grace keeps declared Nodes Ready (the node
                # lifecycle controller still lifts their not-ready taint once they say Ready).
                "--node-monitor-grace-period=8760h", "--node-startup-grace-period=8760h",
                "--profiling=false"])
        if "kube-scheduler" in components:
            cfg = str(workdir / "kube-scheduler.kubeconfig")
            cp._launch("kube-scheduler", [
                str(bin_dir / "kube-scheduler"), f"--kubeconfig={cfg}",
                f"--authentication-kubeconfig={cfg}", f"--authorization-kubeconfig={cfg}",
                "--bind-address=127.0.0.1", f"--secure-port={sched_port}", *serving,
                "--leader-elect=false", "--profiling=false"])
        if "kube-controller-manager" in components:
            cp._wait_healthy("kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz", tls, deadline, t0)
        if "kube-scheduler" in components:
            cp._wait_healthy("kube-scheduler", f"https://127.0.0.1:{sched_port}/healthz", tls, deadline, t0)
    except BaseException:
        cp.stop(keep=True)
        raise
    return cp


def _kubeconfig(path: Path, url: str, pki: _Pki, user: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
        "clusters": [{"name": "envtest", "cluster": {"server": url, "certificate-authority": pki.path("ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": pki.path(f"{user}.crt"),
                                          "client-key": pki.path(f"{user}.key")}}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user, "namespace": "default"}}],
    }, sort_keys=False))
    path.chmod(0o600)
