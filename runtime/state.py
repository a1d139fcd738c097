"""Container records on disk: one directory per container under ``<state_dir>/containers``.

Files rather than the plugin's key-value store, because the runtime must keep working (ps,
logs, rm) when the daemon is down, and because the supervisor, a separate process, has to record an
exit code without talking to anyone. Every mutation of the set of containers happens under one
``flock`` on ``containers/.lock`` so that concurrent CLIs cannot give two containers the same
name or the same next ethN; state.json is replaced atomically (write + rename) so a reader never
sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

STATUS_CREATED = "created"
STATUS_RUNNING = "running"
STATUS_EXITED = "exited"


@dataclass
class NetworkRequest:
    """One ``--network NET[,ip=ADDR][,alias=NAME]``: kept so ``start`` can re-attach the same way."""

    network: str
    ip: str | None = None
    ip6: str | None = None
    aliases: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> NetworkRequest:
        parts = [p for p in text.split(",") if p]
        if not parts or "=" in parts[0]:
            raise ValueError(f"bad --network {text!r}: expected NET[,ip=ADDR][,alias=NAME]")
        req = cls(network=parts[0])
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise ValueError(f"bad --network option {part!r}: expected key=value")
            if key == "ip":
                req.ip = value
            elif key == "ip6":
                req.ip6 = value
            elif key == "alias":
                req.aliases.append(value)
            else:
                raise ValueError(f"bad --network option {key!r}: known are ip, ip6, alias")
        return req


@dataclass
class ContainerConfig:
    """What the user asked for; never changes after ``run`` except the network list (connect)."""

    id: str
    name: str
    command: list[str]
    hostname: str
    networks: list[NetworkRequest] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    rootfs: str | None = None
    detach: bool = False
    created: float = 0.0
    plugin_dir: str = ""          # where the supervisor finds the daemon to release endpoints on exit
    run_dir: str = ""             # parent of netns/<id>

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerConfig:
        d = dict(d)
        d["networks"] = [NetworkRequest(**n) for n in d.get("networks", [])]
        return cls(**d)


@dataclass
class ContainerState:
    """What is true now. ``attachments`` are ``Attachment.to_dict()`` plus ``ifname`` and ``aliases``."""

    status: str = STATUS_CREATED
    pid: int = 0                 # host pid of the user's command (what ``kill -9`` from outside targets)
    init_pid: int = 0            # host pid of the container's PID 1 (namespaces are taken from it)
    init_start: int = 0          # its start time, so a recycled pid is not mistaken for it
    shim_pid: int = 0            # the supervisor of its batch (shared by the batch's containers)
    shim_start: int = 0          # the supervisor's start time (pid reuse)
    exit_code: int | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str = ""
    netns: str = ""
    attachments: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerState:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def new_id() -> str:
    return secrets.token_hex(32)


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class StateStore:
    """The container directory tree of one state dir."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(os.path.abspath(state_dir), "containers")
        os.makedirs(self.root, exist_ok=True)

    # -- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock over every container record (names, network membership, hosts files)."""
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- paths --------------------------------------------------------------------------------
    def dir(self, cid: str) -> str:
        return os.path.join(self.root, cid)

    def path(self, cid: str, name: str) -> str:
        return os.path.join(self.root, cid, name)

    def log_path(self, cid: str) -> str:
        return self.path(cid, "container.log")

    # -- records ------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(e for e in os.listdir(self.root)
                      if not e.startswith(".") and os.path.isfile(self.path(e, "config.json")))

    def create(self, config: ContainerConfig, state: ContainerState | None = None) -> None:
        """Make the record (with ``state``, a fresh one by default); the caller holds the lock and
        has checked the name is free."""
        os.makedirs(self.dir(config.id), mode=0o700)
        for fname in ("hosts", "resolv.conf", "hostname", "container.log"):
            open(self.path(config.id, fname), "a").close()
        self.save_state(config.id, state or ContainerState())
        _atomic_write(self.path(config.id, "config.json"), json.dumps(asdict(config), indent=2))

    def save_config(self, config: ContainerConfig) -> None:
        _atomic_write(self.path(config.id, "config.json"), json.dumps(asdict(config), indent=2))

    def load_config(self, cid: str) -> ContainerConfig:
        with open(self.path(cid, "config.json")) as fh:
            return ContainerConfig.from_dict(json.load(fh))

    def load_state(self, cid: str) -> ContainerState:
        try:
            with open(self.path(cid, "state.json")) as fh:
                return ContainerState.from_dict(json.load(fh))
        except FileNotFoundError:
            return ContainerState()

    def save_state(self, cid: str, state: ContainerState) -> None:
        _atomic_write(self.path(cid, "state.json"), json.dumps(asdict(state), indent=2))

    def delete(self, cid: str) -> None:
        shutil.rmtree(self.dir(cid), ignore_errors=True)

    def find(self, ref: str) -> str | None:
        """Resolve a name, a full id or a unique id prefix (as docker does) to an id."""
        ids = self.ids()
        if ref in ids:
            return ref
        for cid in ids:
            try:
                if self.load_config(cid).name == ref:
                    return cid
            except (OSError, ValueError):
                continue
        matches = [cid for cid in ids if len(ref) >= 4 and cid.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def name_taken(self, name: str) -> bool:
        return any(self._name_of(cid) == name for cid in self.ids())

    def _name_of(self, cid: str) -> str | None:
        try:
            return self.load_config(cid).name
        except (OSError, ValueError):
            return None
