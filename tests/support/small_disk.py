"""A disk that fills up for real, and a child process to fill it in.

Two kinds, both a refusal by the operating system, not by our code:

- `tmpfs`: a small tmpfs mounted on the folder in the child's own user and mount namespace (`unshare`, which
  needs no root where unprivileged user namespaces are allowed), filled by a ballast file until the kernel says
  ENOSPC; removing the ballast makes room.
- `fsize`: the child's file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) lowered so that no file in the folder can
  grow (EFBIG); raising it makes room. Works on any Linux.

Scenarios run in the child (a mount is seen only inside its namespace, a limit holds its whole process):
`python -m tests.support.small_disk KIND FOLDER module:function` calls `function(disk, folder)` and prints the dict
it returns as JSON, which `run_in_child` hands back to the test.
"""

from __future__ import annotations

import errno
import functools
import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[2]
TMPFS_BYTES = 2 * 2**20
BALLAST = "ballast"
KINDS = ("tmpfs", "fsize")


class Disk(Protocol):
    def fill(self) -> None: ...
    def free(self) -> None: ...


class Tmpfs:
    """The folder's own small tmpfs (mounted by `child_command`): full once the ballast takes every block."""

    def __init__(self, folder: Path) -> None:
        self.ballast = folder / BALLAST

    def fill(self) -> None:
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, bytes(2**16))
        except OSError as error:
            assert error.errno == errno.ENOSPC, error  # the file system itself is full
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink()


class FileSizeLimit:
    """This process may not grow a file past the size of the smallest one in the folder, so none of them can grow."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing

    def fill(self) -> None:
        smallest = min(size for p in self.folder.iterdir() if (size := p.stat().st_size))
        resource.setrlimit(resource.RLIMIT_FSIZE, (smallest, self.limits[1]))

    def free(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.limits)


def disk(kind: str, folder: Path) -> Disk:
    return Tmpfs(folder) if kind == "tmpfs" else FileSizeLimit(folder)


def tmpfs_command(folder: Path) -> list[str]:
    """Run what follows with `folder` a fresh tmpfs of TMPFS_BYTES, seen by that process and its children only."""
    mount = 'mount -t tmpfs -o size="$0" tmpfs "$1" && shift && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, str(TMPFS_BYTES), str(folder)]


@functools.cache
def tmpfs_possible() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in its own namespace."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            done = subprocess.run([*tmpfs_command(Path(folder)), "true"], capture_output=True, timeout=30)
        except OSError:  # no unshare
            return False
    return done.returncode == 0


def run_in_child(
    kind: str, folder: Path, scenario: str, env: dict[str, str] | None = None, timeout: float = 300
) -> dict[str, Any]:
    """Run `scenario` ("module:function") in a child on a small disk of `kind` at `folder`; what it returned."""
    argv = [sys.executable, "-m", "tests.support.small_disk", kind, str(folder), scenario]
    command = [*tmpfs_command(folder), *argv] if kind == "tmpfs" else argv
    done = subprocess.run(
        command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def main(kind: str, folder: str, scenario: str) -> None:
    module, _, name = scenario.partition(":")
    function: Callable[[Disk, Path], dict[str, Any]] = getattr(importlib.import_module(module), name)
    print(json.dumps(function(disk(kind, Path(folder)), Path(folder)), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
