#!/usr/bin/env python3
"""Make sure a model file is present: download it only when absent, to a temporary name,
verify the expected size and sha256, then rename it into place.

Standard library only: it runs with the host's python3 before any virtualenv exists.
Exit status 0 when the file is in place, 1 (with one line on stderr) otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request

CHUNK = 1 << 20


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str, size: int | None, sha256: str | None) -> str | None:
    """Return what is wrong with the file, or None."""
    actual_size = os.path.getsize(path)
    if size is not None and actual_size != size:
        return f"size is {actual_size} bytes, expected {size}"
    if sha256 is not None and sha256_of(path) != sha256:
        return "sha256 does not match"
    return None


def download(url: str, dest: str) -> str:
    folder = os.path.dirname(dest) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, CHUNK)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def ensure(dest: str, url: str | None, size: int | None, sha256: str | None) -> str:
    """Return 'present' or 'downloaded'; raise RuntimeError with a one-line reason."""
    if os.path.isfile(dest):
        # Size only: hashing a multi-GB file on every `up` would be slow; the hash was
        # checked when the file was downloaded.
        problem = verify(dest, size, None)
        if problem:
            raise RuntimeError(f"{dest} exists but its {problem}; delete it to download again")
        return "present"
    if not url:
        raise RuntimeError(f"{dest} is missing and the model has no download URL (set url or hfRepo)")
    try:
        tmp = download(url, dest)
    except OSError as err:
        raise RuntimeError(f"downloading {url} failed: {err}") from None
    problem = verify(tmp, size, sha256)
    if problem:
        os.unlink(tmp)
        raise RuntimeError(f"downloaded {url} but its {problem}; nothing was kept")
    os.replace(tmp, dest)
    return "downloaded"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", required=True, help="final path of the model file")
    parser.add_argument("--url", help="where to download it from when absent")
    parser.add_argument("--size", type=int, help="expected size in bytes")
    parser.add_argument("--sha256", help="expected sha256, hex")
    args = parser.parse_args(argv)
    try:
        outcome = ensure(os.path.expanduser(args.dest), args.url, args.size, args.sha256)
    except RuntimeError as err:
        print(f"fetch_model: {err}", file=sys.stderr)
        return 1
    print(f"{args.dest}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
