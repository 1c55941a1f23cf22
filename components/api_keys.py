"""ApiKeys: the keys that open `/v1`: one for API clients, one for the chat UI.

Each comes from a Pulumi secret in config, or is generated once and kept (encrypted) in state.
"""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_random as random


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
        self.register_outputs({"client": self.client, "ui": self.ui})
