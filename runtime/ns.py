"""The few Linux syscalls the runtime needs that Python 3.11's ``os`` module lacks.

Python 3.12 grew ``os.unshare``/``os.setns``; on 3.11 we call libc through ctypes. Kept in one
module so the rest of the runtime reads like ordinary Python and errors carry errno text.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, 155)

# The libc this interpreter already has loaded (CDLL(None)): no ctypes.util, whose library search
# costs ~20 ms of imports in every shim start.
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def setns_path(path: str, nstype: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, nstype)
    finally:
        os.close(fd)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    ret = _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                      ctypes.c_ulong(flags), data.encode() if data else None)
    _check(ret, f"mount {source} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), new_root.encode(), put_old.encode()), "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def mount_points_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix`` in this mount namespace, deepest first (for unmounting)."""
    prefix = prefix.rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


@contextlib.contextmanager
def entered(path: str, nstype: int = CLONE_NEWNET) -> Iterator[None]:
    """The calling thread inside the namespace at ``path`` for the body, then back home.

    drivers/kernel.entered_netns does the same for the network namespace, but importing that
    module loads pyroute2 (~0.2 s): a lab of bridges and nodes is deployed without it.
    """
    kind = {CLONE_NEWNET: "net", CLONE_NEWUTS: "uts", CLONE_NEWNS: "mnt"}[nstype]
    home = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_path(path, nstype)
        try:
            yield
        finally:
            setns(home, nstype)
    finally:
        os.close(home)
