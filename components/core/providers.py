"""Hosted model providers the front door may reach: the one host each entry sends to. Read by
the config (an entry without a known host needs an apiBase) and by the front door (its egress)."""

from __future__ import annotations

from typing import Optional, Protocol
from urllib.parse import urlparse

# Where LiteLLM sends a provider's requests when the entry names no apiBase.
PROVIDER_HOSTS = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "mistral": "api.mistral.ai",
    "groq": "api.groq.com",
    "gemini": "generativelanguage.googleapis.com",
}


class HostedModel(Protocol):
    """What a provider entry says about where it goes (config.ProviderModel, a frozen model)."""

    @property
    def model(self) -> str: ...

    @property
    def api_base(self) -> Optional[str]: ...


def provider_host(provider: HostedModel) -> Optional[str]:
    """The one host the front door may reach for a provider entry (None: unknown)."""
    if provider.api_base:
        return urlparse(provider.api_base).hostname
    return PROVIDER_HOSTS.get(provider.model.split("/", 1)[0])
