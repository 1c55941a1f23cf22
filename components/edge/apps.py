"""The apps Argo CD delivers: Open WebUI (talking to the front door through the mesh) plus
any from config."""

from __future__ import annotations

from typing import Optional, Sequence

import pulumi

from components.config import StackConfig
from components.core.published import ModelBackend
from components.core.trust import Caller
from components.platform.api_keys import KEYS_DIGEST_ANNOTATION
from components.platform.gitops import App

OPEN_WEBUI_REPO = "https://helm.openwebui.com/"
OPEN_WEBUI = "open-webui"
# The chart names its Service after the release and serves on port 80.
OPEN_WEBUI_PORT = 80
# Set explicitly so the mesh's allow-list names the account the pods really run as (left
# unset, the chart calls it "<release>-sa").
OPEN_WEBUI_SERVICE_ACCOUNT = OPEN_WEBUI
# The bundled Redis (websocket manager). Istio picks a port's protocol from its name; the
# chart's default name, "http", would make the sidecars parse Redis as HTTP.
OPEN_WEBUI_REDIS_PORT_NAME = "tcp-redis"


def ui_caller(namespace: str) -> Caller:
    """Open WebUI as the front door sees it: the chart's service account in its namespace."""
    return Caller(namespace, OPEN_WEBUI_SERVICE_ACCOUNT)


def open_webui_host(cfg: StackConfig) -> str:
    return f"{OPEN_WEBUI}.{cfg.ui.namespace}.svc.cluster.local"


OPENAI_KEYS_SECRET = "open-webui-openai"
ADMIN_SECRET = "open-webui-admin"
# What the UI signs its sessions with (the chart has no value for it: an env var from a Secret).
SESSION_SECRET = "open-webui-session"


def _secret_env(name: str, secret: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}


def open_webui(cfg: StackConfig, namespace: pulumi.Input[str], models: Sequence[ModelBackend],
               api_key: Optional[pulumi.Output[str]], api_key_digest: Optional[pulumi.Output[str]],
               admin_password: pulumi.Output[str], secret_key: pulumi.Output[str]) -> App:
    """Open WebUI in `namespace` (the mesh's, with sidecars). It calls the OpenAI endpoints in
    `models` (the front door) inside the mesh, under its own identity, never through the public
    ingress; it lists whatever models they serve, so models added later appear too."""
    urls = [m.base_url for m in models]
    secrets: dict[str, dict[str, pulumi.Input[str]]] = {
        ADMIN_SECRET: {"WEBUI_ADMIN_PASSWORD": admin_password},
        SESSION_SECRET: {"WEBUI_SECRET_KEY": secret_key},
    }
    env = [
        # The stack is the source of truth: connections, keys and sign-up are read from the
        # environment on every start instead of from what the first start stored in the DB.
        {"name": "ENABLE_PERSISTENT_CONFIG", "value": "False"},
        {"name": "ENABLE_SIGNUP", "value": str(cfg.ui.signup)},
        # Models listed from a connection have no access entry in the UI's DB, and the UI shows
        # such models to admins only; every signed-in account sees every model instead.
        {"name": "BYPASS_MODEL_ACCESS_CONTROL", "value": "True"},
        # The admin account is created at first start when no user exists yet.
        {"name": "WEBUI_ADMIN_EMAIL", "value": cfg.ui.admin_email},
        _secret_env("WEBUI_ADMIN_PASSWORD", ADMIN_SECRET),
        # Sessions signed with a key of the stack's outlive the pod: a restart signs no one out.
        _secret_env("WEBUI_SECRET_KEY", SESSION_SECRET),
    ]
    if api_key is not None:
        # Open WebUI pairs OPENAI_API_KEYS with OPENAI_API_BASE_URLS, ';'-separated.
        secrets[OPENAI_KEYS_SECRET] = {"OPENAI_API_KEYS": api_key.apply(lambda k: ";".join([k] * len(urls)))}
        env.append(_secret_env("OPENAI_API_KEYS", OPENAI_KEYS_SECRET))
    return App(
        name=OPEN_WEBUI,
        namespace=namespace,
        create_namespace=False,
        repo_url=OPEN_WEBUI_REPO,
        chart=OPEN_WEBUI,
        target_revision=cfg.ui.chart_version,
        values={
            "ollama": {"enabled": False},
            "pipelines": {"enabled": False},
            "enableOpenaiApi": True,
            "openaiBaseApiUrls": urls,
            "serviceAccount": {"name": OPEN_WEBUI_SERVICE_ACCOUNT},
            "websocket": {"redis": {"service": {"portName": OPEN_WEBUI_REDIS_PORT_NAME}}},
            # Chat history lives on a PVC and survives restarts.
            "persistence": {"enabled": True, "size": cfg.ui.storage_size},
            # Replaces the chart's default env, which sets a literal OPENAI_API_KEY.
            "extraEnvVars": env,
            # The UI reads its key only at start: a rotated key changes the pod template, so
            # Argo CD rolls the UI along with the model servers.
            **({"podAnnotations": {KEYS_DIGEST_ANNOTATION: api_key_digest}} if api_key_digest is not None else {}),
        },
        secrets=secrets,
    )


def all_apps(cfg: StackConfig, *, ui_namespace: Optional[pulumi.Input[str]], models: Sequence[ModelBackend],
             ui_api_key: Optional[pulumi.Output[str]], ui_api_key_digest: Optional[pulumi.Output[str]],
             ui_admin_password: Optional[pulumi.Output[str]],
             ui_secret_key: Optional[pulumi.Output[str]]) -> list[App]:
    apps = []
    if cfg.ui.enabled:
        # The program gives the UI's namespace and secrets whenever the UI is enabled.
        assert ui_namespace is not None and ui_admin_password is not None and ui_secret_key is not None
        apps.append(open_webui(cfg, ui_namespace, models, ui_api_key, ui_api_key_digest, ui_admin_password,
                               ui_secret_key))
    return apps + [
        App(
            name=a.name,
            namespace=a.namespace,
            repo_url=a.repo_url,
            chart=a.chart,
            target_revision=a.target_revision,
            values=a.values,
        )
        for a in cfg.apps
    ]
