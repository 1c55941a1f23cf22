import os
import time
from pathlib import Path
from typing import Optional

from tests import netns

# First, before any test starts a thread or a server: every address but loopback unreachable.
netns.isolate()
# The engine tests run the Automation API's gRPC server in this process and then start control
# planes: gRPC's fork handlers would abort a child forked meanwhile (seen: kube-scheduler killed by
# SIGABRT before its exec). Read by gRPC when it loads, so set before anything imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from tools import charts  # noqa: E402
from tools import mock_engine as harness  # noqa: E402

# CI explores the same examples on every run, so a red build always means a real change.
settings.register_profile("ci", derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

def mock_engine_model(stack: str) -> dict:
    return harness.stack_config(stack)["llm-platform:models"][0]


# Stacks as shipped, plus variants for what only a config option installs: cert-manager (TLS
# issued through ACME) on eks, one llama-server pod per model (instead of the router) on local,
# the front door's virtual keys (the CloudNativePG operator and its PostgreSQL, a team's budgeted
# key) on local, and
# autoscaling on eks.
TLS = {"llm-platform:gateway": {"host": "llm.example.com", "certManager": {"acmeEmail": "ops@example.com"}}}
PODS = {"llm-platform:llamaRouter": {"enabled": False}}
VKEYS = {"llm-platform:frontDoor": {"virtualKeys": {"enabled": True}}}
# ...and a team whose key has a budget (a virtual key registered beside the proxy).
BUDGETED = {**VKEYS, "llm-platform:teams": {"research": {"accelerators": 1, "memory": "8Gi", "price": {"input": 0.2, "output": 0.6},
                                                  "budget": {"maxBudget": 50}}},
            "llm-platform:teamModelsDir": str(Path(__file__).resolve().parent / "fixtures" / "budgeted")}
# KEDA sizes the vLLM server on its queue, from zero (Prometheus in `monitoring` scrapes it).
AUTOSCALED = {
    "llm-platform:models": [{**{k: v for k, v in mock_engine_model("eks").items() if k != "replicas"},
                             "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 2,
                                             "scaleToZero": True}}],
}
# Two vLLM replicas behind an inference pool and its endpoint picker.
POOLED = {"llm-platform:models": [{**mock_engine_model("eks"), "replicas": 2}]}
VARIANTS = {"local": ("local", {}), "eks": ("eks", {}), "gke": ("gke", {}), "eks-tls": ("eks", TLS),
            "local-pods": ("local", PODS), "local-vkeys": ("local", BUDGETED), "eks-autoscaled": ("eks", AUTOSCALED),
            "eks-pooled": ("eks", POOLED)}

_recordings: dict[str, harness.Recording] = {}


def recording(variant: str) -> harness.Recording:
    """The variant's recording, made once per session (tests must not change it)."""
    if variant not in _recordings:
        stack, overrides = VARIANTS[variant]
        _recordings[variant] = harness.run(stack, overrides)
    return _recordings[variant]


@pytest.fixture(scope="session")
def local() -> harness.Recording:
    return harness.run("local")


@pytest.fixture(scope="session")
def local_pods() -> harness.Recording:
    """The local stack with one llama-server pod per model."""
    return recording("local-pods")


@pytest.fixture(scope="session", params=list(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def stack_recording(variant) -> harness.Recording:
    return recording(variant)


def need_charts() -> None:
    """Skip, saying what is missing, where the vendored chart archives (and the CRD manifests the
    stack applies from files) are not beside the repo."""
    if not (charts.CHARTS_DIR / "SHA256SUMS").is_file():
        pytest.skip(f"chart archives absent: {charts.CHARTS_DIR} (../shared/upstream/charts)")
    if not (charts.CRDS_DIR / "SHA256SUMS").is_file():
        pytest.skip(f"CRD manifests absent: {charts.CRDS_DIR} (../shared/upstream/crds)")


@pytest.fixture(scope="session")
def cluster(stack_recording) -> list[charts.Manifest]:
    """The whole cluster the variant would have: program objects and every chart's, rendered once."""
    need_charts()
    return charts.cluster_objects(stack_recording)


# --- A real control plane (tests/parts/test_cluster.py): one per session, stopped at its end ------


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    from tests import kube

    why = kube.missing()
    if why:
        pytest.skip(why)
    # Every test on it applies the stacks' rendered charts: no control plane started without them.
    need_charts()
    cp = kube.ControlPlane(tmp_path_factory.mktemp("envtest") / "run")
    kube.TIMINGS["control plane start"] = cp.start_s
    yield cp
    cp.stop()


class Stacks:
    """The stack now on the control plane; another one replaces it."""

    def __init__(self, cp):
        self.cp = cp
        self.key: Optional[str] = None
        self.current = None

    def get(self, variant: str):
        from tests import cluster_stack as cs
        from tests import kube

        key = variant
        if key != self.key:
            t0 = time.monotonic()
            self.cp.reset(self.current.objects if self.current else [])
            self.key, self.current = None, None
            self.current = cs.deploy(self.cp, VARIANTS[variant][0], recording(variant))
            self.key = key
            kube.TIMINGS[f"{key} reset+deploy"] = time.monotonic() - t0
        return self.current


@pytest.fixture(scope="session")
def stacks(control_plane) -> Stacks:
    """The stacks on the control plane, one at a time (shared by every module that uses it)."""
    return Stacks(control_plane)


def pytest_terminal_summary(terminalreporter):
    """How long Helm took to render the charts (each release once per version) and how long the
    control plane took per stack."""
    from tests import kube

    if charts.RENDER_SECONDS:
        total = sum(seconds for _, seconds in charts.RENDER_SECONDS)
        slowest = sorted(charts.RENDER_SECONDS, key=lambda kv: -kv[1])[:3]
        terminalreporter.write_line(
            f"chart renders: {len(charts.RENDER_SECONDS)} in {total:.1f}s (slowest: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in slowest) + ")")
    if kube.TIMINGS:
        terminalreporter.write_line("cluster tests: " + ", ".join(f"{k} {v:.1f}s" for k, v in kube.TIMINGS.items()))


# --- Tiers (tests/README.md): a test's folder is its tier, given to it as a marker ------------

TIERS = ("unit", "program", "parts", "engine")
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Mark each test with its folder's tier, so `-m "unit or program"` selects by tier. A test
    outside the tier folders, or marked with another folder's tier, stops the run: it would be left
    out of a tier, or run in two."""
    misplaced = []
    for item in items:
        path = Path(item.path).resolve()
        tier = path.relative_to(TESTS_DIR).parts[0] if path.is_relative_to(TESTS_DIR) else None
        if tier not in TIERS:
            misplaced.append(f"{item.nodeid}: not in a tier folder ({', '.join(TIERS)})")
            continue
        others = [t for t in TIERS if t != tier and item.get_closest_marker(t)]
        if others:
            misplaced.append(f"{item.nodeid}: marked {', '.join(others)} in the {tier} folder")
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)
    if misplaced:
        raise pytest.UsageError("tests outside their tier (tests/README.md):\n  " + "\n  ".join(misplaced))
