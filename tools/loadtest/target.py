"""Where the load goes: a stack's outputs (through the pulumi CLI) or plain flags, and the
port-forward that reaches one model's Service directly."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from components.serving import llama_router
from tools.loadtest.aiperf import ROOT

# Every model server's Service names its one port "http" (components/serving/llm_server.py).
SERVICE_PORT_NAME = "http"
DEFAULT_MODELS_NAMESPACE = "models"


class TargetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Series:
    """One line of the report: a model reached one way."""
    model: str
    path: str  # "api" (the stack's /v1 or --base-url) or "direct" (the model's Service)
    base_url: str
    api_key: Optional[str]

    @property
    def label(self) -> str:
        return self.model if self.path == "api" else f"{self.model} ({self.path})"


def stack_outputs(stack: str) -> dict:
    """All outputs of a stack, secrets included (kept in memory only)."""
    if not shutil.which("pulumi"):
        raise TargetError(f"-s {stack} reads the stack's outputs with the pulumi CLI, which is not on PATH; "
                          "pass --base-url, --model and the key (LLM_API_KEY) instead")
    out = subprocess.run(["pulumi", "stack", "output", "--stack", stack, "--json", "--show-secrets"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise TargetError(f"pulumi stack output --stack {stack}: {out.stderr.strip().splitlines()[-1:]}")
    try:
        outputs = json.loads(out.stdout)
    except ValueError:
        raise TargetError(f"pulumi stack output --stack {stack} did not print JSON: {out.stdout.strip()[:120]!r}") from None
    if not isinstance(outputs, dict):
        raise TargetError(f"pulumi stack output --stack {stack} printed no object of outputs: {out.stdout.strip()[:120]!r}")
    return outputs


def base_url_for_aiperf(api_base_url: str) -> str:
    """AIPerf appends /v1/chat/completions itself: give it the URL without the /v1."""
    url = api_base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def models_namespace(stack: str) -> str:
    """The stack's `modelsNamespace` from Pulumi.<stack>.yaml, else the program's default."""
    path = ROOT / f"Pulumi.{stack}.yaml"
    if path.exists():
        m = re.search(r"^\s+llm-platform:modelsNamespace:\s*['\"]?([a-z0-9-]+)", path.read_text(), re.M)
        if m:
            return m.group(1)
    return DEFAULT_MODELS_NAMESPACE


def model_service(stack: str, model: str) -> str:
    """The Service that serves `model` directly: llama.cpp's router where the stack file turns
    router mode on (it serves every model), else the model's own Service (named by its alias)."""
    path = ROOT / f"Pulumi.{stack}.yaml"
    if path.exists():
        router = (yaml.safe_load(path.read_text()) or {}).get("config", {}).get("llm-platform:llamaRouter") or {}
        if router.get("enabled"):
            return llama_router.NAME
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortForward:
    """`kubectl port-forward` to a model's Service on a free loopback port, for the `with` block."""

    def __init__(self, service: str, namespace: str, kubeconfig: Optional[str] = None,
                 kubeconfig_text: Optional[str] = None, kubectl: str = "kubectl", timeout_s: float = 30):
        self.service, self.namespace, self.kubectl, self.timeout_s = service, namespace, kubectl, timeout_s
        self.kubeconfig, self.kubeconfig_text = kubeconfig, kubeconfig_text
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self._tmp: Optional[str] = None

    def argv(self) -> list[str]:
        argv = [self.kubectl]
        if self.kubeconfig:
            argv += ["--kubeconfig", self.kubeconfig]
        return argv + ["--namespace", self.namespace, "port-forward", f"service/{self.service}",
                       f"{self.port}:{SERVICE_PORT_NAME}", "--address", "127.0.0.1"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "PortForward":
        if self.kubeconfig_text and not self.kubeconfig:
            # The stack's kubeconfig output, in a private file that lives as long as the forward.
            fd, self._tmp = tempfile.mkstemp(prefix="kubeconfig-", suffix=".yaml")
            with os.fdopen(fd, "w") as f:
                f.write(self.kubeconfig_text)
            self.kubeconfig = self._tmp
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except FileNotFoundError:
            self._cleanup()
            raise TargetError(f"--direct needs {self.kubectl} on PATH") from None
        output = self.proc.stdout
        assert output is not None  # stdout=PIPE
        ready, lines, forwarding = threading.Event(), [], []

        def watch() -> None:
            for line in output:
                lines.append(line.strip())
                if line.startswith("Forwarding from"):
                    forwarding.append(True)
                    ready.set()
            ready.set()  # kubectl ended: its output says why

        threading.Thread(target=watch, daemon=True).start()
        ready.wait(self.timeout_s)
        if not forwarding or self.proc.poll() is not None:
            self.__exit__(None, None, None)
            raise TargetError(f"kubectl port-forward service/{self.service} -n {self.namespace} did not start: "
                              f"{' | '.join(lines[-3:]) or 'no output'}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp:
            Path(self._tmp).unlink(missing_ok=True)
            self._tmp = None
