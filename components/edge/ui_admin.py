"""UiAdmin: the password of the chat UI's admin account, from a Pulumi secret in config or
generated once and kept (encrypted) in state; and the key the UI signs its sessions with."""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_random as random


class UiAdminArgs(TypedDict):
    # Set with `pulumi config set --secret uiAdminPassword ...`; None: generate one.
    password: Optional[pulumi.Input[str]]


class UiAdmin(pulumi.ComponentResource):
    password: pulumi.Output[str]
    # Open WebUI's WEBUI_SECRET_KEY: without it the UI makes a new one at each start (outside
    # its data volume), which signs everyone out. Generated once, kept in state.
    secret_key: pulumi.Output[str]

    def __init__(self, name: str, args: UiAdminArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:UiAdmin", name, None, opts)
        if args["password"] is not None:
            self.password = pulumi.Output.secret(args["password"])
        else:
            generated = random.RandomPassword(
                f"{name}-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
            )
            self.password = pulumi.Output.secret(generated.result)
        self.secret_key = pulumi.Output.secret(random.RandomPassword(
            f"{name}-secret-key", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)).result)
        self.register_outputs({"password": self.password})
