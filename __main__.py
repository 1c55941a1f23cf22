"""llm-platform: a cluster, its accelerator, Istio, Argo CD, model servers and one gateway."""

import pulumi

from components import (
    ApiKeys, Backend, Cluster, Gateway, GitOpsController, GpuDevicePlugin, LlmServer, Mesh, ModelRoute,
)
from components.accelerators import from_config as accelerator_from_config, units_in_use
from components.apps import OPEN_WEBUI_PORT, OPEN_WEBUI_SERVICE_ACCOUNT, ModelEndpoint, all_apps, open_webui_host
from components.config import ConfigError, load
from components.mesh import INGRESS_PRINCIPAL, principal
from components.model_namespace import ModelNamespace
from components.serving import uses_model_cache
from components.ui_admin import UiAdmin

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
# Only the ingress gateway and the UI may call the model servers.
model_callers = [INGRESS_PRINCIPAL] + ([principal(ui_namespace, OPEN_WEBUI_SERVICE_ACCOUNT)] if ui_namespace else [])
mesh = Mesh("mesh", {
    "provider": provider,
    "chart_version": cfg.mesh.chart_version,
    "ingress": cluster.ingress,
    "platform": cluster.istio_platform,
    # The UI chart's pods run as root: baseline there, restricted where the models run.
    "injected_namespaces": {
        cfg.models_namespace: "restricted" if cfg.security.restricted_pods else "baseline",
        **({ui_namespace: "baseline"} if ui_namespace else {}),
    },
    "strict_mtls": cfg.security.mtls,
    "callers": {cfg.models_namespace: model_callers} if cfg.security.mtls else {},
    "metrics_from": {cfg.models_namespace: cfg.security.metrics_from},
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
    "ingress_from": [mesh.ingress_namespace] + ([ui_namespace] if ui_namespace else []),
    "metrics_from": cfg.security.metrics_from,
    "istio_namespace": mesh.system_namespace,
    "https_egress": any(downloads),
    "cluster_cidrs": cluster.internal_cidrs,
    "host_models": not all(downloads),
})

keys = ApiKeys("api-keys", {"client": cfg.api_key, "ui": cfg.ui_api_key}) if cfg.security.api_auth else None

servers = [
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
        "api_keys": {"client": keys.client, "ui": keys.ui} if keys else None,
        "restricted": cfg.security.restricted_pods,
        "supplemental_groups": cfg.security.supplemental_groups,
    })
    for m in cfg.models
]

ui_admin = UiAdmin("ui-admin", {"password": cfg.ui_admin_password}) if cfg.ui.enabled else None
apps = all_apps(
    cfg,
    mesh.namespaces[ui_namespace].metadata.name if ui_namespace else None,
    # The UI calls each server's Service through the mesh (it is an allowed caller).
    [ModelEndpoint(s.alias, pulumi.Output.concat("http://", s.service_host, f":{s.port}/v1")) for s in servers],
    keys.ui if keys else None,
    keys.digest(keys.ui) if keys else None,
    ui_admin.password if ui_admin else None,
)
GitOpsController("gitops", {"provider": provider, "chart_version": cfg.gitops.chart_version, "apps": apps})

ui = Backend(open_webui_host(cfg), OPEN_WEBUI_PORT) if cfg.ui.enabled else None
gateway = Gateway("gateway", {
    "provider": provider,
    "mesh": mesh,
    "models": [ModelRoute(s.alias, Backend(s.service_host, s.port)) for s in servers],
    "ui": ui,
    "host": cfg.gateway.host,
    "tls_secret": cfg.gateway.tls_secret,
    "cert_manager": cfg.gateway.cert_manager,
    "address": mesh.ingress_address,
})

pulumi.export("ingressUrl", gateway.url)
pulumi.export("apiBaseUrl", gateway.api_base_url)
pulumi.export("uiUrl", gateway.ui_url)
pulumi.export("modelAliases", [s.alias for s in servers])
pulumi.export("kubeconfig", cluster.kubeconfig)
if keys:
    pulumi.export("apiKey", keys.client)
if ui_admin:
    pulumi.export("uiAdminEmail", cfg.ui.admin_email)
    pulumi.export("uiAdminPassword", ui_admin.password)
