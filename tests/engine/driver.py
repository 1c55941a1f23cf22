"""The real program through the Pulumi Automation API and the real engine: a file backend,
passphrase secrets, the program run inline (the SDK runs it in this process and the CLI gets
`--client`), the Kubernetes provider built from its source, and a stand-in `random` plugin (see
random_provider.py for why).

Each stack gets its own work folder with the project file and a `Pulumi.<stack>.yaml` written
as a user would write one, so config reaches the program exactly as it does from the CLI.
"""

from __future__ import annotations

import os
import runpy
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from tools import engine_tools
from tools.mock_engine import PROJECT_DIR

PROJECT = "llm-platform"
PASSPHRASE = "engine-tests"


def program() -> None:
    """The project's own entry point, as `pulumi up` runs it."""
    runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")


def plugin_dir(root: Path) -> Path:
    """A folder with the stand-in `pulumi-resource-random` (its interpreter is this one)."""
    folder = root / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "pulumi-resource-random"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={PROJECT_DIR} exec {sys.executable} -m tests.engine.random_provider \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


@dataclass
class EngineStack:
    """One stack of the project in its own work folder and state backend."""

    name: str
    config: dict
    root: Path
    log: list[str] = field(default_factory=list)
    _stack: object = None

    def __post_init__(self) -> None:
        from pulumi import automation as auto

        self.root.mkdir(parents=True, exist_ok=True)
        work = self.root / "work"
        work.mkdir(exist_ok=True)
        (work / "Pulumi.yaml").write_text(yaml.safe_dump({"name": PROJECT, "runtime": "python"}))
        self.write_config(self.config)
        path = os.pathsep.join([str(engine_tools.bin_dir()), str(plugin_dir(self.root)), os.environ.get("PATH", "")])
        env = {
            "PATH": path,
            "PULUMI_HOME": str(self.root / "home"),
            "PULUMI_BACKEND_URL": f"file://{self.root / 'state'}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_SKIP_CONFIRMATIONS": "true",
        }
        (self.root / "state").mkdir(exist_ok=True)
        os.environ["PATH"] = path  # the Automation API finds the CLI on this process's PATH
        self._stack = auto.create_or_select_stack(
            stack_name=self.name, project_name=PROJECT, program=program,
            opts=auto.LocalWorkspaceOptions(work_dir=str(work), env_vars=env))

    @property
    def stack(self):
        return self._stack

    def write_config(self, config: dict) -> None:
        """`Pulumi.<stack>.yaml` with `config` (keys without the project prefix)."""
        self.config = config
        doc = {"config": {f"{PROJECT}:{k}": v for k, v in config.items()}}
        (self.root / "work" / f"Pulumi.{self.name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def _out(self, line: str) -> None:
        self.log.append(line)

    def preview(self, **kw):
        return self.stack.preview(on_output=self._out, diff=True, **kw)

    def up(self, **kw):
        return self.stack.up(on_output=self._out, **kw)

    def refresh(self, **kw):
        return self.stack.refresh(on_output=self._out, **kw)

    def destroy(self, **kw):
        return self.stack.destroy(on_output=self._out, **kw)

    def events(self, op: Callable, **kw) -> tuple[object, list]:
        """Run `op` collecting the engine's events (resource steps with their operations)."""
        events: list = []
        result = op(on_event=events.append, **kw)
        return result, events

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log[-n:])

