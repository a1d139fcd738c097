"""Pick a store backend from one configuration string.

The daemon, the CLI and the tests all name their store the same way (``--store URL``), so that
moving a host from the embedded SQLite file to a shared etcd cluster is a configuration change,
not a code change.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from store.base import Store


def open_store(url: str) -> Store:
    """Open the backend that ``url`` names.

    - ``sqlite:///abs/path/state.db`` or a bare filesystem path: ``SQLiteStore``;
    - ``memory://``: a fresh ``MemoryStore`` (per call: nothing is shared between calls);
    - ``etcd://host:port[,host:port]``: reserved for the etcd backend of a later release.
    """
    if not url:
        raise ValueError("empty store URL")
    if "://" not in url:
        from store.sqlite import SQLiteStore

        return SQLiteStore(os.path.abspath(os.path.expanduser(url)))
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from store.sqlite import SQLiteStore

        path = urlsplit(url).path
        if not path.startswith("/"):
            raise ValueError(f"sqlite store URL needs an absolute path (sqlite:///abs/path.db), got {url!r}")
        return SQLiteStore(path)
    if scheme == "memory":
        from store.memory import MemoryStore

        return MemoryStore()
    if scheme == "etcd":
        raise ValueError(f"etcd store arrives with a later release; use sqlite:///path for now (got {url!r})")
    raise ValueError(f"unknown store URL scheme {scheme!r} in {url!r}; expected sqlite, memory or etcd")
