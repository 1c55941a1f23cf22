"""llm-platform: a cluster, its accelerator, Istio, Argo CD, model servers and one gateway."""

import pulumi

from components import (
    ApiKeys, Backend, Cluster, Gateway, GitOpsController, GpuDevicePlugin, LlmServer, Mesh, PodAutoscaling,
)
from components.accelerators import from_config as accelerator_from_config, units_in_use
from components.autoscaling import ScaledServer
from components.apps import OPEN_WEBUI_PORT, OPEN_WEBUI_SERVICE_ACCOUNT, ModelEndpoint, all_apps, open_webui_host
from components.config import ConfigError, load
from components.llama_router import LlamaRouter
from components.front_door import SERVICE_ACCOUNT as FRONT_DOOR_SERVICE_ACCOUNT, FrontDoor, ModelBackend
from components.mesh import INGRESS_PRINCIPAL, principal
from components.model_namespace import ModelNamespace
from components.serving import uses_model_cache
from components.ui_admin import UiAdmin

# Prometheus' in-cluster address: KEDA reads the model servers' queues there.
PROMETHEUS_URL = "http://kps-prometheus.monitoring.svc:9090"
PROMETHEUS_NAMESPACE = "monitoring"

try:
    cfg = load(pulumi.get_stack())
except ConfigError as err:
    # RunError prints just the message: one line, no traceback.
    raise pulumi.RunError(str(err)) from None

cluster = Cluster("cluster", {
    "config": cfg.cluster,
    "accelerator": accelerator_from_config(cfg.accelerator, cfg.cluster),
})
provider = cluster.provider

GpuDevicePlugin("gpu", {"accelerator": cluster.accelerator, "provider": provider})

ui_namespace = cfg.ui.namespace if cfg.ui.enabled else None
front_door_namespace = cfg.front_door.namespace
# Only the front door may call the model servers; only the ingress gateway and the UI may call
# the front door.
front_door_callers = [INGRESS_PRINCIPAL] + (
    [principal(ui_namespace, OPEN_WEBUI_SERVICE_ACCOUNT)] if ui_namespace else [])
mesh = Mesh("mesh", {
    "provider": provider,
    "chart_version": cfg.mesh.chart_version,
    "ingress": cluster.ingress,
    "platform": cluster.istio_platform,
    # The UI chart's pods run as root: baseline there, restricted where the models run.
    "injected_namespaces": {
        cfg.models_namespace: "restricted" if cfg.security.restricted_pods else "baseline",
        **({ui_namespace: "baseline"} if ui_namespace else {}),
        front_door_namespace: "restricted",
    },
    "strict_mtls": cfg.security.mtls,
    "callers": {
        cfg.models_namespace: [principal(front_door_namespace, FRONT_DOOR_SERVICE_ACCOUNT)],
        front_door_namespace: front_door_callers,
    } if cfg.security.mtls else {},
    "metrics_from": {ns: cfg.security.metrics_from for ns in (cfg.models_namespace, front_door_namespace)},
})

models_namespace = mesh.namespaces[cfg.models_namespace].metadata.name
downloads = [uses_model_cache(m, cluster.accelerator) for m in cfg.models]
# NetworkPolicies are only worth creating where the cluster's CNI enforces them.
network_policies = cfg.security.network_policies and cluster.network_policy_enforced
if cfg.security.network_policies and not network_policies:
    pulumi.log.warn("NetworkPolicies skipped: this cluster is not known to enforce them "
                    "(set cluster.networkPolicy: enforced once its CNI does)")
model_namespace = ModelNamespace("models", {
    "provider": provider,
    "namespace": models_namespace,
    "network_policies": network_policies,
    "ingress_from": [front_door_namespace],
    "metrics_from": cfg.security.metrics_from,
    "istio_namespace": mesh.system_namespace,
    "https_egress": any(downloads),
    "cluster_cidrs": cluster.internal_cidrs,
    "host_models": not all(downloads),
})

keys = ApiKeys("api-keys", {"client": cfg.api_key}) if cfg.security.api_auth else None

servers = [] if cfg.llama_router.enabled else [
    LlmServer(f"model-{m.name}", {
        "model": m,
        "accelerator": cluster.accelerator,
        "namespace": models_namespace,
        "provider": provider,
        "host_models_dir": cluster.host_models_dir,
        "host_models_claim": model_namespace.host_models_claim,
        "storage_class": cluster.cache_storage_class,
        "cache_throughput_mib_s": cluster.cache_throughput_mib_s,
        "units_in_use": units_in_use(cluster.accelerator, cfg.models),
        "hf_token": pulumi.Output.secret(cfg.hf_token) if cfg.hf_token else None,
        "priority_class": cluster.serving_priority_class,
        # The front door is the servers' one caller: they accept its key alone.
        "api_keys": {"front-door": keys.backend} if keys else None,
        "restricted": cfg.security.restricted_pods,
        "supplemental_groups": cfg.security.supplemental_groups,
    })
    for m in cfg.models
]

scaled = [ScaledServer(m.name, cfg.models_namespace, s.workload_kind, m.runtime, m.autoscaling, s.workload)
          for m, s in zip(cfg.models, servers) if m.autoscaling.enabled]
if scaled:
    if PROMETHEUS_NAMESPACE not in cfg.security.metrics_from:
        pulumi.log.warn(f"autoscaling reads the servers' queues from Prometheus: add {PROMETHEUS_NAMESPACE!r} "
                        "to security.metricsFrom so it may scrape them")
    PodAutoscaling("autoscaling", {
        "provider": provider,
        "prometheus_url": PROMETHEUS_URL,
        "servers": scaled,
        "front_door_namespace": front_door_namespace,
    })

backends = [ModelBackend(s.alias, pulumi.Output.concat("http://", s.service_host, f":{s.port}/v1")) for s in servers]
if cfg.llama_router.enabled:
    # One llama-server for every model: it routes by the request's "model" (the alias).
    router = LlamaRouter("llama-router", {
        "config": cfg.llama_router,
        "models": cfg.models,
        "accelerator": cluster.accelerator,
        "namespace": models_namespace,
        "provider": provider,
        "host_models_dir": cluster.host_models_dir,
        "host_models_claim": model_namespace.host_models_claim,
        "priority_class": cluster.serving_priority_class,
        "api_keys": {"front-door": keys.backend} if keys else None,
        "restricted": cfg.security.restricted_pods,
        "supplemental_groups": cfg.security.supplemental_groups,
    })
    router_url = pulumi.Output.concat("http://", router.service_host, f":{router.port}/v1")
    backends = [ModelBackend(m.name, router_url) for m in cfg.models]

front_door = FrontDoor("front-door", {
    "provider": provider,
    "namespace": mesh.namespaces[front_door_namespace].metadata.name,
    "config": cfg.front_door,
    "default_replicas": cluster.ingress.min_replicas,
    # Each server serves its model under the alias (llama.cpp --alias or preset, vLLM
    # --served-model-name).
    "models": backends,
    "master_key": keys.client if keys else None,
    "backend_key": keys.backend if keys else None,
    "provider_keys": {name: pulumi.Output.secret(key) for name, key in cfg.provider_keys.items()},
    "mesh_ready": [mesh.base, mesh.istiod],
    "network_policies": network_policies,
    "callers_namespaces": [mesh.ingress_namespace] + ([ui_namespace] if ui_namespace else []),
    "metrics_from": cfg.security.metrics_from,
    "models_namespace": cfg.models_namespace,
    "istio_namespace": mesh.system_namespace,
    "cluster_cidrs": cluster.internal_cidrs,
})

ui_admin = UiAdmin("ui-admin", {"password": cfg.ui_admin_password}) if cfg.ui.enabled else None
apps = all_apps(
    cfg,
    mesh.namespaces[ui_namespace].metadata.name if ui_namespace else None,
    # One connection: the front door, inside the mesh; it lists every model, later ones included.
    [ModelEndpoint("front-door", front_door.base_url)],
    # The proxy takes only its master key until virtual keys (a database) exist.
    keys.client if keys else None,
    keys.digest(keys.client) if keys else None,
    ui_admin.password if ui_admin else None,
)
GitOpsController("gitops", {"provider": provider, "chart_version": cfg.gitops.chart_version, "apps": apps})

ui = Backend(open_webui_host(cfg), OPEN_WEBUI_PORT) if cfg.ui.enabled else None
gateway = Gateway("gateway", {
    "provider": provider,
    "mesh": mesh,
    "api": Backend(front_door.service_host, front_door.port),
    "ui": ui,
    "host": cfg.gateway.host,
    "tls_secret": cfg.gateway.tls_secret,
    "cert_manager": cfg.gateway.cert_manager,
    "address": mesh.ingress_address,
})

pulumi.export("ingressUrl", gateway.url)
pulumi.export("apiBaseUrl", gateway.api_base_url)
pulumi.export("uiUrl", gateway.ui_url)
# Every name a client may send as "model" to apiBaseUrl.
pulumi.export("modelAliases", front_door.model_names)
pulumi.export("kubeconfig", cluster.kubeconfig)
if keys:
    pulumi.export("apiKey", keys.client)
if ui_admin:
    pulumi.export("uiAdminEmail", cfg.ui.admin_email)
    pulumi.export("uiAdminPassword", ui_admin.password)
