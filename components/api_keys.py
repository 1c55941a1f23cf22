"""ApiKeys: the keys that open `/v1`: one for API clients, one for the chat UI.

Each comes from a Pulumi secret in config, or is generated once and kept (encrypted) in state.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional, Sequence, TypedDict

import pulumi
import pulumi_random as random

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
    # Keys set with `pulumi config set --secret`; None: generate one.
    client: Optional[pulumi.Input[str]]
    ui: Optional[pulumi.Input[str]]


class ApiKeys(pulumi.ComponentResource):
    client: pulumi.Output[str]
    ui: pulumi.Output[str]

    def __init__(self, name: str, args: ApiKeysArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:ApiKeys", name, None, opts)

        def key(role: str, configured: Optional[pulumi.Input[str]]) -> pulumi.Output[str]:
            if configured is not None:
                return pulumi.Output.secret(configured)
            generated = random.RandomPassword(
                f"{name}-{role}", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
            )
            return pulumi.Output.secret(generated.result)

        self.client = key("client", args["client"])
        self.ui = key("ui", args["ui"])
        self._salt = random.RandomPassword(f"{name}-digest-salt", length=32, special=False,
                                           opts=pulumi.ResourceOptions(parent=self)).result
        self.register_outputs({"client": self.client, "ui": self.ui})

    def digest(self, *keys: pulumi.Input[str]) -> pulumi.Output[str]:
        """What a pod that reads `keys` at start carries, so that it rolls when they change."""
        return keyed_digest(self._salt, keys)
