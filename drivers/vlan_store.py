"""The VLAN driver's records: which network uses which parent and VID, who uses a sub-interface.

Docker's CreateNetwork carries only the options, and a VID may come from a pool, so the choice
must live somewhere a restarted daemon (and the other hosts on a shared store) can read it. The
store is the truth here as everywhere in cnmkit; every write is one compare-and-swap txn:

- ``vlan/bindings/<network>``       {parent, vid, link, host}: this network's VLAN;
- ``vlan/links/<host>/<link>``      {users: [network...]}: the users of one sub-interface of one
  host, its reference count; a second network on the same parent and VID is refused here;
- ``vlan/vids/<vid>/<network>``     {host}: every VID in use anywhere, so a VID from the pool is
  one no network of the cluster uses (explicit VIDs may repeat across hosts: that is one VLAN
  reaching several hosts);
- ``claims/vlan``                   bumped by every binding: two pool choices made at once on a
  stale view cannot both commit (the manager's ``claims/subnets`` pattern).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drivers.errors import Conflict
from store.base import Cmp, Delete, Put, Store
from store.records import decode, encode, next_claim

BINDINGS = "vlan/bindings/"
LINKS = "vlan/links/"
VIDS = "vlan/vids/"
CLAIMS = "claims/vlan"
ATTEMPTS = 200


@dataclass(frozen=True)
class Binding:
    parent: str
    vid: int
    link: str


class VlanClaims:
    """Bindings of networks to (parent, VID) and the reference counts of sub-interfaces."""

    def __init__(self, store: Store, host_id: str = "") -> None:
        self.store = store
        self.host_id = host_id

    def _link_key(self, link: str) -> str:
        return f"{LINKS}{self.host_id or '-'}/{link}"

    @staticmethod
    def _vid_key(vid: int, network_id: str) -> str:
        return f"{VIDS}{vid:04d}/{network_id}"

    def binding(self, network_id: str) -> Binding | None:
        kv = self.store.get(BINDINGS + network_id)
        if kv is None:
            return None
        rec = decode(kv.value)
        return Binding(parent=str(rec["parent"]), vid=int(rec["vid"]), link=str(rec["link"]))

    def users(self, link: str) -> list[str]:
        kv = self.store.get(self._link_key(link))
        return list(decode(kv.value).get("users") or []) if kv else []

    def used_vids(self) -> set[int]:
        kvs, _ = self.store.list(VIDS)
        return {int(kv.key[len(VIDS):].partition("/")[0]) for kv in kvs}

    def bind(self, network_id: str, parent: str, vid: int | None, vid_range: tuple[int, int],
             link_name: Callable[[str, int], str]) -> tuple[Binding, bool]:
        """Record this network's parent and VID (chosen from ``vid_range`` when None): (binding, new).

        A network already bound gets its binding back unchanged (a retried create, a restart).
        """
        for _ in range(ATTEMPTS):
            found = self.binding(network_id)
            if found is not None:
                return found, False
            claims = self.store.get(CLAIMS)          # first: see the module docstring
            chosen = vid if vid is not None else self._pick(vid_range)
            link = link_name(parent, chosen)
            link_kv = self.store.get(self._link_key(link))
            users = list(decode(link_kv.value).get("users") or []) if link_kv else []
            if users:
                raise Conflict(f"parent {parent} VID {chosen} already backs network {users[0][:12]} "
                               f"(sub-interface {link}): one parent and VID carry one network")
            binding = {"parent": parent, "vid": chosen, "link": link, "host": self.host_id}
            result = self.store.txn(
                [Cmp(CLAIMS, claims.mod_rev if claims else 0), Cmp(BINDINGS + network_id, 0),
                 Cmp(self._link_key(link), link_kv.mod_rev if link_kv else 0)],
                [Put(CLAIMS, next_claim(claims)), Put(BINDINGS + network_id, encode(binding)),
                 Put(self._link_key(link), encode({"users": [*users, network_id]})),
                 Put(self._vid_key(chosen, network_id), encode({"host": self.host_id}))])
            if result.succeeded:
                return Binding(parent=parent, vid=chosen, link=link), True
        raise Conflict(f"network {network_id[:12]}: other VLAN networks kept being created, try again")

    def _pick(self, vid_range: tuple[int, int]) -> int:
        used = self.used_vids()
        first, last = vid_range
        for candidate in range(first, last + 1):
            if candidate not in used:
                return candidate
        raise Conflict(f"vlan_range: every VID in {first}-{last} is used by a network")

    def unbind(self, network_id: str) -> None:
        """Drop this network's binding and its reference to the sub-interface; absent is fine."""
        for _ in range(ATTEMPTS):
            kv = self.store.get(BINDINGS + network_id)
            if kv is None:
                return
            rec = decode(kv.value)
            link_key = self._link_key(str(rec["link"]))
            link_kv = self.store.get(link_key)
            users = [u for u in (decode(link_kv.value).get("users") or [] if link_kv else []) if u != network_id]
            ops: list[Put | Delete] = [Delete(BINDINGS + network_id),
                                       Delete(self._vid_key(int(rec["vid"]), network_id))]
            ops.append(Put(link_key, encode({"users": users})) if users else Delete(link_key))
            result = self.store.txn([Cmp(BINDINGS + network_id, kv.mod_rev),
                                     Cmp(link_key, link_kv.mod_rev if link_kv else 0)], ops)
            if result.succeeded:
                return
        raise Conflict(f"network {network_id[:12]}: its VLAN records kept changing, try again")
