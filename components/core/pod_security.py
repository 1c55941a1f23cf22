"""Pod Security Admission: the namespace labels every component writes the same way."""


def pod_security_labels(enforce: str) -> dict[str, str]:
    """Pod Security Admission labels: enforce `enforce`, and warn and audit at restricted."""
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("warn", "audit")}
    labels["pod-security.kubernetes.io/enforce"] = enforce
    return labels
