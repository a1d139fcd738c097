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
    - ``etcd://host:port[,host:port...][/root/]``: ``EtcdStore`` on those members of one cluster,
      with every key under the optional ``root`` prefix. Nothing connects here: an unreachable
      cluster surfaces as ``Unavailable`` on the first call, within a bounded time.
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
        from store.etcd import EtcdStore, parse_endpoints

        hosts, _, root = url.split("://", 1)[1].partition("/")
        try:
            endpoints = parse_endpoints(hosts)
        except ValueError as err:
            raise ValueError(f"{err} in store URL {url!r} (expected etcd://h1:2379,h2:2379,h3:2379)") from None
        return EtcdStore(endpoints, root=root)
    raise ValueError(f"unknown store URL scheme {scheme!r} in {url!r}; expected sqlite, memory or etcd")
