"""llm-platform: a cluster, its accelerator, Istio, Argo CD, model servers and one gateway."""

import dataclasses

import pulumi

from components.cluster import Cluster, GpuDevicePlugin
from components.cluster.accelerators import from_config as accelerator_from_config, units_in_use
from components.config import RUNTIMES_BY_ACCELERATOR, ConfigError, load, quota_room
from components.core.chart_source import use_archives
from components.core.published import ModelBackend
from components.edge import (
    Backend,
    FrontDoor,
    Gateway,
    InferencePools,
    KeysDatabase,
    ModelRouting,
    UiAdmin,
    front_door as front_door_parts,
)
from components.edge.apps import OPEN_WEBUI_PORT, all_apps, open_webui_host, ui_caller
from components.edge.gateway import PAGE_ROUTES
from components.edge.inference_pool import picker_metrics
from components.edge.model_routing import STACK_KEY_HOLDER, model_routes, plan as plan_routes
from components.platform import ApiKeys, GitOpsController, GpuMetrics, Mesh, Monitoring, PulumiOperator
from components.platform.gpu_metrics import RELEASE as DCGM_RELEASE
from components.platform.mesh import INGRESS_CALLER
from components.platform.monitoring import GRAFANA_ADMIN_USER, NAMESPACE as MONITORING_NAMESPACE, PROMETHEUS_URL, metrics_access
from components.platform.pulumi_operator import NAMESPACE as OPERATOR_NAMESPACE, WORKSPACE_ACCOUNT
from components.serving import LlamaRouter, LlmServer, ModelNamespace, PodAutoscaling, ServingSettings, Team
from components.serving.autoscaling import KEDA
from components.serving.llm_server import SERVER_LABELS
from components.serving.runtimes import (
    CLIENT_KEY,
    FRONT_DOOR_KEY,
    METRICS_KEY,
    METRICS_PATH as SERVER_METRICS_PATH,
    RUNTIMES,
    TEAM_KEY,
    VLLM_RELEASE,
    uses_model_cache,
)

try:
    cfg = load(pulumi.get_stack())
except ConfigError as err:
    # RunError prints just the message: one line, no traceback.
    raise pulumi.RunError(str(err)) from None
use_archives(cfg.charts.archive_dir)
operator = cfg.gitops.pulumi_operator

cluster = Cluster("cluster", {
    "config": cfg.cluster,
    "accelerator": accelerator_from_config(cfg.accelerator, cfg.cluster),
    # Plain HTTP never faces the internet: the clouds' load balancer does once TLS is on.
    "internet_facing": cfg.gateway.internet_facing,
    # The Pulumi Kubernetes Operator's workspace acts as its IAM role on eks.
    "pod_identities": {(OPERATOR_NAMESPACE, WORKSPACE_ACCOUNT): operator.workspace_role_arn}
    if operator.enabled and operator.workspace_role_arn else {},
})
# Every component below runs on the cluster: its resources inherit the cluster's provider.
on_cluster = pulumi.ResourceOptions(providers=[cluster.provider])
# What the cluster tells the rest (its accelerator, ingress, storage, ranges, size).
facts = cluster.facts

GpuDevicePlugin("gpu", {"accelerator": facts.accelerator}, opts=on_cluster)

ui_namespace = cfg.ui.namespace if cfg.ui.enabled else None
front_door_namespace = cfg.front_door.namespace
# Who may call whom, decided here once; the mesh (by identity) and the NetworkPolicies (by
# namespace and pods) both enforce these lists. Only the front door calls the model servers; only
# the ingress gateway and the UI call the front door. The ingress calls the model servers too: it
# streams their tokens to the client itself (ModelRouting).
ui = ui_caller(ui_namespace) if ui_namespace else None
model_callers = [front_door_parts.caller(front_door_namespace), INGRESS_CALLER]
front_door_callers = [INGRESS_CALLER] + ([ui] if ui else [])
# The teams' models, each in its team's namespace (the teams' files, checked with the config).
team_namespaces = {team: t.namespace_of(team) for team, t in cfg.teams.items()}
team_models = {team: [tm.model for tm in cfg.team_models if tm.team == team] for team in cfg.teams}
# Teams whose key has a budget: spent through the front door alone, which counts it.
budgeted = {team for team, t in cfg.teams.items() if t.budget}
all_models = [*cfg.models, *(tm.model for tm in cfg.team_models)]
# Prometheus scrapes each namespace's metrics port and path, and nothing else there.
monitoring_on = cfg.monitoring.enabled


def scraped_servers(models):
    """The scraper's access to the servers of `models`, or None where nothing scrapes them."""
    if not (monitoring_on and models):
        return None
    return metrics_access({RUNTIMES[(m.runtime, cfg.accelerator.kind)].port for m in models}, [SERVER_METRICS_PATH])


server_metrics = scraped_servers(cfg.models)
# A team's namespace is ready for any model the accelerator serves (one runtime each), so a team's
# model added or removed never changes its namespace's rules.
team_runtime = RUNTIMES[(RUNTIMES_BY_ACCELERATOR[cfg.accelerator.kind][0], cfg.accelerator.kind)]
team_metrics = (metrics_access([team_runtime.port], [SERVER_METRICS_PATH]) if monitoring_on else None)
server_pods = "restricted" if cfg.security.restricted_pods else "baseline"
front_door_metrics = (metrics_access([front_door_parts.PORT], [front_door_parts.METRICS_PATH])
                      if monitoring_on and cfg.front_door.metrics else None)
# Models of more than one vLLM replica that the ingress routes straight (where the body-based
# router runs; not those at zero, which the front door wakes): each an inference pool, balanced by
# load by its endpoint picker, which reads the servers' metrics.
pooled = [m for m in cfg.models
          if facts.amd64_nodes and not cfg.llama_router.enabled and m.runtime == "vllm" and m.most_replicas > 1
          and not (m.autoscaling.enabled and m.autoscaling.scale_to_zero)]
pickers = picker_metrics(cfg.models_namespace, [RUNTIMES[(m.runtime, cfg.accelerator.kind)].port for m in pooled]) \
    if pooled else None
mesh = Mesh("mesh", {
    "chart_version": cfg.mesh.chart_version,
    "gateway_api_crds": cfg.mesh.gateway_api_crds,
    "ingress": facts.ingress,
    "platform": facts.istio_platform,
    # The UI chart's pods run as root: baseline there, restricted where the models run.
    "injected_namespaces": {
        cfg.models_namespace: server_pods,
        **{ns: server_pods for ns in team_namespaces.values()},
        **({ui_namespace: "baseline"} if ui_namespace else {}),
        front_door_namespace: "restricted",
    },
    "strict_mtls": cfg.security.mtls,
    "callers": {
        cfg.models_namespace: model_callers,
        **{ns: model_callers for ns in team_namespaces.values()},
        front_door_namespace: front_door_callers,
    } if cfg.security.mtls else {},
    "metrics": {ns: accesses for ns, accesses in (
        (cfg.models_namespace, [a for a in (server_metrics, pickers) if a]),
        *((ns, [team_metrics] if team_metrics else []) for ns in team_namespaces.values()),
        (front_door_namespace, [a for a in (front_door_metrics,) if a])) if accesses},
}, opts=on_cluster)

models_namespace = mesh.namespaces[cfg.models_namespace].metadata.name
downloads = [uses_model_cache(m, facts.accelerator) for m in cfg.models]
# NetworkPolicies are only worth creating where the cluster's CNI enforces them.
network_policies = cfg.security.network_policies and facts.network_policy_enforced
if cfg.security.network_policies and not network_policies:
    pulumi.log.warn("NetworkPolicies skipped: this cluster is not known to enforce them "
                    "(set cluster.networkPolicy: enforced once its CNI does)")
model_namespace = ModelNamespace("models", {
    "namespace": models_namespace,
    "network_policies": network_policies,
    "callers": model_callers,
    "metrics": server_metrics,
    "istio_namespace": mesh.system_namespace,
    "https_egress": any(downloads),
    "cluster_cidrs": facts.internal_cidrs,
    "host_models": not all(downloads),
    "pickers": (pickers, SERVER_LABELS) if pickers else None,
}, opts=on_cluster)

# Each team: its quota, its namespace's rules, its key.
teams = {team: Team(f"team-{team}", {
    "namespace": {
        "namespace": mesh.namespaces[team_namespaces[team]].metadata.name,
        "network_policies": network_policies,
        "callers": model_callers,
        "metrics": team_metrics,
        "istio_namespace": mesh.system_namespace,
        "https_egress": team_runtime.model_store == "cache",
        "cluster_cidrs": facts.internal_cidrs,
        "host_models": team_runtime.model_store == "host",
    },
    "resource": facts.accelerator.resource,
    "accelerators": t.accelerators,
    "memory": t.memory,
    "api_auth": cfg.security.api_auth,
}, opts=on_cluster) for team, t in cfg.teams.items()}

keys = ApiKeys("api-keys", {"client": cfg.api_key, "ui": cfg.ui.enabled}) if cfg.security.api_auth else None

# What the model servers (or the router) accept: the front door's key, the client key the ingress
# passes on, and the scraper's for llama.cpp's /metrics.
server_keys = {FRONT_DOOR_KEY: keys.backend, CLIENT_KEY: keys.client, METRICS_KEY: keys.metrics} if keys else None

# What every server shares, the router included.
serving = ServingSettings(
    accelerator=facts.accelerator,
    namespace=models_namespace,
    host_models_dir=facts.host_models_dir,
    host_models_claim=model_namespace.host_models_claim,
    priority_class=facts.serving_priority_class,
    api_keys=server_keys,
    restricted=cfg.security.restricted_pods,
    supplemental_groups=cfg.security.supplemental_groups,
)
servers = [] if cfg.llama_router.enabled else [
    LlmServer(f"model-{m.name}", {
        "serving": serving,
        "model": m,
        "storage_class": facts.cache_storage_class,
        "cache_throughput_mib_s": facts.cache_throughput_mib_s,
        "units_in_use": units_in_use(facts.accelerator, all_models),
        "hf_token": pulumi.Output.secret(cfg.hf_token) if cfg.hf_token else None,
    }, opts=on_cluster)
    for m in cfg.models
]
# The teams' servers: in their namespace, within its quota, taking the team's key too.
team_servers = []
for tm in cfg.team_models:
    team = teams[tm.team]
    team_servers.append(LlmServer(f"model-{tm.model.name}", {
        "serving": dataclasses.replace(
            serving,
            namespace=mesh.namespaces[tm.namespace].metadata.name,
            host_models_claim=team.host_models_claim,
            # The team's own keys alone: never the stack's, which open every other server (the team
            # controls what runs in its namespace, and so what its servers' keys reach).
            # A budgeted team's key is spent through the front door alone, which counts it: its
            # servers do not take it.
            api_keys={FRONT_DOOR_KEY: team.backend_key, METRICS_KEY: team.metrics_key,
                      **({} if tm.team in budgeted else {TEAM_KEY: team.key})}
            if team.key and team.backend_key and team.metrics_key else None,
        ),
        "model": tm.model,
        "storage_class": facts.cache_storage_class,
        "cache_throughput_mib_s": facts.cache_throughput_mib_s,
        "units_in_use": units_in_use(facts.accelerator, all_models),
        "quota_room": quota_room(cfg, tm.team, tm.model),
        "ready": team.ready,
        # With an open API no key is checked, so none marks a request: every key reaches it.
        "key_holder": f"team-{tm.team}" if cfg.security.api_auth else None,
        "hf_token": pulumi.Output.secret(cfg.hf_token) if cfg.hf_token else None,
    }, opts=on_cluster))

# One KEDA sizes every server by its queue, the teams' in their namespaces.
scaled = [s.scaled_server for s in [*servers, *team_servers] if s.scaled_server]
if scaled:
    PodAutoscaling("autoscaling", {
        "prometheus_url": PROMETHEUS_URL,
        "servers": scaled,
        "namespace": cfg.models_namespace,
        "namespaces": {tm.model.name: tm.namespace for tm in cfg.team_models},
        "front_door_namespace": front_door_namespace,
    }, opts=on_cluster)

backends = [s.backend for s in servers]
if cfg.llama_router.enabled:
    # One llama-server for every model: it routes by the request's "model" (the alias).
    router = LlamaRouter("llama-router", {
        "serving": serving,
        "config": cfg.llama_router,
        "models": cfg.models,
    }, opts=on_cluster)
    backends = router.backends
# The teams' servers are reached as the platform's are, by name.
backends = [*backends, *(s.backend for s in team_servers)]

front_door_ns = mesh.namespaces[front_door_namespace].metadata.name
virtual_keys = cfg.front_door.virtual_keys
database = KeysDatabase("keys-database", {
    "chart_version": virtual_keys.chart_version,
    "operator_namespace": virtual_keys.operator_namespace,
    "namespace": virtual_keys.namespace,
    "instances": virtual_keys.instance_count(facts.replicated),
    "storage_size": virtual_keys.storage_size,
    "storage_class": facts.storage_class,
    "client_namespace": front_door_ns,
    "network_policies": network_policies,
    "cluster_cidrs": facts.internal_cidrs,
}, opts=on_cluster) if virtual_keys.enabled else None

front_door = FrontDoor("front-door", {
    "namespace": front_door_ns,
    "config": cfg.front_door,
    "default_replicas": facts.ingress.min_replicas,
    # Each server serves its model under the alias (llama.cpp --alias or preset, vLLM
    # --served-model-name).
    "models": backends,
    "master_key": keys.client if keys else None,
    # Open WebUI's key, let in by the front door's custom auth for inference alone.
    "ui_key": keys.ui if keys else None,
    # ...taken only from the UI's pods, as their sidecar's certificate says.
    "ui_peer": ui.spiffe_id if ui else None,
    # Each team's key opens its own models, wherever the front door serves them.
    "team_keys": {team: (t.key, [m.name for m in team_models[team]]) for team, t in teams.items() if t.key is not None},
    "team_backend_keys": {team: t.backend_key for team, t in teams.items() if t.backend_key is not None},
    # ...within its budget, where it has one: the front door's virtual key then.
    "team_budgets": {team: t.budget for team, t in cfg.teams.items() if t.budget},
    "prices": {**{m.name: m.price for m in cfg.models if m.price},
               **{tm.model.name: price for tm in cfg.team_models if (price := cfg.teams[tm.team].price)}},
    "backend_key": keys.backend if keys else None,
    "provider_keys": {name: pulumi.Output.secret(key) for name, key in cfg.provider_keys.items()},
    "mesh_ready": [mesh.base, mesh.istiod],
    "network_policies": network_policies,
    "callers": front_door_callers,
    "metrics": front_door_metrics,
    "models_namespaces": [cfg.models_namespace, *team_namespaces.values()],
    "istio_namespace": mesh.system_namespace,
    "cluster_cidrs": facts.internal_cidrs,
    "database": database.connection if database else None,
}, opts=on_cluster)

# GPU metrics where NVIDIA's runtime is the nodes' default (the device plugin chart's pools).
gpu_metrics_on = (monitoring_on and facts.accelerator.kind == "nvidia"
                  and facts.accelerator.device_plugin == "nvidia-chart")
monitoring = Monitoring("monitoring", {
    "config": cfg.monitoring,
    "light": cfg.monitoring.light if cfg.monitoring.light is not None else facts.small,
    "vllm_release": VLLM_RELEASE,
    "targets": [t for t in [*(s.scrape_target for s in [*servers, *team_servers]),
                            *([router.scrape_target] if cfg.llama_router.enabled else []), front_door.scrape_target] if t],
    "network_policies": network_policies,
    "strict_mtls": cfg.security.mtls,
    "mesh_ready": [mesh.base, mesh.istiod],
    "dcgm_release": DCGM_RELEASE if gpu_metrics_on else None,
    # KEDA reads the servers' load from Prometheus; users reach Grafana through the ingress.
    "prometheus_callers": [KEDA],
    "grafana_callers": [INGRESS_CALLER],
}, opts=on_cluster) if monitoring_on else None
if monitoring and gpu_metrics_on:
    GpuMetrics("gpu-metrics", {
        "accelerator": facts.accelerator,
        "network_policies": network_policies,
        "crds_ready": [monitoring.release],
    }, opts=on_cluster)

ui_admin = UiAdmin("ui-admin", {"password": cfg.ui_admin_password}) if cfg.ui.enabled else None
apps = all_apps(
    cfg,
    ui_namespace=mesh.namespaces[ui_namespace].metadata.name if ui_namespace else None,
    # One connection: the front door, inside the mesh; it lists every model, later ones included.
    models=[ModelBackend("front-door", front_door.base_url)],
    # Its own key, which the front door takes for listing models and inference alone.
    ui_api_key=keys.ui if keys else None,
    ui_api_key_digest=keys.digest(keys.ui) if keys and keys.ui is not None else None,
    ui_admin_password=ui_admin.password if ui_admin else None,
    ui_secret_key=ui_admin.secret_key if ui_admin else None,
)
GitOpsController("gitops", {"chart_version": cfg.gitops.chart_version, "apps": apps}, opts=on_cluster)
if operator.enabled:
    # The cluster pulls: the operator runs this program on this stack from the repository's branch.
    PulumiOperator("pulumi-operator", {
        "config": operator,
        # Pulumi Cloud names a stack by organization and project; a self-managed backend finds the
        # project's stack by its name alone, in either of its layouts.
        "stack": (f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
                  if (operator.backend or "").startswith("https://") else pulumi.get_stack()),
    }, opts=on_cluster)

# The models the ingress routes to straight, by the body's model: all but those at zero, which only
# the front door's request count wakes.
reachable = [*(router.backends if cfg.llama_router.enabled else []), *(
    s.backend for s in ([] if cfg.llama_router.enabled else servers) + team_servers
    if not (s.scaled_server and s.scaled_server.autoscaling and s.scaled_server.autoscaling.scale_to_zero))]
routing_plan = plan_routes(reachable, amd64_nodes=facts.amd64_nodes,
                           # Teams run servers of their own: the router is no longer the one. Decided by
                           # the teams the stack serves, so that a team's model added or removed moves
                           # no other route.
                           one_server=cfg.llama_router.enabled and not cfg.teams,
                           others=bool(cfg.front_door.providers) or len(reachable) < len(backends))
pools = InferencePools("inference-pools", {
    "namespace": models_namespace,
    "namespace_name": cfg.models_namespace,
    "pools": {s.alias: (s.pod_labels, s.port) for s in servers if s.alias in {m.name for m in pooled}},
    # The pools need their CRDs and istiod; the ingress asks a picker once it runs beside servers.
    "ready": [mesh.gateway_api, mesh.istiod, model_namespace],
    "strict_mtls": cfg.security.mtls,
}, opts=on_cluster) if pooled else None
model_routing = ModelRouting("model-routing", {
    "namespace": front_door_ns,
    "namespace_name": front_door_namespace,
    # Every straight request asks it: two, on two nodes, wherever the cluster spans zones.
    "replicas": max(facts.ingress.min_replicas, 2 if facts.replicated else 1),
    "ingress_namespace": mesh.ingress_namespace,
    "ingress_selector": mesh.ingress_selector,
    # The client key, and each team's (which only the team's servers accept). A budgeted team's
    # key is not known here: the front door, which counts its spend, checks it.
    "keys": {STACK_KEY_HOLDER: keys.client, **{f"team-{team}": t.key for team, t in teams.items()
                                                 if t.key is not None and team not in budgeted}}
    if keys else None,
    "front_door": True,
    "plan": routing_plan,
    "page_routes": PAGE_ROUTES,
    "mesh_ready": [mesh.base, mesh.istiod],
    "servers": [*([router] if cfg.llama_router.enabled else servers), *team_servers],
}, opts=on_cluster)

gateway = Gateway("gateway", {
    "mesh": mesh,
    "api": Backend(front_door.service_host, front_door.port),
    "ui": Backend(open_webui_host(cfg), OPEN_WEBUI_PORT) if cfg.ui.enabled else None,
    "grafana": Backend(monitoring.grafana_host, monitoring.grafana_port) if monitoring else None,
    "host": cfg.gateway.host,
    "tls_secret": cfg.gateway.tls_secret,
    "cert_manager": cfg.gateway.cert_manager,
    "address": mesh.ingress_address,
    "backend_namespaces": {
        front_door_namespace: front_door_ns,
        **({cfg.models_namespace: models_namespace} if routing_plan.straight else {}),
        # The teams' namespaces wherever the body-based router could route to their models, with
        # or without models yet: a team's first model then adds its rule alone.
        **({ns: mesh.namespaces[ns].metadata.name for ns in team_namespaces.values()} if routing_plan.body_router else {}),
        **({ui_namespace: mesh.namespaces[ui_namespace].metadata.name} if ui_namespace else {}),
        **({MONITORING_NAMESPACE: monitoring.namespace} if monitoring else {}),
    },
    # ...and there, the inference pools too.
    "pool_namespaces": [cfg.models_namespace] if pools else [],
    "model_routes": model_routes(routing_plan, (front_door.service_host, front_door.port),
                                 front_door_parts.INTERNAL_RESPONSE_HEADERS, pools.backend_refs if pools else {}),
    # Routes to the servers only once the ingress drops a client's own route headers and sets them
    # itself, and the mesh and the network let it call the servers.
    "routes_ready": [model_routing, mesh, model_namespace, *(pools.ready if pools else [])],
}, opts=on_cluster)

pulumi.export("ingressUrl", gateway.url)
pulumi.export("apiBaseUrl", gateway.api_base_url)
pulumi.export("uiUrl", gateway.ui_url)
# Every name a client may send as "model" to apiBaseUrl.
pulumi.export("modelAliases", front_door.model_names)
pulumi.export("kubeconfig", cluster.kubeconfig)
if monitoring:
    pulumi.export("grafanaUrl", gateway.grafana_url)
    pulumi.export("grafanaAdminUser", GRAFANA_ADMIN_USER)
    pulumi.export("grafanaAdminPassword", monitoring.admin_password)
    pulumi.export("prometheusUrl", monitoring.prometheus_url)
if keys:
    pulumi.export("apiKey", keys.client)
    if keys.ui is not None:
        # Open WebUI's own key: the front door's inference routes only.
        pulumi.export("uiApiKey", keys.ui)
if keys and teams:
    # Each team's own key, by team: its servers accept it, no other server does.
    pulumi.export("teamApiKeys", pulumi.Output.secret(pulumi.Output.all(
        **{team: t.key for team, t in teams.items() if t.key is not None})))
# Whether the front door issues virtual keys (made with apiKey, the master key).
pulumi.export("virtualKeys", virtual_keys.enabled)
if ui_admin:
    pulumi.export("uiAdminEmail", cfg.ui.admin_email)
    pulumi.export("uiAdminPassword", ui_admin.password)
