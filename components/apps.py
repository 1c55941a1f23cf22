"""The apps Argo CD delivers: Open WebUI (pointed at the gateway) plus any from config."""

from __future__ import annotations

from .config import StackConfig
from .gateway import model_prefix
from .gitops import App

OPEN_WEBUI_REPO = "https://helm.openwebui.com/"
OPEN_WEBUI = "open-webui"
# The chart names its Service after the release and serves on port 80.
OPEN_WEBUI_PORT = 80


def open_webui_host(cfg: StackConfig) -> str:
    return f"{OPEN_WEBUI}.{cfg.ui.namespace}.svc.cluster.local"


def open_webui(cfg: StackConfig, gateway_base: str) -> App:
    # One OpenAI connection per model, each through the gateway like any other client.
    urls = [f"{gateway_base}{model_prefix(m.name)}" for m in cfg.models]
    return App(
        name=OPEN_WEBUI,
        namespace=cfg.ui.namespace,
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
        },
        namespace_labels={"istio-injection": "enabled"},
    )


def all_apps(cfg: StackConfig, gateway_base: str) -> list[App]:
    apps = [open_webui(cfg, gateway_base)] if cfg.ui.enabled else []
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
