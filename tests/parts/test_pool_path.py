"""A model of two vLLM replicas behind the ingress, as the program configures it, for real: a request
with the client key naming the model reaches the replica whose queue is shorter.

The program runs for the `eks` stack with its first model at two replicas (so the model gets an
InferencePool and an endpoint picker), and the test takes from what it registers: the ingress's
EnvoyFilter and HTTPRoute, the InferencePool, the picker's Deployment (its arguments, its volume),
ConfigMap and Role, the picker's Service, the model servers' StatefulSet (its pods' labels and
port) and the servers' key Secret. Then, on loopback:
- Envoy (the pinned release) runs the ingress's configuration as istiod builds it
  (tests/edge_istio.py): the key check and the body-based router from the EnvoyFilter, then
  istiod's ext_proc filter for inference pools, switched on at the model's route with the
  program's picker as its processor, and the route's cluster is the pool's, choosing the host
  the picker names in the request's metadata.
- The body-based router (BBR, the pinned release) with the program's flags.
- A kube-apiserver holding the program's InferencePool (its spec as rendered, in its namespace)
  and two pods carrying the server StatefulSet's pod labels, Ready at 127.0.0.2 and 127.0.0.3.
- The endpoint picker (EPP, the pinned release) with the Deployment's own arguments, reading the
  API as a user holding only the program's Role. What the harness changes: `--grpc-port`,
  `--grpc-health-port` and `--metrics-port` get free loopback ports (the Envoy cluster of the
  picker's Service points at the gRPC one), and `--config-file` keeps its file name under a
  folder standing for the ConfigMap's mount (the ConfigMap's data written there); the kubeconfig
  comes in KUBECONFIG (a pod would use its service account's token). Nothing else.
- Stand-in vLLM servers at the pods' addresses and the servers' port (tests/epp_path.py: vLLM's
  series on `/metrics`, the program's key list checked on `/v1` as vLLM does, server-sent events
  when asked), and stand-ins for the front door and the pages.
Where the servers' port is taken on loopback, a free one stands for it in the pods, the pool's
`targetPorts` and the servers alike (said in the fixture's log line; nothing else of the pool
changes).

Besides the path itself: the picker's probes as the Deployment gives them, what a request meets
with the picker away (the pool's FailOpen is not honoured: 500), and a client's own header that
the picker would obey, which the ingress drops.
"""

from __future__ import annotations

import collections
import time
import json
import socket
from pathlib import PurePosixPath
from types import SimpleNamespace

import grpc
import pytest

from components.edge import model_routing as routing
from tests import edge_istio as istio
from tests import edge_path as edge
from tests import epp_path
from tools import edge_tools, mock_engine

pytestmark = pytest.mark.skipif(bool(epp_path.missing() or edge_tools.missing(edge_tools.BBR)),
                                reason=epp_path.missing() or edge_tools.missing(edge_tools.BBR) or "")

CLIENT_KEY = "sk-pool-client-0123456789abcdef"
STACK = "eks"
ENVOY_FILTER = "kubernetes:networking.istio.io/v1alpha3:EnvoyFilter"
HTTP_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
POOL = "kubernetes:inference.networking.k8s.io/v1:InferencePool"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
SERVICE = "kubernetes:core/v1:Service"
SECRET = "kubernetes:core/v1:Secret"
PICKER_USER = "endpoint-picker"
# Two replicas of the model's StatefulSet (pod name -> IP).
REPLICAS = {"model-0": "127.0.0.2", "model-1": "127.0.0.3"}
A, B = REPLICAS
REQUESTS = 10


def _plain(value):
    """A recorded input as the Kubernetes provider sends it: secrets unwrapped, and numbers that
    are whole as integers (the engine's protocol carries every number as a float)."""
    value = mock_engine.reveal(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _models_config() -> list:
    models = mock_engine.stack_config(STACK)["llm-platform:models"]
    return json.loads(models) if isinstance(models, str) else list(models)


@pytest.fixture(scope="module")
def program():
    first, *rest = _models_config()
    rec = mock_engine.run(STACK, {"llm-platform:models": [{**first, "replicas": 2}, *rest],
                                  "llm-platform:apiKey": CLIENT_KEY}, secrets=("llm-platform:apiKey",))
    pool = _plain(rec.one(POOL).inputs)
    alias = pool["metadata"]["name"]
    picker = _plain(rec.one(DEPLOYMENT, f"inference-pools-{alias}-picker").inputs)
    (container,) = picker["spec"]["template"]["spec"]["containers"]
    (server,) = [_plain(r.inputs) for r in rec.model_servers()]
    (server_container,) = server["spec"]["template"]["spec"]["containers"]
    secret = _plain(rec.one(SECRET, f"model-{alias}-api-keys").inputs)
    return SimpleNamespace(
        alias=alias,
        envoy_filter=_plain(rec.one(ENVOY_FILTER).inputs["spec"]),
        routes=_plain(rec.one(HTTP_ROUTE, "gateway-routes").inputs["spec"]),
        pool=pool,
        picker_args=container["args"],
        picker_probes=[container[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in container],
        picker_mounts=container.get("volumeMounts", []),
        picker_volumes=picker["spec"]["template"]["spec"].get("volumes", []),
        picker_configs={r.inputs["metadata"]["name"]: _plain(r.inputs["data"]) for r in rec.of_type(CONFIG_MAP)
                        if r.inputs["metadata"].get("namespace") == pool["metadata"]["namespace"]},
        role_rules=_plain(rec.one(ROLE, "inference-pools-reader").inputs["rules"]),
        picker_services={_plain(r.inputs)["metadata"]["name"]: _plain(r.inputs) for r in rec.of_type(SERVICE)},
        server_labels=server["spec"]["template"]["metadata"]["labels"],
        server_port=next(p["containerPort"] for p in server_container["ports"] if p.get("name") == "http"),
        server_keys=json.loads(secret["stringData"]["serve.yaml"])["api-key"],
    )


def _mounted_config(program) -> dict[str, str]:
    """What the picker's `--config-file` reads: the ConfigMap its volume names, mounted where its
    container mounts that volume (the file name is the ConfigMap's key)."""
    flag = next(a for a in program.picker_args if a.startswith(epp_path.CONFIG_FLAG + "="))
    path = PurePosixPath(flag.partition("=")[2])
    volumes = {v["name"]: v for v in program.picker_volumes}
    (mount,) = [m for m in program.picker_mounts if PurePosixPath(m["mountPath"]) == path.parent]
    config_map = program.picker_configs[volumes[mount["name"]]["configMap"]["name"]]
    assert path.name in config_map, f"{path} is not a key of the ConfigMap mounted at {mount['mountPath']}"
    return dict(config_map)


def _picker_http2(program, spec: dict) -> None:
    """Envoy reaches the picker over HTTP/2 only where istiod reads its Service's port as gRPC."""
    ref = spec["endpointPickerRef"]
    service = program.picker_services[ref["name"]]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    assert port.get("appProtocol") == "grpc" or port["name"].startswith("grpc"), port


@pytest.fixture(scope="module")
def path(tmp_path_factory, program):
    tmp = tmp_path_factory.mktemp("pool-path")
    namespace = program.pool["metadata"]["namespace"]
    spec = dict(program.pool["spec"])
    port = program.server_port
    if not epp_path.port_free_on(port, *REPLICAS.values()):
        taken, port = port, epp_path.free_port_on(*REPLICAS.values())
        print(f"port {taken} is taken on loopback: {port} stands for it")
        spec["targetPorts"] = [{**t, "number": port if t["number"] == taken else t["number"]}
                               for t in spec["targetPorts"]]
    _picker_http2(program, spec)
    config_files = _mounted_config(program)
    with epp_path.picked_pool(tmp, namespace=namespace, pool={**program.pool, "spec": spec},
                              role_rules=program.role_rules, user=PICKER_USER, pods=REPLICAS,
                              labels=program.server_labels, port=port, model=program.alias,
                              epp_args=program.picker_args, config_files=config_files,
                              keys=program.server_keys) as pool_path:
        picker, replicas = pool_path.picker, pool_path.replicas
        started: list = []
        try:
            bbr = edge.Bbr(tmp / "bbr")
            started.append(bbr)
            # The front door and the pages: answer with who they are.
            front_door = epp_path.FakeVllm("front-door", "127.0.0.1", edge.free_port(), "any")
            pages = epp_path.FakeVllm("pages", "127.0.0.1", edge.free_port(), "any")
            started += [front_door, pages]
            pods = [(ip, port) for ip in REPLICAS.values()]
            # A rule to the model's Service instead of its pool would reach the same pods, unpicked.
            ports = istio.stand_in_ports(program.routes, {program.alias: pods}, front_door.port, pages.port)
            bbr_cluster = _bbr_cluster(program)
            picker_cluster = istio.picker_cluster(namespace, spec)
            ports[bbr_cluster] = bbr.port
            ports[picker_cluster] = picker.port
            ports[istio.pool_cluster(program.alias, namespace)] = pods
            config = istio.ingress_bootstrap(program.envoy_filter, program.routes, ports,
                                             http2=[bbr_cluster, picker_cluster],
                                             pools={f"{namespace}/{program.alias}": spec})
            envoy = edge.Envoy(config, tmp / "envoy")
            started.append(envoy)
            yield SimpleNamespace(envoy=envoy, epp=picker, bbr=bbr, replicas=replicas, front_door=front_door,
                                  alias=program.alias, namespace=namespace, pool_spec=spec, picker_cluster=picker_cluster,
                                  bbr_cluster=bbr_cluster)
        finally:
            for part in reversed(started):
                part.stop()


def _bbr_cluster(program) -> str:
    """The body-based router's cluster, as the EnvoyFilter names it."""
    (name,) = {p["patch"]["value"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
               for p in program.envoy_filter["configPatches"]
               if p["applyTo"] == "HTTP_FILTER" and p["patch"]["value"]["name"] == routing.BBR_FILTER}
    return name


def _chat(model: str, text: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}


def _post(path, body, key=CLIENT_KEY, headers=None) -> tuple[int, dict]:
    status, raw, _ = edge.call(path.envoy.port, "POST", "/v1/chat/completions", body, key, headers)
    return status, (json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode(errors="replace")})


def _cluster_requests(path, cluster: str) -> int:
    """Requests (gRPC streams, for a processor) Envoy has sent to `cluster`'s hosts; none where
    its configuration has no such cluster."""
    text = path.envoy.admin("/clusters?format=json")[1]
    for entry in json.loads(text)["cluster_statuses"]:
        if entry["name"] == cluster:
            return sum(int(next((s.get("value", 0) for s in h["stats"] if s["name"] == "rq_total"), 0))
                       for h in entry.get("host_statuses", []))
    return 0


def _seen(path) -> dict[str, int]:
    return {name: len(r.seen) for name, r in path.replicas.items()}


def _served_by(path, tag: str, **extra) -> collections.Counter:
    """Who served REQUESTS chats through the ingress, each with its own prompt (so the picker's
    prefix-cache scorer stays neutral), all answered 200 with the model's name."""
    served: collections.Counter = collections.Counter()
    for i in range(REQUESTS):
        status, body = _post(path, _chat(path.alias, f"{tag} request {i}: say hello."), **extra)
        assert status == 200, (body, path.epp.tail())
        assert body["model"] == path.alias and body["choices"][0]["message"]["role"] == "assistant"
        served[body["served_by"]] += 1
    return served


def test_a_keyed_request_goes_to_the_replica_with_the_shorter_queue(path):
    """Same running batch and KV cache on both, a long queue on one: every request the client
    sends with its key goes to the other, asked of the router and the picker once each, and the
    replica gets the client's key (which its own check accepts); when the queues swap, the
    requests follow."""
    epp_path.set_loads(path.epp, path.replicas, {A: (20, 8, 0.5), B: (0, 8, 0.5)})
    routed, picked, front_door = (_cluster_requests(path, path.bbr_cluster), _cluster_requests(path, path.picker_cluster),
                                  len(path.front_door.seen))
    assert _served_by(path, "first") == {B: REQUESTS}
    assert _cluster_requests(path, path.bbr_cluster) == routed + REQUESTS
    assert _cluster_requests(path, path.picker_cluster) == picked + REQUESTS
    assert len(path.front_door.seen) == front_door
    assert path.replicas[B].seen[-1]["headers"]["authorization"] == f"Bearer {CLIENT_KEY}"
    epp_path.set_loads(path.epp, path.replicas, {A: (0, 8, 0.5), B: (20, 8, 0.5)})
    assert _served_by(path, "swapped") == {A: REQUESTS}


def test_a_client_cannot_name_the_replica(path):
    """The host comes from the picker's answer (the request's metadata), not from a header a
    client sends."""
    epp_path.set_loads(path.epp, path.replicas, {A: (20, 8, 0.5), B: (0, 8, 0.5)})
    header = {"x-gateway-destination-endpoint": path.replicas[A].address}
    assert _served_by(path, "pick a", headers=header) == {B: REQUESTS}


def test_a_streamed_completion_arrives_to_done(path):
    epp_path.set_loads(path.epp, path.replicas, {A: (0, 8, 0.5), B: (20, 8, 0.5)})
    chunks = edge.streamed_chunks(path.envoy.port, "/v1/chat/completions",
                                  _chat(path.alias, "stream please", stream=True), CLIENT_KEY)
    assert len(chunks) == epp_path.FakeVllm.STREAM_CHUNKS and {c["served_by"] for c in chunks} == {A}


@pytest.mark.parametrize("auth", [None, "Bearer sk-not-a-key-0123456789abcdef"])
def test_without_the_client_key_no_replica_is_reached(path, auth):
    """No key: 401 at the ingress, before the router or the picker is asked. A key the ingress
    does not know goes to the front door (which checks virtual keys), never to a replica."""
    before, picked = _seen(path), _cluster_requests(path, path.picker_cluster)
    front_door = len(path.front_door.seen)
    headers = {"Authorization": auth} if auth else {}
    status, body = _post(path, _chat(path.alias, "no key"), key=None, headers=headers)
    if auth is None:
        assert status == 401, body
        assert len(path.front_door.seen) == front_door
    else:
        assert status == 200 and body["served_by"] == "front-door"
    assert _seen(path) == before and _cluster_requests(path, path.picker_cluster) == picked


def test_an_unknown_model_goes_to_the_front_door(path):
    before, picked = _seen(path), _cluster_requests(path, path.picker_cluster)
    status, body = _post(path, _chat("gamma", "who serves gamma?"))
    assert status == 200 and body["served_by"] == "front-door"
    assert path.front_door.seen[-1]["headers"]["authorization"] == f"Bearer {CLIENT_KEY}"
    assert _seen(path) == before and _cluster_requests(path, path.picker_cluster) == picked


def test_the_picker_reads_the_api_with_the_programs_role_alone(path):
    refused = [line for line in path.epp.log_lines() if "forbidden" in json.dumps(line).lower()]
    assert refused == []


def test_the_pickers_probes_find_it_serving(path, program):
    """The kubelet's probes as the Deployment gives them, on the port of `--grpc-health-port`: the
    gRPC readiness probe (the service it names) gets SERVING from the picker, so its pod becomes
    Ready; the liveness probe only asks that the port answers, so a picker still waiting for its
    pool is not restarted."""
    health_flag = next(a for a in program.picker_args if a.startswith(epp_path.PORT_FLAGS["health_port"] + "="))
    port = int(health_flag.partition("=")[2])
    kinds = set()
    for probe in program.picker_probes:
        if "grpc" in probe:
            kinds.add("grpc")
            assert probe["grpc"]["port"] == port, probe
            assert _grpc_health(path.epp.health_port, probe["grpc"].get("service", "")) == "SERVING", probe
        else:
            kinds.add("tcp")
            assert probe["tcpSocket"]["port"] == port, probe
            socket.create_connection(("127.0.0.1", path.epp.health_port), timeout=5).close()
    assert kinds == {"grpc", "tcp"}


def _grpc_health(port: int, service: str) -> str:
    """grpc.health.v1.Health/Check, its two messages written by hand (a string field 1; an enum
    field 1)."""
    assert len(service) < 128, "a one-byte length"
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        answer = check(request, timeout=5)
    status = answer[1] if answer[:1] == b"\x08" else 0
    return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}[status]


def test_without_the_picker_a_request_fails_at_once(path, program, tmp_path):
    """The pool says FailOpen and istiod turns that into `failure_mode_allow`, but Envoy cannot fail
    open to the pool's balancing: with the picker away a request to the model is answered 500 (or
    503 with no address picked, epp_path.PICKER_AWAY) at once, never a hang, and reaches neither a
    replica nor the front door."""
    pods = [(r.host, r.port) for r in path.replicas.values()]
    ports = istio.stand_in_ports(program.routes, {path.alias: pods}, path.front_door.port, path.front_door.port)
    with edge.refusing_port() as away:
        ports.update({path.bbr_cluster: path.bbr.port, path.picker_cluster: away,
                      istio.pool_cluster(path.alias, path.namespace): pods})
        config = istio.ingress_bootstrap(program.envoy_filter, program.routes, ports,
                                         http2=[path.bbr_cluster, path.picker_cluster],
                                         pools={f"{path.namespace}/{path.alias}": path.pool_spec})
        before, front_door = _seen(path), len(path.front_door.seen)
        with edge.Envoy(config, tmp_path) as envoy:
            failed_open = 0
            for stream in (False, True):
                started = time.monotonic()
                status, body, _ = edge.call(envoy.port, "POST", "/v1/chat/completions",
                                            _chat(path.alias, "anyone there?", stream=stream), CLIENT_KEY)
                assert status in epp_path.PICKER_AWAY and time.monotonic() - started < 2, (status, body)
                assert body == epp_path.PICKER_AWAY[status][1], body
                failed_open += epp_path.PICKER_AWAY[status][0]
            assert envoy.stats(r"ext_proc\.failure_mode_allowed$") == {
                "http.edge.ext_proc.failure_mode_allowed": failed_open}
        assert _seen(path) == before and len(path.front_door.seen) == front_door


# EPP's request-control headers (pkg/epp/metadata in the module): a client's own reach the picker
# as they are, since the key check drops only the router's header and its own route mark.
REWRITE_HEADER = "x-gateway-model-name-rewrite"


def test_a_client_cannot_rename_the_model_behind_the_ingress(path):
    """The picker takes REWRITE_HEADER as the model to send the request on as: it rewrites the
    body's `model`, and labels its own series with the value (each new value adds over a hundred).
    A client's own must not get through."""
    epp_path.set_loads(path.epp, path.replicas, {A: (20, 8, 0.5), B: (0, 8, 0.5)})
    status, body = _post(path, _chat(path.alias, "rename me"), headers={REWRITE_HEADER: "client-chosen-name"})
    assert status == 200 and body["served_by"] == B
    assert json.loads(path.replicas[B].seen[-1]["body"])["model"] == path.alias
    assert "client-chosen-name" not in edge.call(path.epp.metrics_port, "GET", "/metrics")[1].decode()


def test_the_client_sees_no_header_of_the_pickers(path):
    """The picker marks each response it handles with a debugging header; the key check removes it
    on the way out (responses pass the filters in reverse)."""
    epp_path.set_loads(path.epp, path.replicas, {A: (0, 8, 0.5), B: (20, 8, 0.5)})
    status, _, headers = edge.call(path.envoy.port, "POST", "/v1/chat/completions",
                                   _chat(path.alias, "any headers?"), CLIENT_KEY)
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("x-went-into")], headers
