"""FrontDoor: one OpenAI-compatible base URL for every model of the stack. LiteLLM's proxy, in
its own mesh namespace, routes each request by its `model` to that model's Service inside the
mesh (or to a hosted provider from config), holds the keys and counts the tokens."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from components.core.names import FRONT_DOOR_NAME
from components.core.providers import PROVIDER_HOSTS, provider_host  # noqa: F401  (the hosts it may reach)
from components.core.published import ModelBackend, ScrapeTarget
from components.core.replicas import one_at_a_time, spread_over_nodes
from components.core.trust import Caller, MetricsAccess, mesh_namespace_policies, namespace_peer
from components.edge.database import CA_CERT, CLIENT_CA_DIR
from components.edge.files import front_door_auth, team_budgets
from components.platform.api_keys import keyed_digest

if TYPE_CHECKING:
    from components.config import FrontDoorConfig, Price, TeamBudget
    from components.edge.database import DatabaseConnection

# LiteLLM's proxy, pinned to a release whose PyPI wheel (litellm[proxy]) the tests run; since
# 1.84 the images are tagged with the plain version (vX.Y.Z). The non_root variant runs as
# `nobody` and owns what it writes, so the pod passes the restricted Pod Security profile.
# Keep in step with requirements-litellm.txt.
LITELLM_VERSION = "1.108.7"
LITELLM_IMAGE = f"ghcr.io/berriai/litellm-non_root:v{LITELLM_VERSION}"
# The image's user (`nobody`); named by number so the kubelet can check it is not root.
RUN_AS = 65534
PORT = 4000
NAME = FRONT_DOOR_NAME
SERVICE_ACCOUNT = NAME
CONFIG_DIR = "/etc/litellm"
CONFIG_FILE = "config.yaml"
# The custom auth that lets the UI's key in (inference only); LiteLLM loads `<module>.<function>`
# from the config file's directory.
AUTH_MODULE = "front_door_auth"
AUTH_FILE = f"{AUTH_MODULE}.py"
AUTH_FUNCTION = f"{AUTH_MODULE}.user_api_key_auth"
# Open routes of the proxy, answered without a key.
READINESS_PATH = "/health/readiness"
LIVENESS_PATH = "/health/liveliness"
# LiteLLM answers /metrics with a redirect to this.
METRICS_PATH = "/metrics/"
# Everything it serves metrics under (its auth middleware's own test: /metrics or below it).
METRICS_PATHS = ["/metrics", "/metrics/*"]
# Env vars the config refers to with `os.environ/<NAME>`: keys never enter the ConfigMap.
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
BACKEND_KEY_ENV = "BACKEND_API_KEY"
UI_KEY_ENV = front_door_auth.UI_KEY_ENV
UI_PEER_ENV = front_door_auth.UI_PEER_ENV
TEAM_KEYS_ENV = front_door_auth.TEAM_KEYS_ENV
# The budgeted teams' keys, which the script beside the proxy registers as virtual keys.
TEAM_BUDGETS_FILE = "team_budgets.py"
TEAM_BUDGETS_ENV = team_budgets.TEAM_BUDGETS_ENV
TEAM_BUDGETS_CONTAINER = "team-budgets"
# On the pod's scratch volume, which both containers mount at /tmp.
TEAM_BUDGETS_READY_FILE = "/tmp/team-budgets-ready"
KEYS_SECRET = "litellm-keys"
# With a database, LiteLLM applies its migrations at start, copying its migration files into
# this folder first (litellm_proxy_extras: LITELLM_MIGRATION_DIR), since the root filesystem is
# read-only; /tmp is the scratch volume.
MIGRATION_DIR_ENV = "LITELLM_MIGRATION_DIR"
MIGRATION_DIR = "/tmp/litellm-migrations"
# With a database, what stored provider credentials are encrypted with (LiteLLM falls back to
# the master key, so rotating that would make them unreadable); generated once, kept in state.
SALT_KEY_ENV = "LITELLM_SALT_KEY"
# litellm_proxy_extras at start: a replica waits up to the lock timeout while another migrates,
# then gives one `prisma migrate deploy` up to its timeout (a fresh database replays every
# migration). Set explicitly (their defaults) so the startup probe can cover both; a retry beyond
# that restarts the pod, which resumes what is left.
MIGRATION_LOCK_TIMEOUT_ENV = "LITELLM_MIGRATION_LOCK_TIMEOUT"
MIGRATION_LOCK_TIMEOUT_SECONDS = 600
MIGRATION_TIMEOUT_ENV = "LITELLM_PRISMA_MIGRATE_DEPLOY_TIMEOUT"
MIGRATION_TIMEOUT_SECONDS = 600
STARTUP_PERIOD_SECONDS = 5
# Sent to model servers when the stack runs without API keys (the OpenAI client wants one).
NO_KEY = "no-key"
# On SIGTERM LiteLLM's uvicorn stops listening, then waits this many seconds for the requests in
# flight before it cancels them (its default is 30 s, whatever the pod's grace period says;
# litellm/proxy/shutdown/graceful_shutdown_manager.py). Set to the front door's timeout.
GRACEFUL_SHUTDOWN_ENV = "GRACEFUL_SHUTDOWN_TIMEOUT"
# The preStop sleep: the pod leaves the Service's endpoints before the proxy stops listening.
PRE_STOP_SECONDS = 10
# After that wait: LiteLLM's own teardown (its drain returns at once when nothing is in flight
# any more), then the process exits. The grace period covers all three, or the kubelet kills.
SHUTDOWN_MARGIN_SECONDS = 20


def caller(namespace: str) -> Caller:
    """The front door as the model servers see it: its namespace and service account."""
    return Caller(namespace, SERVICE_ACCOUNT)


def provider_key_env(name: str) -> str:
    return "PROVIDER_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


class FrontDoorArgs(TypedDict):
    # The mesh's injected namespace for the front door.
    namespace: pulumi.Input[str]
    config: "FrontDoorConfig"
    # Used where the config sets none: the only way to every model is never a single pod where
    # the cluster can hold two.
    default_replicas: int
    models: Sequence[ModelBackend]
    # The stack's client key (starts with "sk-"), the proxy's master key; None: open API.
    master_key: Optional[pulumi.Output[str]]
    # The UI's key: inference routes only; None: no such key.
    ui_key: Optional[pulumi.Output[str]]
    # Each team's key (a Pulumi secret) and the models it opens, by team; absent: no teams.
    team_keys: NotRequired[Mapping[str, tuple[pulumi.Output[str], Sequence[str]]]]
    # The key each team's servers take from the front door (a Pulumi secret), by team.
    team_backend_keys: NotRequired[Mapping[str, pulumi.Output[str]]]
    # The teams whose key has a budget: their keys are the proxy's virtual keys (needs `database`).
    team_budgets: NotRequired[Mapping[str, "TeamBudget"]]
    # What each model's tokens cost, by alias; absent: no spend is counted for it.
    prices: NotRequired[Mapping[str, "Price"]]
    # The UI's mesh identity (SPIFFE id), the one caller the UI's key is taken from; None or
    # absent: no UI, the key is taken from no one.
    ui_peer: NotRequired[Optional[str]]
    # The key the model servers accept; None: they take none.
    backend_key: Optional[pulumi.Output[str]]
    # Hosted providers' keys by provider entry name (Pulumi secrets).
    provider_keys: Mapping[str, pulumi.Output[str]]
    # What Istio objects wait for (the CRDs and istiod's webhook).
    mesh_ready: Sequence[pulumi.Resource]
    # NetworkPolicies (where the cluster enforces them): who may call the front door (the same
    # callers the mesh admits), and where its model servers live.
    network_policies: bool
    callers: Sequence[Caller]
    # The scraper of the proxy's /metrics/ (None: nothing scrapes it).
    metrics: Optional[MetricsAccess]
    # The namespaces of the model servers it calls: the platform's and the teams'.
    models_namespaces: Sequence[str]
    istio_namespace: str
    cluster_cidrs: Sequence[pulumi.Input[str]]
    # The virtual keys' database (frontDoor.virtualKeys); None or absent: master key only.
    database: NotRequired[Optional["DatabaseConnection"]]


# Response headers that tell a caller what lies behind the front door; the gateway strips them
# from every answer (the UI passes a stream's headers on to its own clients too). LiteLLM has no
# setting to leave them out: it sends its release and the model server's URL, and copies every
# header of the server's answer as `llm_provider-<name>` (the server's software; beside a sidecar
# the mesh's; for a hosted provider the account behind the key, OpenAI's `openai-organization`
# and `openai-project`). Names only: other `llm_provider-*` headers (content type, length) pass.
INTERNAL_RESPONSE_HEADERS = (
    "x-litellm-model-api-base", "x-litellm-version", "llm_provider-server",
    "llm_provider-x-envoy-upstream-service-time", "llm_provider-openai-organization",
    "llm_provider-openai-project",
)

# The Prometheus callback's series, each with only the labels the front door's dashboard
# (dashboards/front-door.json) and the autoscaler's wake-up query (autoscaling.py) read. By
# default LiteLLM labels request series with the caller's address, User-Agent, end user and a
# hash of the key sent (refused requests counted too), so anyone who can reach the proxy adds
# series, kept in memory for good, with every new value. Listed metrics alone are kept; LiteLLM
# bounds `requested_model` itself (a name it does not route counts as "other"). The latency
# histogram is read by `le` alone, but an empty label list would keep them all. A name LiteLLM
# does not know turns the whole callback off (tests/parts/test_front_door.py reads every one
# served).
METRICS_LABELS: dict[str, list[str]] = {
    # The wake-up query counts only requests past the door by their status (a bounded set).
    "litellm_proxy_total_requests_metric": ["requested_model", "status_code"],
    "litellm_proxy_failed_requests_metric": ["requested_model"],
    "litellm_request_total_latency_metric": ["requested_model"],
    "litellm_total_tokens_metric": ["requested_model"],
}


def termination_grace_seconds(cfg: "FrontDoorConfig") -> int:
    """The pod's grace period: the preStop sleep, then LiteLLM's wait for the requests in flight
    (the front door's timeout), then its teardown."""
    return PRE_STOP_SECONDS + cfg.timeout_seconds + SHUTDOWN_MARGIN_SECONDS


def litellm_config(models: Sequence[tuple[str, str]], cfg: "FrontDoorConfig", auth: bool,
                   custom_auth: bool = False, backend_keys: Optional[Mapping[str, str]] = None,
                   prices: Optional[Mapping[str, "Price"]] = None) -> dict:
    """LiteLLM's proxy config for (alias, base URL) pairs and the configured providers;
    `custom_auth`: the UI's inference-only key and the teams' keys are let in by the custom auth."""
    timeouts = {"timeout": cfg.timeout_seconds, "stream_timeout": cfg.timeout_seconds}
    backend_keys = backend_keys or {}
    prices = prices or {}
    model_list = [
        {"model_name": alias, "litellm_params": {
            # Every server speaks OpenAI's API and serves the model under its alias.
            "model": f"openai/{alias}",
            "api_base": base_url,
            # A team's servers take a key of their team's, never the one the stack's servers take.
            "api_key": f"os.environ/{backend_keys.get(alias, BACKEND_KEY_ENV)}" if auth else NO_KEY,
            **timeouts,
            # US dollars per token: what each request spends, against the key's budget.
            **({"input_cost_per_token": prices[alias].input / 1e6,
                "output_cost_per_token": prices[alias].output / 1e6} if alias in prices else {}),
        }}
        for alias, base_url in models
    ]
    for p in cfg.providers:
        params = {"model": p.model, "api_key": f"os.environ/{provider_key_env(p.name)}", **timeouts}
        if p.api_base:
            params["api_base"] = p.api_base
        model_list.append({"model_name": p.name, "litellm_params": params})
    settings: dict = {
        # A request that already streamed must never be sent again.
        "num_retries": 0,
        # With the default aiohttp transport, some requests to llama-server under concurrent
        # streams fail with "Cannot write to closing transport" (a reused connection); with
        # httpx's none do (tests/parts/test_front_door.py).
        "disable_aiohttp_transport": True,
        "request_timeout": cfg.timeout_seconds,
    }
    if cfg.metrics:
        settings["callbacks"] = ["prometheus"]
        # A scraper must not need the master key (it opens everything); the mesh lets only
        # Prometheus's mesh identity GET it, and the ingress never routes it.
        settings["require_auth_for_metrics_endpoint"] = False
        settings["prometheus_metrics_config"] = [
            {"group": metric, "metrics": [metric], "include_labels": labels}
            for metric, labels in METRICS_LABELS.items()]
    # The proxy refuses to start without a master key unless told the open API is meant
    # (security.apiAuth: false).
    general: dict = ({"master_key": f"os.environ/{MASTER_KEY_ENV}"} if auth
                     else {"dangerously_permit_weak_or_unset_master_key": True})
    if auth and custom_auth:
        general.update({
            "custom_auth": AUTH_FUNCTION,
            # "auto": a key the function does not know goes on to LiteLLM's own auth (master key).
            "custom_auth_settings": {"mode": "auto"},
            # Once custom_auth is set, LiteLLM skips its common checks (model access, budgets)
            # for every key, the master key's included, unless told to run them.
            "custom_auth_run_common_checks": True,
        })
    return {
        "model_list": model_list,
        "litellm_settings": settings,
        "router_settings": {"num_retries": 0, "timeout": cfg.timeout_seconds},
        "general_settings": general,
    }


def team_backend_key_env(team: str) -> str:
    """The env var of the key a team's servers take from the front door."""
    return f"TEAM_{team.upper().replace('-', '_')}_BACKEND_KEY"


def auth_module_source() -> str:
    """The custom auth module's text, as it ships in the ConfigMap."""
    return Path(front_door_auth.__file__).read_text()


class FrontDoor(pulumi.ComponentResource):
    # In-cluster host of the front door's Service, and its port.
    service_host: pulumi.Output[str]
    port: int = PORT
    base_url: pulumi.Output[str]
    model_names: list[str]

    def __init__(self, name: str, args: FrontDoorArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:FrontDoor", name, None, opts)
        cfg = args["config"]
        replicas = cfg.replicas or args["default_replicas"]
        namespace = pulumi.Output.from_input(args["namespace"])
        master_key = args["master_key"]
        auth = master_key is not None
        # Open WebUI's key counts only beside the master key.
        ui_secret = args["ui_key"] if auth else None
        ui_key = ui_secret is not None
        team_keys = dict(args.get("team_keys") or {}) if auth else {}
        team_backend = dict(args.get("team_backend_keys") or {}) if auth else {}
        database = args.get("database")
        # A budgeted team's key is a virtual key too: the custom auth holds it to the team's routes
        # and models, then LiteLLM's own auth to its budget.
        budgets = {t: b for t, b in (args.get("team_budgets") or {}).items() if t in team_keys}
        if budgets and database is None:
            raise ValueError("a team's budget needs the front door's database (frontDoor.virtualKeys)")
        # Wherever there is a database the registering process runs, budgets or not, so that a
        # key it registered stops working once no team holds it.
        registers = auth and database is not None
        # The env each team model's backend key is read from, by alias.
        backend_env = {alias: team_backend_key_env(team) for team, (_, aliases) in team_keys.items()
                       if team in team_backend for alias in aliases}
        # With a database, virtual keys too pass the custom auth first: it refuses what LiteLLM's
        # own model check would miss (a `model` in the query string).
        custom_auth = ui_key or bool(team_keys) or registers
        child = pulumi.ResourceOptions(parent=self)
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "front-door",
                  "app.kubernetes.io/part-of": "llm-platform"}
        meta = {"namespace": namespace, "labels": labels}
        self.model_names = [m.alias for m in args["models"]] + [p.name for p in cfg.providers]

        rendered = pulumi.Output.all(*(pulumi.Output.from_input(m.base_url) for m in args["models"])).apply(
            lambda urls: yaml.safe_dump(litellm_config(
                [(m.alias, u) for m, u in zip(args["models"], urls, strict=True)], cfg, auth, custom_auth,
                backend_env, args.get("prices")), sort_keys=False))
        files: dict[str, pulumi.Input[str]] = {CONFIG_FILE: rendered}
        if custom_auth:
            files[AUTH_FILE] = auth_module_source()
        if registers:
            files[TEAM_BUDGETS_FILE] = Path(team_budgets.__file__).read_text()
        config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata={**meta, "name": f"{NAME}-config"},
            data=files,
            opts=child,
        )

        keys: dict[str, pulumi.Output[str]] = {}
        if master_key is not None:
            keys[MASTER_KEY_ENV] = master_key
        if ui_secret is not None:
            keys[UI_KEY_ENV] = ui_secret

        def by_team(teams: Sequence[str], entry) -> pulumi.Output[str]:
            """JSON of `entry(team, its key, its models)` by team, a secret: the keys resolved."""
            return pulumi.Output.secret(pulumi.Output.all(*(team_keys[t][0] for t in teams)).apply(
                lambda values: json.dumps({t: entry(t, v, sorted(team_keys[t][1]))
                                           for t, v in zip(teams, values, strict=True)}, sort_keys=True)))

        if team_keys:
            keys[TEAM_KEYS_ENV] = by_team(sorted(team_keys), lambda t, key, models: {
                "key": key, "models": models, **({"budget": True} if t in budgets else {})})
        for team, key in team_backend.items():
            keys[team_backend_key_env(team)] = key
        # The budgeted teams' keys with their budgets, for the registering process alone.
        script_keys: dict[str, pulumi.Output[str]] = {}
        if registers:
            # A team without a model yet gets no key: LiteLLM reads an empty model list as all.
            script_keys[TEAM_BUDGETS_ENV] = by_team(sorted(t for t in budgets if team_keys[t][1]),
                                                    lambda t, key, models: {
                "key": key, "models": models, "max_budget": budgets[t].max_budget,
                "budget_duration": budgets[t].budget_duration, "rpm_limit": budgets[t].rpm_limit,
                "tpm_limit": budgets[t].tpm_limit})
        if args["backend_key"] is not None:
            keys[BACKEND_KEY_ENV] = args["backend_key"]
        for p in cfg.providers:
            keys[provider_key_env(p.name)] = args["provider_keys"][p.name]
        if database is not None:
            keys[SALT_KEY_ENV] = random.RandomPassword(
                f"{name}-salt-key", length=32, special=False,
                opts=pulumi.ResourceOptions(parent=self)).result
        env = [
            # The cost map ships in the image: no call out to fetch it at start.
            {"name": "LITELLM_LOCAL_MODEL_COST_MAP", "value": "True"},
            # The root filesystem is read-only; caches go to the scratch volume.
            {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
            # A stream as long as the timeout allows outlives a rollout or a drain.
            {"name": GRACEFUL_SHUTDOWN_ENV, "value": str(cfg.timeout_seconds)},
            *({"name": k, "valueFrom": {"secretKeyRef": {"name": KEYS_SECRET, "key": k}}} for k in keys),
        ]
        if ui_key and args.get("ui_peer"):
            env.append({"name": UI_PEER_ENV, "value": args["ui_peer"]})
        if database is not None:
            # LiteLLM reads DATABASE_URL itself: virtual keys, teams, budgets and spend live there.
            env += [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
                        "name": database.secret_name, "key": database.secret_key}}},
                    {"name": MIGRATION_DIR_ENV, "value": MIGRATION_DIR},
                    {"name": MIGRATION_LOCK_TIMEOUT_ENV, "value": str(MIGRATION_LOCK_TIMEOUT_SECONDS)},
                    {"name": MIGRATION_TIMEOUT_ENV, "value": str(MIGRATION_TIMEOUT_SECONDS)}]
        secret = None
        if keys:
            secret = k8s.core.v1.Secret(
                f"{name}-keys", metadata={**meta, "name": KEYS_SECRET},
                string_data={**keys, **script_keys}, opts=child,
            )
        # A changed config or key must restart the proxy: it reads both only at start. Keyed like
        # the model servers' digest, since the master key may be one a person chose.
        salt = random.RandomPassword(f"{name}-keys-digest-salt", length=32, special=False,
                                     opts=pulumi.ResourceOptions(parent=self))
        checksum = keyed_digest(salt.result, [*files.values(), *keys.values(), *script_keys.values()])

        account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata={**meta, "name": SERVICE_ACCOUNT},
            # The proxy never calls the Kubernetes API.
            automount_service_account_token=False,
            opts=child,
        )
        probe = {"port": "http", "scheme": "HTTP"}
        # With a database the readiness path answers 503 while it is unreachable, which would take
        # every replica (and all of /v1) out on a database restart; the master key and the UI's
        # key need no database, so readiness is then the process being up. The first start may
        # spend the migrations' whole timeout before the server listens.
        ready_path = LIVENESS_PATH if database is not None else READINESS_PATH
        startup_seconds = (MIGRATION_LOCK_TIMEOUT_SECONDS + MIGRATION_TIMEOUT_SECONDS + 60
                           if database is not None else 300)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={**meta, "name": NAME},
            spec={
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                # Never drop the last ready proxy: it is the only way to every model.
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"llm-platform/config-checksum": checksum}},
                    "spec": {
                        "serviceAccountName": account.metadata.name,
                        "automountServiceAccountToken": False,
                        # Streams in flight get time to finish when a pod goes away.
                        "terminationGracePeriodSeconds": termination_grace_seconds(cfg),
                        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "proxy",
                            "image": cfg.image or LITELLM_IMAGE,
                            "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--port", str(PORT)],
                            "env": env,
                            "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
                            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                                             {"name": "tmp", "mountPath": "/tmp"},
                                             *([{"name": "database-ca", "mountPath": CLIENT_CA_DIR,
                                                 "readOnly": True}] if database is not None else [])],
                            "resources": {
                                "requests": {"cpu": cfg.resources.cpu, "memory": cfg.resources.memory},
                                "limits": {"cpu": cfg.resources.cpu_limit, "memory": cfg.resources.memory_limit},
                            },
                            "startupProbe": {"httpGet": {**probe, "path": READINESS_PATH},
                                             "periodSeconds": STARTUP_PERIOD_SECONDS,
                                             "failureThreshold": startup_seconds // STARTUP_PERIOD_SECONDS},
                            "readinessProbe": {"httpGet": {**probe, "path": ready_path}, "periodSeconds": 10},
                            "livenessProbe": {"httpGet": {**probe, "path": LIVENESS_PATH},
                                              "periodSeconds": 30, "failureThreshold": 5},
                            "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
                            # The image ships its admin UI already laid out, so nothing is
                            # written outside /tmp (LiteLLM falls back to the packaged UI if
                            # it cannot write one).
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}},
                        }, *([self._team_budgets_container(cfg)] if registers else [])],
                        "volumes": [{"name": "config", "configMap": {"name": config_map.metadata.name}},
                                    {"name": "tmp", "emptyDir": {}},
                                    # The database's CA, which DATABASE_URL verifies the server with.
                                    *([{"name": "database-ca", "secret": {
                                        "secretName": database.ca_secret_name,
                                        "items": [{"key": CA_CERT, "path": CA_CERT}]}}]
                                      if database is not None else [])],
                        # Replicas on different nodes (and zones), so one drain leaves one up.
                        "topologySpreadConstraints": spread_over_nodes(labels, replicas),
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=[r for r in (config_map, secret) if r is not None]
                + list(database.ready if database is not None else []))),
        )
        if replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb", metadata={**meta, "name": NAME},
                spec=one_at_a_time(labels), opts=child,
            )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={**meta, "name": NAME},
            # Port name "http": the mesh parses the traffic as HTTP (and streams it as such).
            spec={"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": "http",
                                                 "protocol": "TCP"}]},
            opts=child,
        )
        self._egress(name, args, namespace, child)
        if cfg.metrics:
            self._metrics_for_the_scraper_only(name, args, namespace, child)
        self.service_host = pulumi.Output.concat(
            self.service.metadata.name, ".", self.service.metadata.namespace, ".svc.cluster.local")
        self.base_url = pulumi.Output.concat("http://", self.service_host, f":{PORT}/v1")
        self.scrape_target = ScrapeTarget(
            name=NAME, namespace=namespace, selector=labels, port="http", path=METRICS_PATH) if cfg.metrics else None
        self.register_outputs({"serviceHost": self.service_host, "baseUrl": self.base_url,
                               "models": self.model_names})

    @staticmethod
    def _team_budgets_container(cfg: "FrontDoorConfig") -> dict:
        """Beside the proxy, on its image: registers the budgeted teams' keys with it (and deletes
        those no team holds) once it is up, over loopback (which the mesh's sidecar does not
        intercept), with the master key; the pod is ready once that is done."""
        return {
            "name": TEAM_BUDGETS_CONTAINER,
            "image": cfg.image or LITELLM_IMAGE,
            "command": ["python", f"{CONFIG_DIR}/{TEAM_BUDGETS_FILE}"],
            "env": [{"name": k, "valueFrom": {"secretKeyRef": {"name": KEYS_SECRET, "key": k}}}
                    for k in (MASTER_KEY_ENV, TEAM_BUDGETS_ENV)]
            + [{"name": team_budgets.PROXY_URL_ENV, "value": f"http://127.0.0.1:{PORT}"},
               {"name": team_budgets.READY_FILE_ENV, "value": TEAM_BUDGETS_READY_FILE}],
            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                             {"name": "tmp", "mountPath": "/tmp"}],
            # Ready once its pass made the keys as the pod's config says; read with the Python the
            # script runs on, the one program the container is known to have.
            "readinessProbe": {"exec": {"command": [
                "python", "-c", f"import os, sys; sys.exit(not os.path.exists({TEAM_BUDGETS_READY_FILE!r}))"]},
                "periodSeconds": 10},
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "128Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
        }

    def _metrics_for_the_scraper_only(self, name: str, args: FrontDoorArgs, namespace: pulumi.Output[str],
                                      child) -> None:
        """The proxy answers /metrics/ without a key (a scraper must not need the master key), and
        its series name users, teams and key hashes: only the scraper may read it, with or without
        STRICT mTLS. A DENY policy refuses it to every mesh identity but the scraper's; without
        STRICT mTLS the sidecars of the gateway, the UI and every other injected pod still present
        one (auto mTLS), while Prometheus scrapes in plain HTTP with none. Pods without a sidecar
        are kept off the port by the NetworkPolicies. When nothing scrapes, no one may read it."""
        metrics = args["metrics"]
        callers = ({"from": [{"source": {"principals": ["*"], "notPrincipals": [metrics.scraper.principal]}}]}
                   if metrics is not None else {})
        k8s.apiextensions.CustomResource(
            f"{name}-metrics-guard",
            api_version="security.istio.io/v1",
            kind="AuthorizationPolicy",
            metadata={"name": "metrics-for-the-scraper-only", "namespace": namespace},
            spec={"action": "DENY", "rules": [{**callers, "to": [{"operation": {"paths": METRICS_PATHS}}]}]},
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=list(args["mesh_ready"]))),
        )

    def _egress(self, name: str, args: FrontDoorArgs, namespace: pulumi.Output[str], child) -> None:
        """The front door reaches its model servers and the providers' hosts, nothing else: its
        sidecar knows only registered hosts (a ServiceEntry per provider host), and, where the
        cluster enforces them, NetworkPolicies allow only those flows."""
        cfg = args["config"]
        istio = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=list(args["mesh_ready"])))
        # Every entry has its host: the config refuses one without.
        hosts = sorted({host for host in map(provider_host, cfg.providers) if host is not None})
        database = args.get("database")
        k8s.apiextensions.CustomResource(
            f"{name}-sidecar",
            api_version="networking.istio.io/v1",
            kind="Sidecar",
            metadata={"name": "default", "namespace": namespace},
            spec={
                "egress": [{"hosts": ["./*", *(f"{ns}/*" for ns in args["models_namespaces"]), f"{args['istio_namespace']}/*",
                                      *([f"{database.namespace}/{database.host}"] if database else [])]}],
                "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
            },
            opts=istio,
        )
        for host in hosts:
            k8s.apiextensions.CustomResource(
                f"{name}-provider-{host}",
                api_version="networking.istio.io/v1",
                kind="ServiceEntry",
                metadata={"name": host.replace(".", "-"), "namespace": namespace},
                spec={
                    "hosts": [host],
                    "exportTo": ["."],
                    "location": "MESH_EXTERNAL",
                    "resolution": "DNS",
                    # LiteLLM speaks TLS itself; the sidecar passes it through by SNI.
                    "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                },
                opts=istio,
            )
        if database is not None:
            # The database runs outside the mesh and speaks TLS itself: its sidecar-less pods
            # would refuse the mesh's mTLS, so the sidecar passes the connection through as it is
            # (auto mTLS would do the same; this holds even under a mesh-wide ISTIO_MUTUAL rule).
            k8s.apiextensions.CustomResource(
                f"{name}-database-tls",
                api_version="networking.istio.io/v1",
                kind="DestinationRule",
                metadata={"name": "keys-database", "namespace": namespace},
                spec={"host": database.host, "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                opts=istio,
            )
        if not args["network_policies"]:
            return
        specs = mesh_namespace_policies(args["callers"], args["istio_namespace"], args["metrics"],
                                        https_egress=bool(hosts), cluster_cidrs=list(args["cluster_cidrs"]))
        specs["allow-models"] = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
            "to": [namespace_peer(ns) for ns in args["models_namespaces"]]}]}
        if database is not None:
            specs["allow-database"] = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                "to": [namespace_peer(database.namespace)],
                "ports": [{"protocol": "TCP", "port": database.port}]}]}
        for policy, spec in specs.items():
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy}", metadata={"name": policy, "namespace": namespace}, spec=spec, opts=child)
