"""The suite's own network namespace: only a loopback interface, so nothing a test starts — a
control plane that dials webhook and pod addresses, LiteLLM looking for its price list, a
load generator — can reach any address off this machine.

`isolate()` moves the calling thread (and every process and thread it starts afterwards) into a
new network namespace and brings its loopback up. It must run before the suite starts any thread
or server: namespaces are per thread, and a thread started earlier stays outside.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from typing import Optional

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
# Set to "0" to run without one (e.g. to debug against a real cluster); the engine tests then skip.
ENV = "LLM_PLATFORM_NETNS"

_state: dict[str, Optional[str]] = {"isolated": None, "why_not": None}


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def isolate() -> None:
    if os.environ.get(ENV) == "0":
        _state["why_not"] = f"{ENV}=0: the suite runs in the machine's own network namespace"
        return
    if os.environ.get(ENV) == "inside":
        _state["isolated"] = "inherited"
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        _state["why_not"] = (f"cannot make a network namespace ({os.strerror(err)}): run the suite as root, "
                             f"or as `unshare -rn` with {ENV}=inside")
        return
    _loopback_up()
    os.environ[ENV] = "inside"
    _state["isolated"] = "made"


def why_not_isolated() -> Optional[str]:
    """None when the suite runs in a network namespace of its own; else why not, in one line."""
    return None if _state["isolated"] else (_state["why_not"] or "tests.netns.isolate() was not called")
