"""Shared pieces of the stack configuration: the base model, checked value types, errors."""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
)
from pydantic.alias_generators import to_camel

from components.core.names import in_workspace

PROJECT = "llm-platform"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MINIKUBE_SIZE = re.compile(r"^[0-9]+(mb|m|gb|g)$")
_K8S_VERSION = re.compile(r"^v1\.[0-9]+\.[0-9]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHART_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$")


class ConfigError(Exception):
    """Bad stack config: one line naming the stack file, the key and what was expected."""


def _matching(pattern: re.Pattern, expected: str):
    """A validator refusing values that do not match `pattern`, saying what was expected."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    check.__doc__ = expected  # the rule, as the config reference states it
    return check


_dns_label = _matching(
    _DNS_LABEL,
    "a DNS label (lowercase letters, digits and '-', starting with a letter, at most 63 characters)",
)
_quantity = _matching(_QUANTITY, "a Kubernetes quantity such as '2', '500m' or '4Gi'")
_minikube_size = _matching(_MINIKUBE_SIZE, "a size such as '12g' or '8192mb'")
_k8s_version = _matching(_K8S_VERSION, "a Kubernetes version such as 'v1.34.0'")
_pinned_chart = _matching(_CHART_VERSION, "an exact chart version such as '1.2.3' (no ranges)")


def pinned_image(value: str) -> str:
    """An image reference with a fixed tag or a digest; `latest` and bare names are refused."""
    if "@sha256:" in value:
        return value
    name, _, tag = value.rpartition(":")
    if not name or "/" in tag or tag in ("latest", ""):
        raise ValueError(f"expected an image pinned to a tag or digest (not 'latest'), got {value!r}")
    return value


def _master_key(value: str) -> str:
    """a key starting with `sk-` followed by at least 16 characters (LiteLLM's master key format)"""
    # The message never repeats the value: it is a secret.
    if not re.fullmatch(r"sk-\S{16,}", value):
        raise ValueError("expected a key starting with 'sk-' followed by at least 16 characters (LiteLLM's "
                         "master key format); the value given does not")
    return value


def _existing_file(value: str) -> str:
    """a kubeconfig file that exists"""
    if not os.path.isfile(os.path.expanduser(value)) and not in_workspace():
        raise ValueError(f"expected a readable kubeconfig file, {value!r} does not exist")
    return value


_API_KEY = re.compile(r"^[A-Za-z0-9._~+/=][A-Za-z0-9._~+/=-]{15,255}$")


def _api_key(value: str) -> str:
    """16 to 256 characters of letters, digits and `. _ ~ + / = -`, not starting with `-`"""
    # Keys travel as a file of one key a line (llama.cpp), a YAML list expanded into flags (vLLM,
    # where a leading '-' would read as a flag) and a ';'-separated list (Open WebUI). The error
    # never repeats the key.
    if not _API_KEY.match(value):
        # The ingress's key check hashes keys of up to 256 characters.
        raise ValueError("expected 16 to 256 characters of letters, digits and . _ ~ + / = -, "
                         "not starting with '-'")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
Quantity = Annotated[str, AfterValidator(_quantity)]
MinikubeSize = Annotated[str, AfterValidator(_minikube_size)]
K8sVersion = Annotated[str, AfterValidator(_k8s_version)]
ChartVersion = Annotated[str, AfterValidator(_pinned_chart)]
Image = Annotated[str, AfterValidator(pinned_image)]
ApiKey = Annotated[str, AfterValidator(_api_key)]


class _Model(BaseModel):
    """The base of every config section. Keys are camelCase in the stack file; a misspelt one is
    refused. Each field's docstring (the string right after it) is its documentation: the config
    reference (docs/configuration.md) and the editor schema are generated from it
    (`python -m tools.config_reference`), and the first line of a check's own docstring states
    the rule it enforces."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True,
        use_attribute_docstrings=True,
    )


