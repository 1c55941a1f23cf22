"""What the engine tests read back: the engine's steps, and the cluster as an operator sees it."""

from __future__ import annotations

from typing import Callable

from pulumi import automation as auto

from tests import kube


def summary_without_same(summary: dict) -> dict:
    """A change summary minus resources left as they were."""
    return {str(getattr(k, "value", k)): v for k, v in summary.items() if str(getattr(k, "value", k)) != "same" and v}


def ops(events: list) -> list[tuple[str, str, str]]:
    """(operation, type, logical name) of every resource step but `same`."""
    out = []
    for e in events:
        pre = getattr(e, "resource_pre_event", None)
        if pre is None or pre.metadata.op.value == "same":
            continue
        md = pre.metadata
        out.append((md.op.value, md.type, md.urn.rsplit("::", 1)[-1]))
    return out


def config_error(run: Callable, names: str = "Pulumi.") -> str:
    """The one line the program fails with (the engine prints it after `error: `), which names
    the file at fault (`names`: part of its path)."""
    try:
        run()
    except auto.CommandError as err:
        text = str(err)
    else:
        raise AssertionError("expected the preview to fail")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("error: ") and names in ln]
    assert lines, text[-3000:]
    return lines[0][len("error: "):]


def settled_pods(w, namespace: str, app_prefix: str, timeout: float = 60) -> list:
    """Running pods of a workload whose names start with `app_prefix`, once none is terminating."""
    def ready():
        pods = [p for p in w.cp.pods(namespace) if p.metadata.name.startswith(app_prefix)]
        if pods and all(p.status.phase == "Running" and not p.metadata.deletion_timestamp for p in pods):
            return pods
        return None
    return kube.until(ready, timeout, f"{namespace}/{app_prefix}* running")


def live_names(w) -> dict[str, set]:
    return {
        "namespaces": {n.metadata.name for n in w.cp.core.list_namespace().items
                       if n.status.phase != "Terminating"},
        "claims": {f"{c.metadata.namespace}/{c.metadata.name}"
                   for c in w.cp.core.list_persistent_volume_claim_for_all_namespaces().items},
    }
