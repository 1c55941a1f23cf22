"""What every model server's pod is made of, whichever workload runs it (LlmServer's
Deployment or StatefulSet, the LlamaRouter's Deployment): probes, security contexts, the model
file fetched onto the host, and the API keys mounted from a Secret."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.cluster.accelerators import Accelerator
from components.platform.api_keys import keyed_digest
from components.serving.runtimes import API_KEY_ENTRIES, API_KEYS_MOUNT, api_keys_file_content

if TYPE_CHECKING:
    from components.config import ModelConfig


@dataclass(frozen=True)
class ServingSettings:
    """What every model server of the stack shares, whichever workload runs it: passed as one
    value to each LlmServer and to the LlamaRouter."""

    accelerator: Accelerator
    # The models namespace (the mesh's injected namespace for the servers).
    namespace: pulumi.Input[str]
    # Host folder mounted on the node at /mnt/models; GGUF files are fetched there.
    host_models_dir: Optional[str]
    # The namespace's claim on the node's /mnt/models (servers that read GGUF files from it).
    host_models_claim: Optional[pulumi.Input[str]]
    priority_class: pulumi.Input[str]
    # API keys the servers accept (Pulumi secrets), by role; None: open API.
    api_keys: Optional[dict[str, pulumi.Output[str]]]
    # Run under the restricted Pod Security profile (non-root, no privilege, read-only root).
    restricted: bool
    # Extra groups (e.g. the node's render group for /dev/dri).
    supplemental_groups: list[int]


PROBE_PERIOD_S = 10
# A fixed non-root identity above the host's range; fsGroup makes the cache writable for it.
RUN_AS = 10001

POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_security(restricted: bool, groups: list[int]) -> Optional[dict]:
    context = {**(POD_SECURITY if restricted else {}), **({"supplementalGroups": groups} if groups else {})}
    return context or None


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


def fetch_command(model: ModelConfig, models_dir: str) -> str:
    argv = ["python3", "scripts/fetch_model.py", "--dest", f"{models_dir}/{model.file}"]
    if model.download_url:
        argv += ["--url", model.download_url]
    if model.sha256:
        argv += ["--sha256", model.sha256]
    if model.size_bytes:
        argv += ["--size", str(model.size_bytes)]
    return shlex.join(argv)


def api_keys_volume(parent: pulumi.Resource, name: str, metadata: dict, api_keys_file: str,
                    keys: dict, opts, volumes: list, mounts: list) -> pulumi.Output[str]:
    """The keys reach a llama.cpp or vLLM server as a file from a Secret: never in its args,
    env or logs. Adds the volume and mount; returns the keyed digest of the keys for the pod
    template (servers read them only at start)."""
    entries = [e for e in API_KEY_ENTRIES if e in keys]
    ordered = pulumi.Output.all(*(keys[e] for e in entries))
    secret = k8s.core.v1.Secret(
        f"{name}-api-keys",
        metadata=metadata,
        string_data={
            **{entry: keys[entry] for entry in entries},
            api_keys_file: ordered.apply(lambda ks: api_keys_file_content(api_keys_file, ks)),
        },
        opts=opts,
    )
    volumes.append({"name": "api-keys", "secret": {
        "secretName": secret.metadata.name,
        "items": [{"key": api_keys_file, "path": api_keys_file}]}})
    mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
    salt = random.RandomPassword(f"{name}-keys-digest-salt", length=32, special=False,
                                 opts=pulumi.ResourceOptions(parent=parent))
    return keyed_digest(salt.result, [keys[e] for e in entries])
