"""Who may connect to whom, judged as the CNI and Istio judge it, from the policies a stack
records: Kubernetes NetworkPolicies (isolation by the policies that select a pod, peers by pod
and namespace selectors or address blocks, empty lists meaning "everything") and Istio
AuthorizationPolicies (DENY before ALLOW, an ALLOW policy applying means only matches pass,
no rules matches nothing, `{}` matches everything, `*` and prefix/suffix wildcards).

Where a policy depends on something a test does not state (a named port on a pod it does not
know, a condition on a header, an address block), the judge answers "admitted" for an ALLOW and
"not denied" for a DENY: a test that expects a refusal then fails rather than passes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from tools import charts
from tools.mock_engine import Recording

NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
AUTHZ = "kubernetes:security.istio.io/v1:AuthorizationPolicy"
NAMESPACE = "kubernetes:core/v1:Namespace"
WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:DaemonSet")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# Istio's root namespace (meshConfig.rootNamespace, which the program leaves at its default):
# its AuthorizationPolicies apply to every workload of the mesh.
ISTIO_ROOT_NAMESPACE = "istio-system"
# Where a pod's address may lie: any private or shared range (EKS pods take VPC addresses).
POD_RANGES = [ipaddress.ip_network(r) for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]


@dataclass(frozen=True)
class Pod:
    """A pod as a policy sees it: its namespace, its labels, its named container ports."""

    namespace: str
    labels: dict = field(default_factory=dict, hash=False)
    ports: dict = field(default_factory=dict, hash=False)  # port name -> number


Endpoint = Union[Pod, str]  # a pod, or an address outside the cluster ("203.0.113.7")


# --- label selectors ------------------------------------------------------------------------


def selects(selector: Optional[dict], labels: dict) -> bool:
    """metav1.LabelSelector: `{}` selects everything; matchLabels and matchExpressions AND."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def namespace_labels(rec: Recording, ns: str) -> dict:
    """The labels a namespace carries: the API server's name label, and the program's own."""
    labels = {NAMESPACE_NAME_LABEL: ns}
    for r in rec.of_type(NAMESPACE):
        md = charts.plain(r.inputs).get("metadata") or {}
        if md.get("name") == ns:
            labels.update(md.get("labels") or {})
    return labels


def pods_of(rec: Recording, ns: str) -> list[Pod]:
    """The program's workloads' pods in `ns` (their template labels and named ports); a bare pod
    where it runs none."""
    out = []
    for r in rec.registrations:
        if r.type in WORKLOADS:
            obj = charts.plain(r.inputs)
            if (obj.get("metadata") or {}).get("namespace") != ns:
                continue
            template = obj["spec"]["template"]
            ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
                     for p in c.get("ports") or [] if p.get("name")}
            out.append(Pod(ns, dict((template.get("metadata") or {}).get("labels") or {}), ports))
    return out or [Pod(ns)]


# --- address blocks -------------------------------------------------------------------------


def _uncovered(block: ipaddress.IPv4Network, excepts: Iterable[ipaddress.IPv4Network]) -> bool:
    """Whether some address of `block` lies outside every one of `excepts`."""
    left = [block]
    for e in excepts:
        nxt = []
        for b in left:
            if b.subnet_of(e):
                continue
            nxt += list(b.address_exclude(e)) if e.subnet_of(b) else [b]
        left = nxt
    return bool(left)


def in_block(block: dict, where: Endpoint) -> bool:
    """An ipBlock (cidr, except) holds the address, or for a pod, may hold its address."""
    cidr = ipaddress.ip_network(block["cidr"], strict=False)
    excepts = [ipaddress.ip_network(e, strict=False) for e in block.get("except") or []]
    if cidr.version != 4:
        return False
    if isinstance(where, str):
        addr = ipaddress.ip_address(where)
        return addr in cidr and not any(addr in e for e in excepts)
    for r in POD_RANGES:
        if r.overlaps(cidr) and _uncovered(r if r.subnet_of(cidr) else cidr, [e for e in excepts if e.version == 4]):
            return True
    return False


# --- NetworkPolicy ----------------------------------------------------------------------------


def _policy_types(spec: dict) -> list[str]:
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _peer_matches(rec: Recording, peer: dict, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return in_block(peer["ipBlock"], other)
    if isinstance(other, str):  # an address outside the cluster matches only an ipBlock
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels(rec, other.namespace)):
            return False
    elif other.namespace != policy_ns:  # a podSelector alone: pods of the policy's namespace
        return False
    return selects(peer.get("podSelector"), other.labels)


def _port_matches(rule_ports: Optional[list], port: Optional[int], protocol: str, target: Endpoint) -> bool:
    if not rule_ports or port is None:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            # A named port resolves on the pod it is opened to; unknown there: maybe.
            named = target.ports.get(want) if isinstance(target, Pod) else None
            if named is None or named == port:
                return True
            continue
        if int(want) <= port <= int(p.get("endPort") or want):
            return True
    return False


def _network_policies(rec: Recording, ns: str) -> list[dict]:
    return [charts.plain(r.inputs) for r in rec.of_type(NETPOL)
            if (r.inputs.get("metadata") or {}).get("namespace") == ns]


def _side_allows(rec: Recording, pod: Endpoint, direction: str, other: Endpoint, port: Optional[int],
                 protocol: str, target: Endpoint) -> bool:
    """`pod`'s policies in `direction` ("Ingress": `other` connects to it; "Egress": it connects
    to `other`): not isolated, or some rule of a policy selecting it lets the connection pass."""
    if isinstance(pod, str):
        return True  # outside the cluster: no policy of ours applies there
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in _network_policies(rec, pod.namespace)
                 if direction in _policy_types(p["spec"]) and selects(p["spec"].get("podSelector"), pod.labels)]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get(key) or []:
            listed = rule.get(peers)  # absent or []: every peer
            if (not listed or any(_peer_matches(rec, peer, pod.namespace, other) for peer in listed)) \
                    and _port_matches(rule.get("ports"), port, protocol, target):
                return True
    return False


def network_allows(rec: Recording, source: Endpoint, dest: Endpoint, port: Optional[int] = None,
                   protocol: str = "TCP") -> bool:
    """Whether the NetworkPolicies let `source` open a connection to `dest` (on `port`, or on
    some port when None): the source's egress and the destination's ingress must both allow it."""
    return (_side_allows(rec, source, "Egress", dest, port, protocol, dest)
            and _side_allows(rec, dest, "Ingress", source, port, protocol, dest))


def network_admits(rec: Recording, source_ns: str, dest_ns: str, port: Optional[int] = None) -> bool:
    """Would the ingress policies of `dest_ns` let some pod of `source_ns` (any of the program's
    there, or a bare one) reach some pod of `dest_ns`? (The source's own egress is its
    namespace's business: `egress_allows`.)"""
    return any(_side_allows(rec, dest, "Ingress", src, port, "TCP", dest)
               for dest in pods_of(rec, dest_ns) for src in pods_of(rec, source_ns) + [Pod(source_ns)])


def egress_allows(rec: Recording, ns: str, dest: Endpoint, port: Optional[int] = None,
                  protocol: str = "TCP") -> bool:
    """Whether some pod of `ns` may open a connection to `dest` by its namespace's egress
    policies (whatever the destination's ingress says)."""
    return any(_side_allows(rec, src, "Egress", dest, port, protocol, dest) for src in pods_of(rec, ns))


# --- Istio AuthorizationPolicy ------------------------------------------------------------------


def _wildcard(pattern: str, value: Optional[str]) -> bool:
    """Istio's string match: exact, "*" (any non-empty value), "prefix*" or "*suffix"."""
    if value is None:
        return False
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def _field(values: Optional[list], not_values: Optional[list], value: Optional[str], unknown: bool,
           allow: bool = True) -> bool:
    """One source/operation field: `values` must match (if given), `not_values` must not. With
    `unknown` (the caller did not say) a field the rule constrains may or may not match: it
    matches for an ALLOW and not for a DENY, so that some request of that caller gets in."""
    if values is None and not_values is None:
        return True
    if unknown:
        return allow
    if values is not None and not any(_wildcard(p, value) for p in values):
        return False
    if not_values is not None and any(_wildcard(p, value) for p in not_values):
        return False
    return True


@dataclass(frozen=True)
class Request:
    """A request as an AuthorizationPolicy sees it; None: not stated (may be anything)."""

    principal: Optional[str]
    port: Optional[int] = None
    path: Optional[str] = None
    method: Optional[str] = None

    @property
    def namespace(self) -> Optional[str]:
        parts = (self.principal or "").split("/")
        return parts[parts.index("ns") + 1] if "ns" in parts else None


def _source_matches(src: dict, req: Request) -> bool:
    # A JWT's principal: no caller here presents one (the stack has no RequestAuthentication).
    if src.get("requestPrincipals") is not None:
        return False
    for key, value in (("principals", req.principal), ("namespaces", req.namespace)):
        not_key = "not" + key[0].upper() + key[1:]
        if not _field(src.get(key), src.get(not_key), value, unknown=False):
            return False
    # Address blocks: a pod's address may lie in them.
    for key in ("ipBlocks", "remoteIpBlocks"):
        if src.get(key) is not None and not any(in_block({"cidr": c}, Pod("")) for c in src[key]):
            return False
    return True


def _operation_matches(op: dict, req: Request, allow: bool) -> bool:
    port = None if req.port is None else str(req.port)
    return (_field(op.get("ports"), op.get("notPorts"), port, req.port is None, allow)
            and _field(op.get("paths"), op.get("notPaths"), req.path, req.path is None, allow)
            and _field(op.get("methods"), op.get("notMethods"), req.method, req.method is None, allow))


_CONDITION_VALUES = {"source.principal": lambda r: r.principal, "source.namespace": lambda r: r.namespace,
                     "destination.port": lambda r: None if r.port is None else str(r.port)}


def _conditions(when: list, req: Request, allow: bool) -> bool:
    for cond in when or []:
        read = _CONDITION_VALUES.get(cond["key"])
        value = read(req) if read else None
        if value is None:
            if not allow:  # an unknown condition may not hold: the DENY may not apply
                return False
            continue
        if not _field(cond.get("values"), cond.get("notValues"), value, unknown=False):
            return False
    return True


def _rule_matches(rule: dict, req: Request, allow: bool) -> bool:
    froms, tos = rule.get("from"), rule.get("to")
    if froms and not any(_source_matches(f.get("source") or {}, req) for f in froms):
        return False
    if tos and not any(_operation_matches(t.get("operation") or {}, req, allow) for t in tos):
        return False
    return _conditions(rule.get("when"), req, allow)


def _applies(policy: dict, pod: Pod) -> bool:
    spec = policy.get("spec") or {}
    if spec.get("targetRef") or spec.get("targetRefs"):
        return False  # gateways and waypoints, not sidecars
    ns = policy["metadata"].get("namespace")
    if ns not in (pod.namespace, ISTIO_ROOT_NAMESPACE):
        return False
    return selects((spec.get("selector") or {}), pod.labels)


def _authorization_policies(rec: Recording) -> list[dict]:
    return [charts.plain(r.inputs) for r in rec.of_type(AUTHZ)]


def mesh_allows(rec: Recording, req: Request, dest: Pod) -> bool:
    """Istio's order: a matching DENY refuses; then, where any ALLOW policy applies to the
    workload, only a matching one lets the request in; where none applies, it is let in."""
    applying = [p for p in _authorization_policies(rec) if _applies(p, dest)]
    by_action: dict[str, list[dict]] = {}
    for p in applying:
        by_action.setdefault((p.get("spec") or {}).get("action", "ALLOW"), []).append(p)

    def matches(p: dict, allow: bool) -> bool:
        rules = (p.get("spec") or {}).get("rules")
        return bool(rules) and any(_rule_matches(r, req, allow) for r in rules)

    if any(matches(p, allow=False) for p in by_action.get("DENY", [])):
        return False
    allows = by_action.get("ALLOW", [])
    return not allows or any(matches(p, allow=True) for p in allows)


def mesh_admits(rec: Recording, source_principal: str, dest_ns: str, port: Optional[int] = None,
                path: Optional[str] = None, method: Optional[str] = None) -> bool:
    """Would some workload of `dest_ns` let `source_principal` in (on `port`, `path`, `method`,
    or some request where not stated)?"""
    req = Request(source_principal, port, path, method)
    return any(mesh_allows(rec, req, pod) for pod in pods_of(rec, dest_ns))
