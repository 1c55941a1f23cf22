"""The Inference Extension's endpoint picker (EPP) as this platform runs it: which replica of a
model's pool serves each request, chosen from what every replica says about its own load.

The ingress's Envoy asks EPP (an external processor) about each request; EPP reads the body,
scores the pool's ready pods on the queue, KV-cache and prefix-cache figures it scrapes from each
one's vLLM `/metrics`, and answers with the chosen pod's `ip:port` in a request header
(ENDPOINT_HEADER) and in dynamic metadata. istiod (1.30) routes on the metadata alone: the
pool's cluster is its shadow Service's endpoints with Envoy's override-host policy, the host the
metadata names (round robin without one); a client's own header is never read there, and the
ingress drops it anyway. The pool is an InferencePool (its selector, the
model servers' port, and EPP's Service), which EPP watches with the pods it selects.

Pure data: flags, the plugin configuration, the pool's spec, and the permissions EPP needs. The
Pulumi objects that run it are built elsewhere from these.
"""

from __future__ import annotations

import json

# Pinned to the Inference Extension release whose chart and CRDs this platform vendors (the body-
# based router is the same release); from v1.6 the picker lives on in llm-d's repositories.
EPP_VERSION = "v1.5.0"
EPP_IMAGE = f"registry.k8s.io/gateway-api-inference-extension/epp:{EPP_VERSION}"
# EPP's own defaults (pkg/epp/server/options.go): ext_proc gRPC, gRPC health (the probes' port),
# and its Prometheus metrics.
GRPC_PORT = 9002
HEALTH_PORT = 9003
METRICS_PORT = 9090
# The gRPC health service the probes ask for: SERVING once EPP has read its pool. Without leader
# election every name is answered alike; "readiness" stays right if it is ever turned on.
HEALTH_SERVICE = "readiness"

# The protocol between EPP and the gateway (docs/proposals/004-endpoint-picker-protocol): the
# chosen endpoint as a request header, and the same value in the ext_proc response's dynamic
# metadata under ENDPOINT_METADATA_NAMESPACE. istiod's gateways route on the metadata.
ENDPOINT_HEADER = "x-gateway-destination-endpoint"
ENDPOINT_METADATA_NAMESPACE = "envoy.lb"
# What the gateway may send to narrow the choice (a list of ip:port under the subset namespace);
# this platform sends none, so EPP picks from the whole pool.
SUBSET_METADATA_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"

# Request headers the picker obeys: a model to send the request on as (it rewrites the body's
# `model`, and labels its own series with it), an objective (a priority), a fairness id, and the
# endpoints themselves. They are the gateway's to set: the ingress drops a client's own.
CLIENT_MAY_NOT_SET = ("x-gateway-model-name-rewrite", "x-gateway-inference-objective",
                      "x-gateway-inference-fairness-id", ENDPOINT_HEADER, SUBSET_KEY)

POOL_API_GROUP = "inference.networking.k8s.io"
POOL_API_VERSION = f"{POOL_API_GROUP}/v1"
# The alpha API of the same release: objectives (priorities) and model rewrites. EPP watches them
# only where their CRDs are installed (it asks discovery at start).
ALPHA_API_GROUP = "inference.networking.x-k8s.io"
CONFIG_API_VERSION = f"{ALPHA_API_GROUP}/v1alpha1"

# The vLLM series the scorers read (vLLM 0.29's names: vllm/v1/metrics/loggers.py): requests
# waiting for a batch slot, requests in the running batch, and the fraction of KV-cache blocks in
# use (0 to 1). `cache_config_info` carries the block size the prefix-cache scorer assumes. vLLM
# publishes `vllm:lora_requests_info` only when started with LoRA adapters enabled, which this
# platform never does: EPP is told not to look for it (else every scrape reports it missing).
VLLM_ENGINE = "vllm"
VLLM_QUEUED = "vllm:num_requests_waiting"
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"
VLLM_CACHE_INFO = "vllm:cache_config_info"
METRICS_PATH = "/metrics"

# Scorer weights: a replica's queue and its KV-cache pressure count alike; a replica that already
# holds the prompt's prefix counts most (prefill skipped is the largest single saving), yet one
# that is far ahead on both queue and cache can still outweigh a full prefix match (2 + 2 > 3).
QUEUE_WEIGHT = 2
KV_CACHE_WEIGHT = 2
PREFIX_WEIGHT = 3


def epp_args(pool_name: str, pool_namespace: str, config_file: str, grpc_port: int = GRPC_PORT,
             health_port: int = HEALTH_PORT, metrics_port: int = METRICS_PORT) -> list[str]:
    """EPP's command line.

    - The pool by name, namespace and API group: EPP watches that one InferencePool and the pods
      its selector picks (in that namespace only); the group is spelled out so that a later
      default cannot move it to another API.
    - Plain gRPC (`--secure-serving=false`): the mesh's mTLS protects the hop from the ingress;
      EPP's own default is TLS with a self-signed certificate, which Envoy would have to be told
      to trust blindly.
    - No tracing (its default exports OTLP to a collector this platform does not run) and no
      pprof handlers on the metrics port.
    - Metrics without asking the API server who reads them (`--metrics-endpoint-auth=false`):
      who may reach the port is the mesh's to decide, and the check would need EPP to create
      TokenReviews and SubjectAccessReviews (a ClusterRole) for every scrape.
    - The plugin configuration from a file (`plugins_config()`), which names the vLLM metrics:
      v1.5.0 refuses the older metric flags (`--total-queued-requests-metric` and the like)
      outright, and its defaults are vLLM's names anyway.
    - JSON logs, one object a line, for the log pipeline.
    No leader election: one replica, as upstream recommends (the prefix-cache index is held in
    memory, per replica)."""
    return [
        f"--pool-name={pool_name}", f"--pool-namespace={pool_namespace}", f"--pool-group={POOL_API_GROUP}",
        f"--grpc-port={grpc_port}", f"--grpc-health-port={health_port}", f"--metrics-port={metrics_port}",
        "--secure-serving=false", "--tracing=false", "--enable-pprof=false", "--metrics-endpoint-auth=false",
        f"--config-file={config_file}", "--zap-encoder=json",
    ]


def plugins_config() -> str:
    """The EndpointPickerConfig, as JSON (a YAML document too, which is what EPP reads).

    One scheduling profile: three scorers and a picker that takes the best total.
    - `queue-scorer`: the shortest waiting queue in the pool scores 1, the longest 0.
    - `kv-cache-utilization-scorer`: 1 minus the fraction of KV cache in use.
    - `prefix-cache-scorer`: the share of the prompt's leading blocks EPP has already sent to that
      replica (an index EPP keeps itself; the servers are not asked).
    - `max-score-picker`: the highest weighted sum; ties are broken at random.
    The data layer spelled out rather than left to EPP's defaults: one metrics source (plain HTTP
    to each pod's serving port, `/metrics`) and one extractor whose vLLM entry names the series
    above, so the names this platform relies on are written here and a vLLM rename shows up as a
    difference against them; no LoRA series (the servers run without adapters, and a series
    named but missing marks every scrape failed in EPP's log). Pods carry no engine label, so
    every pod is read as vLLM."""
    config = {
        "apiVersion": CONFIG_API_VERSION,
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer"},
            {"type": "max-score-picker"},
            {"type": "metrics-data-source", "parameters": {"scheme": "http", "path": METRICS_PATH}},
            {"type": "core-metrics-extractor", "parameters": {
                "defaultEngine": VLLM_ENGINE,
                "engineConfigs": [{
                    "name": VLLM_ENGINE,
                    "queuedRequestsSpec": VLLM_QUEUED,
                    "runningRequestsSpec": VLLM_RUNNING,
                    "kvUsageSpec": VLLM_KV_USAGE,
                    "loraSpec": "",
                    "cacheInfoSpec": VLLM_CACHE_INFO,
                }],
            }},
        ],
        "schedulingProfiles": [{
            "name": "default",
            "plugins": [
                {"pluginRef": "queue-scorer", "weight": QUEUE_WEIGHT},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": KV_CACHE_WEIGHT},
                {"pluginRef": "prefix-cache-scorer", "weight": PREFIX_WEIGHT},
                {"pluginRef": "max-score-picker"},
            ],
        }],
        "dataLayer": {"sources": [{
            "pluginRef": "metrics-data-source",
            "extractors": [{"pluginRef": "core-metrics-extractor"}],
        }]},
    }
    return json.dumps(config, indent=1)


def inference_pool_spec(selector: dict[str, str], target_port: int, epp_service: str, epp_port: int = GRPC_PORT) -> dict:
    """The InferencePool's spec (inference.networking.k8s.io/v1).

    - `selector`: the model server pods' labels; EPP picks only among ready pods that carry them.
    - `targetPorts`: the servers' port, where EPP sends the request and scrapes `/metrics`.
    - `endpointPickerRef`: EPP's Service and gRPC port, for the gateway to find it.
    - `failureMode: FailOpen`: asks the gateway to send a request on to the pool when EPP does
      not answer (its own balancing, blind to load) rather than fail it: a lost picker should
      cost latency, not availability. It is a request to the gateway, which has to be able to
      honour it: Envoy's ext_proc filter in the full-duplex mode EPP needs answers 500 instead,
      or 503 where it fails open before streaming the body and no address was picked
      (tests/parts/test_endpoint_picker.py shows both)."""
    return {
        "selector": {"matchLabels": dict(selector)},
        "targetPorts": [{"number": target_port}],
        "endpointPickerRef": {"kind": "Service", "name": epp_service, "port": {"number": epp_port},
                              "failureMode": "FailOpen"},
    }


def role_rules() -> list[dict]:
    """What EPP reads in its pool's namespace, as a Role's rules: the pods (to know which are
    ready, and their IPs), its InferencePool, and the alpha objectives and model rewrites (watched
    only where their CRDs exist: with a CRD installed and its rule missing, EPP's cache never
    syncs and it never picks). Read-only: EPP writes nothing to the API. `get` as upstream's
    chart grants it; this release reads through its informers, so list and watch are what it
    uses. Discovery (which EPP asks at start) every authenticated client may already read."""
    read = ["get", "list", "watch"]
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": read},
        {"apiGroups": [POOL_API_GROUP], "resources": ["inferencepools"], "verbs": read},
        {"apiGroups": [ALPHA_API_GROUP], "resources": ["inferenceobjectives", "inferencemodelrewrites"], "verbs": read},
    ]
