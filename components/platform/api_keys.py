"""ApiKeys: the client key that opens `/v1` (the front door's master key), the UI's key (inference
routes of the front door only), the key the front door presents to the model servers, and the
one Prometheus presents to llama.cpp's /metrics.

The client key comes from a Pulumi secret in config, or is generated once and kept (encrypted) in
state; the others are always generated: only the front door and its one holder ever see the UI
and backend keys.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional, Sequence, TypedDict

import pulumi
import pulumi_random as random

# LiteLLM accepts a master key only with this prefix.
MASTER_KEY_PREFIX = "sk-"
# Pod-template annotation that changes with the API keys: servers and the UI read them only at
# start, so a rotated key rolls their pods.
KEYS_DIGEST_ANNOTATION = "llm-platform/api-keys-digest"


def keyed_digest(salt: pulumi.Input[str], keys: Sequence[pulumi.Input[str]]) -> pulumi.Output[str]:
    """An HMAC of the keys: a plain hash of a chosen (weak) key could be guessed offline from the
    pod spec, the salt stays in the stack's encrypted state. Not a secret (nothing can be
    recovered from it), so pod templates stay readable in diffs."""
    digest = pulumi.Output.all(salt, *keys).apply(
        lambda v: hmac.new(v[0].encode(), "\n".join(v[1:]).encode(), hashlib.sha256).hexdigest())
    return pulumi.Output.unsecret(digest)


class ApiKeysArgs(TypedDict):
    # Set with `pulumi config set --secret apiKey sk-...`; None: generate one.
    client: Optional[pulumi.Input[str]]
    # Whether the UI runs, and so needs its key.
    ui: bool


class ApiKeys(pulumi.ComponentResource):
    client: pulumi.Output[str]
    # Open WebUI's key (None without the UI): the front door takes it for listing models and
    # inference alone.
    ui: Optional[pulumi.Output[str]]
    backend: pulumi.Output[str]
    # What Prometheus presents to llama.cpp's /metrics (which asks a key); never the front door's.
    metrics: pulumi.Output[str]

    def __init__(self, name: str, args: ApiKeysArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:ApiKeys", name, None, opts)

        def generated(role: str, prefix: str = "") -> pulumi.Output[str]:
            password = random.RandomPassword(
                f"{name}-{role}", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
            )
            return pulumi.Output.secret(pulumi.Output.concat(prefix, password.result))

        configured = args["client"]
        self.client = (pulumi.Output.secret(configured) if configured is not None
                       else generated("client", MASTER_KEY_PREFIX))
        # Prefixed like every LiteLLM key.
        self.ui = generated("ui", MASTER_KEY_PREFIX) if args["ui"] else None
        self.backend = generated("backend")
        self.metrics = generated("metrics")
        self._salt = random.RandomPassword(f"{name}-digest-salt", length=32, special=False,
                                           opts=pulumi.ResourceOptions(parent=self)).result
        self.register_outputs({"client": self.client, "backend": self.backend, "metrics": self.metrics,
                               **({"ui": self.ui} if self.ui is not None else {})})

    def digest(self, *keys: pulumi.Input[str]) -> pulumi.Output[str]:
        """What a pod that reads `keys` at start carries, so that it rolls when they change."""
        return keyed_digest(self._salt, keys)
