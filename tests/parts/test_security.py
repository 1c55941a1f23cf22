"""Who may call what, where a real part judges it: the objects that redirect HTTP and route the
ACME challenge validate against the Gateway API's and Istio's published schemas (tests/crd). The rest of the gateway's
and the keys' checks: tests/program/test_security.py."""

from tests.program.test_security import acme  # noqa: F401 (the module's fixture)


def test_tls_objects_match_their_schemas(acme):
    """The Gateway, both routes, the HTTP-only Istio Gateway kept for the move from it and the
    IngressClass validate (the Gateway API's and Istio's published schemas; Kubernetes' for the
    IngressClass)."""
    import kubernetes_validate

    from tests.parts.test_crd_schemas import custom_resources, validate
    from tests.program.test_schemas import manifest

    objects = [o for o in custom_resources(acme) if o["kind"] in ("Gateway", "HTTPRoute")]
    assert sorted((o["apiVersion"], o["kind"]) for o in objects) == [
        ("gateway.networking.k8s.io/v1", "Gateway"), ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"), ("networking.istio.io/v1", "Gateway")]
    assert validate(objects) == [None] * len(objects)
    kubernetes_validate.validate(manifest(acme.one("kubernetes:networking.k8s.io/v1:IngressClass").inputs),
                                 "1.33", strict=True)
