"""A stand-in for the `random` resource plugin, for the engine tests only.

pulumi-random's provider is bridged from a Terraform provider whose code sits in `internal/`
packages, and the Go module proxy serves no release of it, so it cannot be built here. The
program uses one of its resources, `RandomPassword`; this plugin implements that resource's
contract as the engine sees it: inputs are checked and echoed, `result` is generated once on
create and kept in state, every input change replaces the resource (all of its arguments force
a new password upstream), refresh reads back what state holds, delete forgets it.

The engine starts it like any plugin (`pulumi-resource-random` on PATH) and reads the port it
prints; it speaks the ResourceProvider gRPC service from the Pulumi SDK's own stubs.
"""

from __future__ import annotations

import secrets
import string
import sys
from concurrent import futures

import grpc
from google.protobuf import empty_pb2, struct_pb2
from google.protobuf.json_format import MessageToDict
from pulumi.runtime.proto import plugin_pb2, provider_pb2, provider_pb2_grpc

VERSION = "0.0.0-engine-tests"
TOKEN = "random:index/randomPassword:RandomPassword"
DEFAULTS = {"lower": True, "upper": True, "numeric": True, "special": True,
            "minLower": 0, "minUpper": 0, "minNumeric": 0, "minSpecial": 0}
SPECIAL = "!@#$%&*()-_=+[]{}<>:?"


def _dict(s: struct_pb2.Struct) -> dict:
    return MessageToDict(s, preserving_proto_field_name=True) if s is not None else {}


def _struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _inputs(props: dict) -> dict:
    out = {**DEFAULTS, **{k: v for k, v in props.items() if k not in ("result", "bcryptHash", "id")}}
    # The Terraform schema spells "numeric" and its deprecated twin "number"; keep them equal.
    if "number" in props and "numeric" not in props:
        out["numeric"] = props["number"]
    out["number"] = out["numeric"]
    for key in ("length", "minLower", "minUpper", "minNumeric", "minSpecial"):
        if key in out:
            out[key] = int(out[key])
    return out


def generate(inputs: dict) -> str:
    sets = [(string.ascii_lowercase, inputs["lower"], inputs["minLower"]),
            (string.ascii_uppercase, inputs["upper"], inputs["minUpper"]),
            (string.digits, inputs["numeric"], inputs["minNumeric"]),
            (inputs.get("overrideSpecial") or SPECIAL, inputs["special"], inputs["minSpecial"])]
    chars = [secrets.choice(cs) for cs, on, least in sets if on for _ in range(least)]
    pool = "".join(cs for cs, on, _ in sets if on)
    chars += [secrets.choice(pool) for _ in range(inputs["length"] - len(chars))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


class RandomProvider(provider_pb2_grpc.ResourceProviderServicer):
    def GetPluginInfo(self, request, context):
        return plugin_pb2.PluginInfo(version=VERSION)

    def GetSchema(self, request, context):
        return provider_pb2.GetSchemaResponse(schema="{}")

    def CheckConfig(self, request, context):
        return provider_pb2.CheckResponse(inputs=request.news)

    def DiffConfig(self, request, context):
        return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_NONE)

    def Configure(self, request, context):
        return provider_pb2.ConfigureResponse(acceptSecrets=False, supportsPreview=True)

    def _only_password(self, urn: str, context):
        if f"{TOKEN}::" not in urn:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"this stand-in serves only {TOKEN}, not {urn}")

    def Check(self, request, context):
        self._only_password(request.urn, context)
        news = _inputs(_dict(request.news))
        failures = []
        if not isinstance(news.get("length"), int) or news["length"] < 1:
            failures.append(provider_pb2.CheckFailure(property="length", reason="expected a length of at least 1"))
        elif sum(news[k] for k in ("minLower", "minUpper", "minNumeric", "minSpecial")) > news["length"]:
            failures.append(provider_pb2.CheckFailure(property="length", reason="shorter than the minimums asked"))
        return provider_pb2.CheckResponse(inputs=_struct(news), failures=failures)

    def Diff(self, request, context):
        olds, news = _inputs(_dict(request.olds)), _inputs(_dict(request.news))
        changed = sorted(k for k in set(olds) | set(news) if olds.get(k) != news.get(k))
        if not changed:
            return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_NONE)
        return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_SOME, diffs=changed,
                                         replaces=changed, deleteBeforeReplace=False)

    def Create(self, request, context):
        inputs = _inputs(_dict(request.properties))
        if request.preview:
            return provider_pb2.CreateResponse(id="", properties=_struct(inputs))
        return provider_pb2.CreateResponse(id="none", properties=_struct({**inputs, "result": generate(inputs)}))

    def Read(self, request, context):
        return provider_pb2.ReadResponse(id=request.id, properties=request.properties, inputs=request.inputs)

    def Update(self, request, context):
        context.abort(grpc.StatusCode.INTERNAL, "RandomPassword is replaced on every change, never updated")

    def Delete(self, request, context):
        return empty_pb2.Empty()

    def Cancel(self, request, context):
        return empty_pb2.Empty()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    provider_pb2_grpc.add_ResourceProviderServicer_to_server(RandomProvider(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
