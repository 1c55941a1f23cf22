"""The llm-platform policy pack: `pulumi preview --policy-pack policy`."""

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

import rules


def _resource_policy(name: str, check, mandatory: bool) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report: ReportViolation):
        check(args.resource_type, args.props, report, urn=args.urn, config=args.get_config())

    return ResourceValidationPolicy(
        name=name,
        description=check.__doc__.strip().splitlines()[0],
        enforcement_level=EnforcementLevel.MANDATORY if mandatory else EnforcementLevel.ADVISORY,
        validate=validate,
        config_schema=PolicyConfigSchema(properties={"acceleratorsByStack": {"type": "object"}})
        if name == "model-server-accelerator" else None,
    )


def _stack_policy(name: str, check, mandatory: bool) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report: ReportViolation):
        check([(r.resource_type, r.props) for r in args.resources], report)

    return StackValidationPolicy(
        name=name,
        description=check.__doc__.strip().splitlines()[0],
        enforcement_level=EnforcementLevel.MANDATORY if mandatory else EnforcementLevel.ADVISORY,
        validate=validate,
    )


PolicyPack(
    name="llm-platform",
    policies=[_resource_policy(n, f, m) for n, (f, m) in rules.RESOURCE_RULES.items()]
    + [_stack_policy(n, f, m) for n, (f, m) in rules.STACK_RULES.items()],
)
