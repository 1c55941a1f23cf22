"""PodAutoscaling: KEDA, and one ScaledObject per autoscaled model server that follows the
server's queue of waiting requests as Prometheus scrapes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping, NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.core.chart_source import release_source
from components.core.names import FRONT_DOOR_NAME, MODEL_LABEL
from components.core.trust import Caller

if TYPE_CHECKING:
    from components.config import Autoscaling

KEDA_REPO = "https://kedacore.github.io/charts"
KEDA_CHART_VERSION = "2.20.2"
KEDA_API = "keda.sh/v1alpha1"
# Where KEDA runs; its operator (the chart's service account `keda-operator`) queries Prometheus
# for the model servers' load.
KEDA_NAMESPACE = "keda"
KEDA = Caller(KEDA_NAMESPACE, "keda-operator")

# The gauge each runtime's /metrics reports for requests accepted but not yet being served:
# vLLM's scheduler queue, llama.cpp's requests deferred for want of a free slot.
QUEUE_METRIC = {"vllm": "vllm:num_requests_waiting", "llama-cpp": "llamacpp:requests_deferred"}
# The gauge each runtime reports for requests it is generating: a long generation with nothing
# waiting behind it still holds the server (LiteLLM counts a request only once it has ended).
RUNNING_METRIC = {"vllm": "vllm:num_requests_running", "llama-cpp": "llamacpp:requests_processing"}
# The front door's request counter (LiteLLM's Prometheus callback), by the model a client asked
# for; it counts requests that failed too, so it sees demand while a server is at zero.
FRONT_DOOR_REQUESTS = "litellm_proxy_total_requests_metric_total"
# Requests that passed the front door's authentication, as LiteLLM 1.108 labels them: answered
# (2xx) or failed behind it (5xx: what a client gets while the server is at zero). A request
# refused at the door is 401 with status_code "None" (no key), 400 (an unknown key without a
# database), 401 (with one) or 403 (the UI's key from elsewhere): anyone could send those.
ADMITTED_STATUS = "2..|5.."
# The job of the front door's scrape: its ServiceMonitor names it after the Service.
FRONT_DOOR_JOB = FRONT_DOOR_NAME
# How far back a request to the front door counts as demand for a server at zero.
DEMAND_WINDOW = "5m"
POLLING_INTERVAL_S = 15
# Queries that fail this many times in a row (Prometheus away) put KEDA on its fallback: the
# replicas the server has, at least max(minReplicas, 1). KEDA's default ("static") would feed the
# HPA exactly the fallback count and so remove every replica above it while Prometheus is away.
FALLBACK_FAILURES = 3
FALLBACK_BEHAVIOR = "currentReplicasIfHigher"


@dataclass(frozen=True)
class ScaledServer:
    """One model server KEDA sizes, as the server publishes it: its workload, runtime and
    autoscaling settings."""

    name: str
    kind: Literal["Deployment", "StatefulSet"]
    runtime: Literal["vllm", "llama-cpp"]
    autoscaling: Optional["Autoscaling"]
    workload: Optional[pulumi.Resource] = None


class PodAutoscalingArgs(TypedDict):
    # Prometheus' in-cluster HTTP address (monitoring.PROMETHEUS_URL).
    prometheus_url: str
    # The servers, all in one namespace.
    servers: Sequence[ScaledServer]
    namespace: str
    # Servers in another namespace (a team's), by name; the rest are in `namespace`. One KEDA
    # serves them all.
    namespaces: NotRequired[Mapping[str, str]]
    # Namespace of the front door, whose request count wakes servers at zero.
    front_door_namespace: str


def queue_query(server: ScaledServer, namespace: str) -> str:
    """Requests waiting across the server's pods (the HPA divides by the replicas there are)."""
    # By the model label the server's ServiceMonitor sets: exact, where pod-name patterns of two
    # workload kinds could overlap ("qwen-<hash>-<id>" vs "qwen-7b-0").
    return f'sum({QUEUE_METRIC[server.runtime]}{{namespace="{namespace}",{MODEL_LABEL}="{server.name}"}})'


def demand_query(server: ScaledServer, namespace: str, front_door_namespace: str) -> str:
    """1 while the server is generating, or an admitted client asked the front door for its model
    within the window; else 0. A series the counter starts with the first request has no increase
    yet: it counts as new, but only once Prometheus had been scraping the front door a window
    ago: on a Prometheus without that history (a restart on emptyDir), every series looks new."""
    model = server.name
    series = (f'{FRONT_DOOR_REQUESTS}{{namespace="{front_door_namespace}",requested_model="{model}",'
              f'status_code=~"{ADMITTED_STATUS}"}}')
    scraped_before = f'count(up{{namespace="{front_door_namespace}",job="{FRONT_DOOR_JOB}"}} offset {DEMAND_WINDOW})'
    running = f'{RUNNING_METRIC[server.runtime]}{{namespace="{namespace}",{MODEL_LABEL}="{model}"}}'
    return (f"clamp_max((sum(increase({series}[{DEMAND_WINDOW}])) or vector(0))"
            f" + (count(({series} unless {series} offset {DEMAND_WINDOW}) and on() {scraped_before}) or vector(0))"
            f" + (sum({running}) or vector(0)), 1)")


def scaled_object_spec(server: ScaledServer, namespace: str, prometheus_url: str, front_door_namespace: str) -> dict:
    auto = server.autoscaling
    assert auto is not None, f"{server.name}: no autoscaling settings"
    triggers = [{
        "type": "prometheus",
        "name": "queue",
        # AverageValue: the target is per replica, so replicas = ceil(waiting / target).
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": prometheus_url,
            "query": queue_query(server, namespace),
            "threshold": str(auto.target_queue_depth),
        },
    }]
    if auto.scale_to_zero:
        # At zero there is no server and so no queue to read: the front door's count of requests
        # for the model wakes it (one replica; the queue trigger takes over from there).
        triggers.append({
            "type": "prometheus",
            "name": "demand",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": prometheus_url,
                "query": demand_query(server, namespace, front_door_namespace),
                "threshold": "1",
                "activationThreshold": "0",
            },
        })
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": server.kind, "name": server.name},
        "minReplicaCount": auto.min_replicas,
        "maxReplicaCount": auto.max_replicas,
        "pollingInterval": POLLING_INTERVAL_S,
        # KEDA 2.20 counts a trigger on fallback as active: a server at zero is brought to one.
        "fallback": {"failureThreshold": FALLBACK_FAILURES, "replicas": max(auto.min_replicas, 1),
                     "behavior": FALLBACK_BEHAVIOR},
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
            # A replica takes minutes to load: remove one at a time, once the queue has stayed
            # short for the whole window.
            "scaleDown": {"stabilizationWindowSeconds": auto.scale_down_after_seconds,
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
        }}},
        "triggers": triggers,
    }
    if auto.scale_to_zero:
        spec["cooldownPeriod"] = auto.cooldown_seconds
    return spec


class PodAutoscaling(pulumi.ComponentResource):
    release: k8s.helm.v3.Release
    scaled_objects: dict[str, k8s.apiextensions.CustomResource]

    def __init__(self, name: str, args: PodAutoscalingArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:PodAutoscaling", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # KEDA's operator, metrics API server and webhook run outside the mesh, in a namespace
        # without NetworkPolicies: the operator calls Prometheus, the API server calls the
        # metrics server (APIService) and the webhook.
        self.release = k8s.helm.v3.Release(
            f"{name}-keda",
            name="keda",
            **release_source("keda", KEDA_CHART_VERSION, KEDA_REPO),
            namespace=KEDA_NAMESPACE,
            create_namespace=True,
            values={"crds": {"install": True}},
            opts=child,
        )
        self.scaled_objects = {}
        for server in args["servers"]:
            namespace = args.get("namespaces", {}).get(server.name, args["namespace"])
            self.scaled_objects[server.name] = k8s.apiextensions.CustomResource(
                f"{name}-{server.name}",
                api_version=KEDA_API,
                kind="ScaledObject",
                metadata={"name": server.name, "namespace": namespace,
                          "labels": {"app.kubernetes.io/name": server.name,
                                     "app.kubernetes.io/part-of": "llm-platform"}},
                spec=scaled_object_spec(server, namespace, args["prometheus_url"], args["front_door_namespace"]),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                    depends_on=[self.release] + ([server.workload] if server.workload else []))),
            )
        self.register_outputs({"kedaNamespace": KEDA_NAMESPACE,
                               "scaledObjects": list(self.scaled_objects)})
