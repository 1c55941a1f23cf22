"""The endpoint picker's path on loopback: a control plane (etcd and kube-apiserver, no kubelet)
holding an InferencePool and its pods, stand-in vLLM servers at the pods' addresses, the Inference
Extension's endpoint picker (EPP) watching them as a user with only its Role, and Envoy asking EPP
where each request goes. Test support only: the test decides what each part is given.

The pods' addresses are loopback ones other than 127.0.0.1 (127.0.0.2, 127.0.0.3, ...): the
kernel answers the whole 127/8 on the loopback interface, so each stand-in listens on its pod's
own IP and the same port, as the replicas of one Deployment do.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import utils as k8s_utils

from components.edge import endpoint_picker as epp
from components.serving.runtimes import VLLM_RELEASE
from tests import edge_path as edge
from tests import envtest
from tests.kube import until
from tests.shared import SHARED
from tools import edge_tools

CRD_DIR = SHARED / "upstream" / "crds" / f"gateway-api-inference-extension-v{edge_tools.GIE_VERSION}" / "bases"
# What EPP watches: its pool (v1), and the alpha objectives and model rewrites it looks for at
# start (InferencePoolImport is the multi-cluster controller's, not EPP's).
CRD_FILES = ("inference.networking.k8s.io_inferencepools.yaml",
             "inference.networking.x-k8s.io_inferenceobjectives.yaml",
             "inference.networking.x-k8s.io_inferencemodelrewrites.yaml")
EPP_FILTER = "envoy.filters.http.ext_proc"
# The series a vLLM 0.29 server without LoRA adapters publishes that the picker reads, named here
# apart from the program's configuration (test_endpoint_picker checks them against the wheel's
# sources): a name the program gets wrong is then a series EPP does not find.
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"
VLLM_CACHE_INFO = "vllm:cache_config_info"
VLLM_SERIES = (VLLM_RUNNING, VLLM_WAITING, VLLM_KV_USAGE, VLLM_CACHE_INFO)
_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


def missing() -> Optional[str]:
    """Why the path cannot be started here, in one line; None when it can."""
    why = edge_tools.missing(edge_tools.EPP)
    if why:
        return why
    if why := envtest.missing(envtest.APISERVER):
        return f"no control plane: {why}"
    lacks = [f for f in CRD_FILES if not (CRD_DIR / f).is_file()]
    return f"{CRD_DIR} lacks {', '.join(lacks)}" if lacks else None


def crds() -> list[dict]:
    return [yaml.safe_load((CRD_DIR / f).read_text()) for f in CRD_FILES]


def port_free_on(port: int, *hosts: str) -> bool:
    try:
        for host in hosts:
            with socket.socket() as s:
                s.bind((host, port))
        return True
    except OSError:
        return False


def free_port_on(*hosts: str) -> int:
    """A port free on every one of `hosts` at once (the replicas of a pool share one)."""
    for _ in range(50):
        port = edge.free_port()
        if port_free_on(port, *hosts):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


# --- the control plane's objects ----------------------------------------------------------------


def create(api, *objects: dict) -> None:
    for obj in objects:
        k8s_utils.create_from_dict(api, obj)


def _established(api, name: str) -> bool:
    status = k8s_client.ApiextensionsV1Api(api).read_custom_resource_definition(name).status
    return any(c.type == "Established" and c.status == "True" for c in (status.conditions if status else None) or [])


def create_crds(api) -> None:
    create(api, *crds())
    for crd in crds():
        name = crd["metadata"]["name"]
        until(lambda: _established(api, name), 30, f"CRD {name} established", every=0.1)


def create_namespace(api, namespace: str) -> None:
    """The namespace, with the ServiceAccount admission wants for its pods (no controller-manager
    runs to make it)."""
    create(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": namespace}})


def grant_role(api, namespace: str, name: str, rules: list[dict], user: str) -> None:
    """A Role of `rules` (what EPP's ServiceAccount would get), bound to the user a certificate
    names."""
    meta = {"name": name, "namespace": namespace}
    create(api, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules},
           {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def create_pods(api, namespace: str, pods: Mapping[str, str], labels: Mapping[str, str], port: int) -> None:
    """Replicas of one workload (pod name -> IP), bound to a node and reported Running and Ready at
    their IPs (what the scheduler and the kubelet would do)."""
    for name, ip in pods.items():
        create(api, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"nodeName": "gpu-node-0", "containers": [{
                "name": "vllm", "image": f"vllm/vllm-openai:v{VLLM_RELEASE}",
                "ports": [{"name": "http", "containerPort": port}]}]}})
        k8s_client.CoreV1Api(api).patch_namespaced_pod_status(name, namespace, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}})


# --- a user with only the Role's rules ---------------------------------------------------------


def user_kubeconfig(run: envtest.ControlPlane, user: str, path: Path) -> Path:
    """A kubeconfig for `user` (no group), with a client certificate the control plane's CA signs:
    what that user may do is what RBAC grants it, nothing more."""
    pki = run.workdir / "pki"
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "envtest's CA key is EC P-256"
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / f"{user}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = path.parent / f"{user}.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": "envtest", "cluster": {"server": run.url, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(path.parent / f"{user}.crt"),
                                          "client-key": str(key_file)}}],
        "contexts": [{"name": user, "context": {"cluster": "envtest", "user": user}}],
    }, sort_keys=False))
    return path


# --- stand-in vLLM servers ---------------------------------------------------------------------


class FakeVllm:
    """One replica: `/metrics` in Prometheus' text format with vLLM's series (set with `load`),
    and `POST /v1/chat/completions` answered at once with the replica's name, so a response says
    which replica served it; with `"stream": true`, as server-sent events (a few chunks, then
    `[DONE]`). With `keys`, a request under `/v1` without one of them as its bearer key gets 401,
    as vLLM's `--api-key` check answers (`/metrics` stays open there too). Every request it gets
    is kept in `seen`."""

    STREAM_CHUNKS = 5

    def __init__(self, name: str, host: str, port: int, model: str, keys: Optional[Sequence[str]] = None):
        self.name, self.host, self.port, self.model = name, host, port, model
        self.keys = None if keys is None else set(keys)
        self.seen: list[dict] = []
        self.metrics_reads = 0
        self.waiting = self.running = 0
        self.kv_usage = 0.0
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream connections expect

            def do_GET(self):
                if self.path.split("?")[0] != epp.METRICS_PATH:
                    return self._send(404, "text/plain", b"not found\n")
                replica.metrics_reads += 1
                self._send(200, "text/plain; version=0.0.4", replica.exposition().encode())

            def do_POST(self):
                body = self._body()
                replica.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "body": body})
                if replica.keys is not None and self.path.startswith("/v1"):
                    scheme, _, key = self.headers.get("authorization", "").partition(" ")
                    if scheme.lower() != "bearer" or key not in replica.keys:
                        return self._send(401, "application/json", b'{"error": "Unauthorized"}')
                if self.path != "/v1/chat/completions":
                    return self._send(404, "application/json", b'{"error": "not found"}')
                request = json.loads(body)
                if request.get("stream"):
                    return self._stream(request)
                answer = {"id": f"chatcmpl-{replica.name}-{len(replica.seen)}", "object": "chat.completion",
                          "model": request.get("model"), "served_by": replica.name,
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": f"from {replica.name}"}}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
                self._send(200, "application/json", json.dumps(answer).encode())

            def _stream(self, request: dict) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                ident = f"chatcmpl-{replica.name}-{len(replica.seen)}"
                for i in range(replica.STREAM_CHUNKS):
                    last = i == replica.STREAM_CHUNKS - 1
                    chunk = {"id": ident, "object": "chat.completion.chunk", "model": request.get("model"),
                             "served_by": replica.name,
                             "choices": [{"index": 0, "delta": {"content": f"token{i} "},
                                          "finish_reason": "stop" if last else None}]}
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                    time.sleep(0.01)  # apart, so they cross the path as separate chunks
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    out = b""
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return out
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def load(self, waiting: int, running: int, kv_usage: float) -> None:
        self.waiting, self.running, self.kv_usage = waiting, running, kv_usage

    def exposition(self) -> str:
        """vLLM's gauges as it publishes them: per engine, labelled with the served model (the cache
        configuration as an info-style gauge whose labels carry the figures)."""
        labels = f'engine="0",model_name="{self.model}"'
        lines = []
        for name, kind, value, doc in (
                (VLLM_RUNNING, "gauge", self.running, "Number of requests in model execution batches."),
                (VLLM_WAITING, "gauge", self.waiting, "Number of requests waiting to be processed."),
                (VLLM_KV_USAGE, "gauge", self.kv_usage, "KV-cache usage. 1 means 100 percent usage.")):
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {float(value)}"]
        lines += [f"# HELP {VLLM_CACHE_INFO} Information of the LLMEngine CacheConfig",
                  f"# TYPE {VLLM_CACHE_INFO} gauge",
                  f'{VLLM_CACHE_INFO}{{block_size="16",engine="0",num_gpu_blocks="2048"}} 1.0']
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


# --- EPP ---------------------------------------------------------------------------------------


# The flags whose values the harness replaces: the ports (free loopback ones, not the pod's) and
# the configuration file (the same file, under the folder standing for the ConfigMap's mount).
PORT_FLAGS = {"port": "--grpc-port", "health_port": "--grpc-health-port", "metrics_port": "--metrics-port"}
CONFIG_FLAG = "--config-file"


def harness_args(args: Sequence[str], ports: Mapping[str, int], config_dir: Path) -> list[str]:
    """`args` (a Deployment's, as the program renders them) with only the ports and the
    configuration file's folder replaced: each flag of PORT_FLAGS gets its `ports` entry, and
    CONFIG_FLAG keeps its file name under `config_dir`. Every one of them must be there once."""
    out, replaced = [], []
    for arg in args:
        flag, eq, value = str(arg).partition("=")
        assert eq, f"{arg}: the harness reads `--flag=value` arguments only"
        for key, name in PORT_FLAGS.items():
            if flag == name:
                value = str(ports[key])
                replaced.append(flag)
        if flag == CONFIG_FLAG:
            value = str(config_dir / Path(value).name)
            replaced.append(flag)
        out.append(f"{flag}={value}")
    assert sorted(replaced) == sorted([*PORT_FLAGS.values(), CONFIG_FLAG]), f"flags replaced: {replaced} in {args}"
    return out


class Epp(edge.Process):
    """The endpoint picker run with `args` (EPP's flags, the program's: see harness_args for what
    is replaced) and `config_files` (file name -> text: the ConfigMap the pod mounts), reaching the
    API server with `kubeconfig` (the pod's in-cluster credentials stand here); ready once its
    ext_proc port accepts and its metrics port answers."""

    name = "epp"

    def __init__(self, tmp: Path, kubeconfig: Path, args: Sequence[str], config_files: Mapping[str, str]):
        why = edge_tools.missing(edge_tools.EPP, envoy=False)
        if why:
            raise RuntimeError(why)
        config_dir = tmp / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        for file_name, text in config_files.items():
            (config_dir / file_name).write_text(text)
        self.port, self.health_port, self.metrics_port = edge.free_port(), edge.free_port(), edge.free_port()
        self.args = harness_args(args, {"port": self.port, "health_port": self.health_port,
                                        "metrics_port": self.metrics_port}, config_dir)
        argv = [str(edge_tools.binary(edge_tools.EPP)), *self.args]
        env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": str(kubeconfig)}
        super().__init__(argv, tmp / "epp.log", env)
        self.wait_until(lambda: _accepts(self.port), "its ext_proc port")
        self.wait_until(lambda: edge.call(self.metrics_port, "GET", "/metrics")[0] == 200, "its /metrics")

    def queue_sizes(self) -> dict[str, int]:
        """What EPP last read of each pod's waiting queue (its own gauge), per pod name (EPP names
        an endpoint `<pod>-rank-<n>`, one per target port)."""
        text = edge.call(self.metrics_port, "GET", "/metrics")[1].decode()
        found = re.findall(r'^inference_pool_per_pod_queue_size\{([^}]*)\} (\S+)$', text, re.M)
        pods = (dict(re.findall(r'(\w+)="([^"]*)"', labels))["model_server_pod"] for labels, _ in found)
        return {re.sub(r"-rank-\d+$", "", pod): int(float(v)) for pod, (_, v) in zip(pods, found)}

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def set_loads(picker: Epp, replicas: Mapping[str, FakeVllm], loads: Mapping[str, tuple[int, int, float]]) -> None:
    """Set each replica's (waiting, running, KV-cache usage) and wait until EPP has read them."""
    for name, (waiting, running, kv) in loads.items():
        replicas[name].load(waiting, running, kv)
    # EPP's own per-pod gauge shows the queues it scraped; the other figures come in the same
    # scrape, and two more scrapes of each replica make sure the whole page has landed.
    want = {name: waiting for name, (waiting, _, _) in loads.items()}
    try:
        until(lambda: picker.queue_sizes() == want, 15, "EPP to read the queues", every=0.05)
    except TimeoutError:
        raise AssertionError(f"EPP reads the queues as {picker.queue_sizes()}, not {want}:\n{picker.tail()}") from None
    before = {name: r.metrics_reads for name, r in replicas.items()}
    until(lambda: all(r.metrics_reads > before[n] + 1 for n, r in replicas.items()), 5, "two scrapes more",
          every=0.05)


# --- the whole pool: control plane, replicas, picker ------------------------------------------


# The Role EPP's ServiceAccount gets (the program names it after the component).
ROLE = "endpoint-picker"


@dataclass
class PickedPool:
    """A pool's replicas (pod name -> stand-in) and the picker watching it."""

    replicas: dict[str, FakeVllm]
    picker: Epp


@contextlib.contextmanager
def picked_pool(tmp: Path, *, namespace: str, pool: dict, role_rules: list[dict], user: str,
                pods: Mapping[str, str], labels: Mapping[str, str], port: int, model: str,
                epp_args: Sequence[str], config_files: Mapping[str, str],
                keys: Optional[Sequence[str]] = None) -> Iterator[PickedPool]:
    """A control plane holding the InferencePool `pool` in `namespace`, `pods` (name -> IP) with
    `labels` Ready at their IPs, and ROLE of `role_rules` bound to `user`; a stand-in vLLM server
    of `model` at each pod's IP and `port` (checking `keys`, if given); EPP run with `epp_args` and
    `config_files` (see Epp), reading the API as `user`. Everything is stopped on leaving, the
    picker first and the control plane last."""
    run = envtest.start(tmp / "control-plane", components=envtest.APISERVER)
    started: list = []
    try:
        api = k8s_config.new_client_from_config(config_file=str(run.kubeconfig))
        create_crds(api)
        create_namespace(api, namespace)
        grant_role(api, namespace, ROLE, role_rules, user)
        group, version = pool["apiVersion"].split("/")
        k8s_client.CustomObjectsApi(api).create_namespaced_custom_object(group, version, namespace, "inferencepools", pool)
        replicas = {name: FakeVllm(name, ip, port, model, keys=keys) for name, ip in pods.items()}
        started += replicas.values()
        create_pods(api, namespace, pods, labels, port)
        kubeconfig = user_kubeconfig(run, user, tmp / "user" / "kubeconfig")
        picker = Epp(tmp / "epp", kubeconfig, epp_args, config_files)
        started.append(picker)
        yield PickedPool(replicas, picker)
    finally:
        for part in reversed(started):
            part.stop()
        run.stop()


# --- Envoy in front --------------------------------------------------------------------------


def epp_filter(cluster: str, timeout: str = "10s") -> dict:
    """EPP as Envoy's external processor, in the mode EPP answers in (its reference gateway
    configuration, test/testdata/envoy.yaml in the module): headers and trailers sent both ways,
    both bodies streamed full-duplex. EPP holds its answer to the request headers until the body
    has ended (it needs the body to pick), then sends the headers (with ENDPOINT_HEADER), then the
    body back as streamed chunks: in BUFFERED mode Envoy would wait for the headers' answer before
    it sent the body, and neither side would move. A picker that does not answer lets the request
    on (the pool's FailOpen)."""
    return {"name": EPP_FILTER, "typed_config": {
        "@type": _EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
        "failure_mode_allow": True,
        "message_timeout": timeout,
        "processing_mode": {
            "request_header_mode": "SEND", "request_body_mode": "FULL_DUPLEX_STREAMED", "request_trailer_mode": "SEND",
            "response_header_mode": "SEND", "response_body_mode": "FULL_DUPLEX_STREAMED",
            "response_trailer_mode": "SEND",
        },
    }}


# What Envoy answers a request to a pool whose picker is away, at once either way: 500 when the
# stream to the picker fails after Envoy began streaming it the body (full-duplex mode cannot fail
# open then), or, when it fails before (the connection refused sooner than the body was sent),
# Envoy applies `failure_mode_allow` and the original-destination cluster, with no picked address
# in the request, has no host: 503 "no healthy upstream". Which comes first depends on how busy
# the machine is. Neither reaches a replica.
PICKER_AWAY = {500: (0, b""), 503: (1, b"no healthy upstream")}


def picked_endpoint_cluster(name: str) -> dict:
    """The pool as Envoy's upstream: no endpoints of its own; each request connects to the
    `ip:port` EPP put in ENDPOINT_HEADER (an original-destination cluster that reads the header)."""
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": epp.ENDPOINT_HEADER},
    }


def bootstrap(epp_port: int, pool_cluster: str = "inference-pool", epp_cluster: str = "epp") -> dict:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": pool_cluster, "timeout": "30s"}}]
    return edge.bootstrap([epp_filter(epp_cluster)], routes,
                          [edge.static_cluster(epp_cluster, epp_port, http2=True), picked_endpoint_cluster(pool_cluster)])
