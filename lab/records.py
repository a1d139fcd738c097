"""What a deployed lab made, on disk next to the runtime's container records.

One JSON file per lab under ``<state_dir>/labs/<name>.json``, replaced atomically after every
step of a deploy or destroy, so the record always lists what exists: ``lab ls``, ``lab inspect``
and ``lab destroy --name`` work with the lab file gone or edited, and a deploy cut short is
finished or undone from it. The lab name is a checked RFC 1123 label (lab/names.py), so it is a
safe file name. One ``flock`` serialises deploys and destroys of all labs (two deploys of one
lab must not both start its nodes).

A record: ``{"name", "file", "updated", "items": {KEY: {"kind", "name", "digest", "spec",
"deps", "made"}}}``; KEY is ``KIND:NAME`` (lab/plan.py), ``made`` what the step produced (a
container id, a network id and whether the lab created it, a link's alias).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from lab import names

Record = dict[str, Any]


class LabStore:
    def __init__(self, state_dir: str) -> None:
        self.root = os.path.join(os.path.abspath(state_dir), "labs")

    def _path(self, name: str) -> str:
        if not names.is_label(name):
            raise ValueError(f"lab name {names.shown(name)}: {names.label_rule('lab name')}")
        return os.path.join(self.root, f"{name}.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def names(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(e[:-5] for e in os.listdir(self.root) if e.endswith(".json") and names.is_label(e[:-5]))

    def load(self, name: str) -> Record | None:
        try:
            with open(self._path(name)) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def save(self, record: Record) -> None:
        path = self._path(record["name"])
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record, sort_keys=True))   # dumps, no indent: the C encoder (big labs)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def images_dir(self, name: str) -> str:
        """Where the lab's image tarballs are unpacked (one directory per content hash)."""
        return self._path(name)[:-len(".json")] + ".images"

    def delete(self, name: str) -> None:
        shutil.rmtree(self.images_dir(name), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))
