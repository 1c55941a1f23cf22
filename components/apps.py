"""The apps Argo CD delivers: Open WebUI (pointed at the gateway) plus any from config."""

from __future__ import annotations

from typing import Optional

import pulumi

from .config import StackConfig
from .gateway import model_prefix
from .gitops import App

OPEN_WEBUI_REPO = "https://helm.openwebui.com/"
OPEN_WEBUI = "open-webui"
# The chart names its Service after the release and serves on port 80.
OPEN_WEBUI_PORT = 80


def open_webui_host(cfg: StackConfig) -> str:
    return f"{OPEN_WEBUI}.{cfg.ui.namespace}.svc.cluster.local"


OPENAI_KEYS_SECRET = "open-webui-openai"
# The chart's service account is named after the release.
OPEN_WEBUI_SERVICE_ACCOUNT = OPEN_WEBUI


def open_webui(cfg: StackConfig, namespace: pulumi.Input[str], gateway_base: str,
               api_key: Optional[pulumi.Output[str]]) -> App:
    """Open WebUI in `namespace` (the mesh's, with sidecars), talking to the models through the gateway."""
    # One OpenAI connection per model, each through the gateway like any other client.
    urls = [f"{gateway_base}{model_prefix(m.name)}" for m in cfg.models]
    secrets, env = {}, []
    if api_key is not None:
        # Open WebUI pairs OPENAI_API_KEYS with OPENAI_API_BASE_URLS, ';'-separated.
        secrets[OPENAI_KEYS_SECRET] = {"OPENAI_API_KEYS": api_key.apply(lambda k: ";".join([k] * len(urls)))}
        env.append({"name": "OPENAI_API_KEYS",
                    "valueFrom": {"secretKeyRef": {"name": OPENAI_KEYS_SECRET, "key": "OPENAI_API_KEYS"}}})
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
            # Chat history lives on a PVC and survives restarts.
            "persistence": {"enabled": True, "size": cfg.ui.storage_size},
            # Replaces the chart's default env, which sets a literal OPENAI_API_KEY.
            "extraEnvVars": env,
        },
        secrets=secrets,
    )


def all_apps(cfg: StackConfig, ui_namespace: Optional[pulumi.Input[str]], gateway_base: str,
             ui_api_key: Optional[pulumi.Output[str]]) -> list[App]:
    apps = [open_webui(cfg, ui_namespace, gateway_base, ui_api_key)] if cfg.ui.enabled else []
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
