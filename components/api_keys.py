"""ApiKeys: the client key that opens `/v1` (the front door's master key), and the key the front
door presents to the model servers.

The client key comes from a Pulumi secret in config, or is generated once and kept (encrypted) in
state; the backend key is always generated: only the front door ever holds it.
"""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_random as random

# LiteLLM accepts a master key only with this prefix.
MASTER_KEY_PREFIX = "sk-"


class ApiKeysArgs(TypedDict):
    # Set with `pulumi config set --secret apiKey sk-...`; None: generate one.
    client: Optional[pulumi.Input[str]]


class ApiKeys(pulumi.ComponentResource):
    client: pulumi.Output[str]
    backend: pulumi.Output[str]

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
        self.backend = generated("backend")
        self.register_outputs({"client": self.client, "backend": self.backend})
