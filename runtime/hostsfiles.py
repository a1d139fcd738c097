"""This host's runtime containers' hosts files, rewritten from the records, with their peers on
other hosts: one code path for the CLI and for the daemon.

The CLI rewrites them when a container runs, stops, connects or execs (runtime/containers.py),
reading other hosts' endpoints through the daemon. The daemon rewrites them when an endpoint of
another host on one of their multi-host networks comes or goes (agent/peer_names.py), reading
the same records from the store directly. Both render with ``hosts.render_all`` from the same
inputs, so neither undoes the other, and both hold the runtime's state lock while they write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from client.engine import NAMES_OPTION
from runtime import hosts
from runtime.state import STATUS_RUNNING, ContainerConfig, ContainerState, StateStore

MULTI_HOST_DRIVER = "cnmkit-vxlan"       # networks whose endpoints on other hosts are peers too


def member(config: ContainerConfig, state: ContainerState) -> hosts.Member:
    """What name resolution needs of a container (the runtime's hosts index keeps no more than this).

    The endpoint id tells this host's own endpoints apart from other hosts' in a network's list."""
    keep = ("network_id", "endpoint_id", "address", "address_v6", "aliases")
    return hosts.Member(config.name, config.hostname,
                        tuple({k: a.get(k) for k in keep if a.get(k) is not None} for a in state.attachments))


def local_members(store: StateStore) -> dict[str, hosts.Member]:
    """Every container with attachments or running (those starting included: a new container knows
    its peers before its command starts); the caller holds the state lock."""
    members: dict[str, hosts.Member] = {}
    for cid in store.ids():
        with contextlib.suppress(OSError, ValueError):
            config, state = store.load_config(cid), store.load_state(cid)
            if state.attachments or state.status == STATUS_RUNNING:
                members[cid] = member(config, state)
    return members


def remote_members(network_id: str, endpoints: Iterable[Mapping[str, Any]], ours: set[str]
                   ) -> dict[str, hosts.Member]:
    """A multi-host network's endpoints (records as ``network inspect`` lists them) that are not
    ``ours`` and carry the names a runtime gave them (engine NAMES_OPTION), as hosts members."""
    out: dict[str, hosts.Member] = {}
    for ep in endpoints:
        given = str((ep.get("Options") or {}).get(NAMES_OPTION, "")).split(",")
        if ep.get("EndpointID") in ours or not given[0]:
            continue
        att = {"network_id": network_id, "address": ep.get("Address", ""),
               "address_v6": ep.get("AddressIPv6", ""), "aliases": given[2:]}
        out[f"remote:{ep.get('EndpointID')}"] = hosts.Member(given[0], given[1] if len(given) > 1 else "", (att,))
    return out


def our_endpoints(members: Mapping[str, hosts.Member]) -> set[str]:
    return {str(att["endpoint_id"]) for m in members.values() for att in m.attachments if att.get("endpoint_id")}


def rewrite(store: StateStore, local: dict[str, hosts.Member], remote: dict[str, hosts.Member]) -> list[str]:
    """Write the hosts file of every ``local`` member whose content changed; the ids written.
    The caller holds the state lock."""
    written = []
    for cid, text in hosts.render_all({**local, **remote}, only=list(local)).items():
        path = store.path(cid, "hosts")
        with contextlib.suppress(OSError):
            with open(path) as fh:
                if fh.read() == text:
                    continue                          # unchanged: spare the write
        with contextlib.suppress(OSError):
            hosts.write_in_place(path, text)
            written.append(cid)
    return written
