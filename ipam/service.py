"""IpamDriver operations over a ``Store``: the state machine behind /IpamDriver.* (protocol.md section 3).

Store layout (one record per allocation, design/store.md section 6), ``<id>`` being the PoolID:

- ``ipam/spaces/<space>``      {"generation"}: bumped by every RequestPool of the space, so that two
  hosts creating overlapping pools at once cannot both pass the overlap check (the store compares
  single keys only, never "this prefix is unchanged");
- ``ipam/pools/<id>``          {pool, subpool, v6, address_space, options, cursor, token};
- ``ipam/addrs/<id>/<ip>``     {kind, token[, mac]}: one record per allocated address;
- ``ipam/free/<id>/<offset>``  released offsets below the cursor, fixed-width so key order is numeric.

Why a cursor and a free set instead of a bitmap: allocation then costs O(1) store operations
whatever is allocated and whatever the pool size (a /64 included). The cursor walks the range once;
afterwards the free set's first key is taken. Invariants kept by every transaction:

1. a free key exists only for an in-range offset below the cursor whose address record is absent;
2. the cursor never moves back, and it only moves past an offset whose address record exists
   (the move compares the records of the statics it steps over);
3. nothing under a pool's prefixes is written unless the pool record is unchanged (every
   transaction compares its mod revision), so a released pool cannot gain records behind the
   cleanup, and leftovers of an interrupted cleanup are removed before the same PoolID is reused.

Every write is one store txn with compares, retried on conflict: correct across threads and across
hosts sharing a store. Records carry a random token so that an ``Indeterminate`` commit is settled
by reading the record back (ours or not).

Many hosts on one store (issue 7). Which pools are shared follows Docker's address spaces:

- the **global** space (``GlobalDefaultAddressSpace``) is cluster-wide: its pool is ONE record that
  every host requesting the same Pool/SubPool/V6 references (``hosts``: the hosts holding it, one
  reference each), so a network several hosts share has one allocator and no address is handed out
  twice. ReleasePool drops only the caller's reference and the caller's addresses; the pool and
  whatever is left go with the last reference. A gateway address is shared by the hosts that ask
  for it (``hosts`` on its record) rather than refused as in use;
- every other space (the local default above all) is **per host**, as Docker's local scope is:
  the store id of such a pool carries the host id (``cnmkit-local@<host>/10.1.0.0/24``), so two
  hosts may each hold 10.1.0.0/24 (NATed bridge networks that never route to each other, like
  every host's docker0), and the PoolID Docker sees stays ``cnmkit-local/10.1.0.0/24``. A local pool
  is still refused if it overlaps a global pool, which may reach this host any time.
- an **overlay** space (``cnmkit-overlay.<name>``, chosen by the ``cnmkit.overlay`` option of
  RequestPool, i.e. ``--ipam-opt cnmkit.overlay=<name>``) is shared like the global one: every
  host's dockerd asking for the overlay's pool gets the same PoolID, one allocator, one gateway. Its
  pools only clash with pools of the same overlay: each overlay lives in network namespaces of its
  own (drivers/vxlan.py), so two overlays, or an overlay and a bridge, may use one subnet. A
  RequestPool without a Pool in an overlay that has one joins it (the second host need not repeat
  ``--subnet``).
- every address record names its host (``host``): a host never releases another's addresses, and
  a host whose lease expired has them reclaimed after a grace period (``reclaim_host``), each txn
  comparing the dead host's record with "absent", so a host that is back keeps what it had.

A service made without a host id (``host_id=""``, unit tests and single-host use) keeps the keys
of a store written before hosts existed.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from netaddr import IPAddress, IPNetwork

from ipam.allocator import (
    PoolSpec,
    find_overlap,
    make_pool_spec,
    offset_key,
    parse_address,
    parse_cidr,
    parse_offset_key,
)
from ipam.errors import (
    AddressInUse,
    AddressOutOfPool,
    InvalidRequest,
    PoolExhausted,
    PoolNotFound,
    PoolOverlap,
    StoreContention,
)
from ipam.pools import (
    DEFAULT_ADDRESS_SPACES,
    GLOBAL_ADDRESS_SPACE,
    OVERLAY_NAME_RE,
    OVERLAY_OPTION,
    OVERLAY_SPACE_PREFIX,
    is_overlay_space,
    is_shared_space,
    overlay_space,
    pick_predefined,
)
from plugin.quoting import shown
from store.base import KV, MAX_TXN_OPS, Cmp, Delete, Indeterminate, Put, Store, TxnResult
from store.lru import Lru
from store.records import Record, TxnBuilder, decode

SPACES = "ipam/spaces/"
POOLS = "ipam/pools/"
ADDRS = "ipam/addrs/"
FREE = "ipam/free/"

GATEWAY_OPTION = "RequestAddressType"
GATEWAY_LABEL = "com.docker.network.gateway"
MAC_OPTION = "com.docker.network.endpoint.macaddress"
# ``--ipam-opt cnmkit.space=NAME``: the pool lives in address space NAME instead of the one dockerd
# names (it always sends its default). Pools of different spaces never clash with each other, only
# with the global space's: two VLAN segments carrying one subnet each take a space of their own
# (``cnmkit network create -d vlan`` does it for you). The PoolID carries the space, so every later
# call (RequestAddress, ReleasePool) finds the pool without the option.
SPACE_OPTION = "cnmkit.space"

# Statics stepped over per txn: each adds a compare, and etcd counts compares in --max-txn-ops.
MAX_SKIP = 32
BATCH_MAX = 32  # dynamic allocations per txn in request_addresses (each a create op)
POOL_LOCK_STRIPES = 64  # in-process locks pools are hashed onto (see IpamService._pool_lock)
MAX_ATTEMPTS = 2000  # CAS rounds before giving up; only reached under pathological contention
CACHED_POOLS = 1024  # pool records kept between calls (IpamService._pools)
CACHED_ADDRESSES = 4096  # revisions of this host's own address records kept (IpamService._addrs)
_SPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _public_id(store_id: str) -> str:
    """``cnmkit-local@h1/10.1.0.0/24`` -> ``cnmkit-local/10.1.0.0/24``: the PoolID Docker knows."""
    space, _, cidr = store_id.partition("/")
    return f"{space.partition('@')[0]}/{cidr}"


def _store_host(store_id: str) -> str | None:
    """The host a per-host pool belongs to (None: a shared or legacy key)."""
    space = store_id.partition("/")[0]
    return space.partition("@")[2] if "@" in space else None


class _Pool:
    """A pool record as read, with the mod revision every write to the pool compares against.

    ``id`` is the store id (keys are built from it), ``pool_id`` the PoolID Docker knows.
    """

    def __init__(self, pool_id: str, record: Record, mod_rev: int) -> None:
        self.id = pool_id
        self.pool_id = _public_id(pool_id)
        self.record = record
        self.mod_rev = mod_rev
        pool = IPNetwork(record["pool"])
        self.spec = PoolSpec(pool, IPNetwork(record["subpool"]) if record.get("subpool") else None)
        self.cursor: int = int(record["cursor"])

    @property
    def key(self) -> str:
        return POOLS + self.id

    def addr_key(self, addr: IPAddress) -> str:
        return f"{ADDRS}{self.id}/{addr}"

    def free_key(self, offset: int) -> str:
        return f"{FREE}{self.id}/{offset_key(offset)}"

    def with_cursor(self, cursor: int) -> Record:
        return {**self.record, "cursor": cursor}


def _attempts() -> Iterator[int]:
    """Retry rounds with a jittered, capped backoff, so contending writers do not collide in step."""
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0, min(0.02, 0.0005 * 2 ** min(attempt, 6))))
        yield attempt


class IpamService:
    """Synchronous IPAM over a shared store; the HTTP layer maps its values and errors to JSON."""

    def __init__(self, store: Store, avoid: Callable[[], list[IPNetwork]] = lambda: [], *,
                 host_id: str = "") -> None:
        self._store = store
        self._avoid = avoid
        self.host_id = host_id
        self._pool_locks = tuple(threading.Lock() for _ in range(POOL_LOCK_STRIPES))
        # The last pool record seen, and the mod revision of each address record this service
        # created, so that an allocation or a release is one transaction and not three reads
        # and a transaction. Only hints: every write compares the revisions they give, a write
        # touching a pool forgets it (``_txn``), and a lost compare falls back to reading.
        self._pools: Lru[str, _Pool] = Lru(CACHED_POOLS)
        self._addrs: Lru[str, int] = Lru(CACHED_ADDRESSES)

    def _pool_lock(self, sid: str) -> threading.Lock:
        """Orders this process's own writes to one pool, so its threads queue instead of racing.

        Correctness never rests on it (every write is a compare-and-swap, as across processes and
        hosts): it only spares the CAS retry storm of many concurrent requests on one pool's
        cursor, each failed round a wasted transaction plus a backoff sleep holding a worker.
        Striped, so ids from any input add nothing that grows.
        """
        return self._pool_locks[hash(sid) % POOL_LOCK_STRIPES]

    # -- which pools are whose --------------------------------------------------------------------

    def _sid(self, pool_id: str) -> str:
        """The store id of a PoolID: global pools are shared, the others carry this host's id."""
        space, _, cidr = pool_id.partition("/")
        if is_shared_space(space) or not self.host_id:
            return pool_id
        return f"{space}@{self.host_id}/{cidr}"

    def _resolve(self, pool_id: str) -> str:
        """``_sid``, except that a local pool a store kept from before host ids is found under its
        bare PoolID (it was this machine's: a store had one host then)."""
        sid = self._sid(pool_id)
        if sid == pool_id or self._pools.get(sid) is not None:
            return sid
        if self._load(sid) is None and self._store.get(POOLS + pool_id):
            return pool_id
        return sid

    def _space_key(self, space: str) -> str:
        return SPACES + (space if is_shared_space(space) or not self.host_id
                         else f"{space}@{self.host_id}")

    def _visible(self, store_id: str) -> bool:
        """Pools this host sees: the shared ones and its own per-host ones."""
        if store_id.startswith((GLOBAL_ADDRESS_SPACE + "/", OVERLAY_SPACE_PREFIX)):
            return True
        return _store_host(store_id) in (self.host_id or None, None)  # None: from before host ids

    # -- discovery -----------------------------------------------------------------------------

    def capabilities(self) -> dict[str, bool]:
        # No replay: every allocation is persisted, and replay would re-request addresses we hold.
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def default_address_spaces(self) -> dict[str, str]:
        return dict(DEFAULT_ADDRESS_SPACES)

    # -- pools ---------------------------------------------------------------------------------

    def request_pool(self, address_space: str, pool: str, sub_pool: str,
                     options: dict[str, str] | None, v6: bool) -> tuple[str, str, dict[str, str]]:
        """Reserve ``pool`` (or the next free predefined one) in ``address_space``: (PoolID, CIDR, Data)."""
        space = _check_space(address_space)
        opts = _check_options(options)
        if SPACE_OPTION in opts:
            space = _named_space(opts[SPACE_OPTION])
        if opts.get(OVERLAY_OPTION):
            space = overlay_space(_check_overlay(opts[OVERLAY_OPTION]))
        if not isinstance(v6, bool):
            raise InvalidRequest("V6", f"{shown(v6)} is not a boolean")
        if sub_pool is None:
            sub_pool = ""
        spec: PoolSpec | None = None
        if pool:
            spec = make_pool_spec(pool, sub_pool, v6)
        elif sub_pool:
            raise InvalidRequest("SubPool", f"{shown(sub_pool)} given without a Pool")
        # A default route (prefix 0) overlaps everything, and Docker ignores it too.
        avoid = [] if spec else [n for n in self._avoid() if n.prefixlen > 0]
        shared = is_shared_space(space)
        overlay = is_overlay_space(space)
        for _ in _attempts():
            space_kv = self._store.get(self._space_key(space))
            generation = decode(space_kv.value)["generation"] if space_kv else 0
            held = self._held_pools()
            visible = [(sid, n) for sid, n, _ in held if self._visible(sid)]
            if spec is None and overlay:
                # The second host's create need not repeat --subnet: the overlay's pool is joined.
                existing = next((kv for s, n, kv in held if s.startswith(space + "/") and (n.version == 6) == v6),
                                None)
                if existing is not None:
                    joined = self._join_shared(existing, make_pool_spec(decode(existing.value)["pool"],
                                                                        decode(existing.value)["subpool"], v6),
                                               opts)
                    if joined is None:
                        continue
                    return joined
            if spec is None:
                # A shared pool will be used on every host: it avoids every host's pools.
                net = pick_predefined(v6, [n for _, n, _ in held] if shared else [n for _, n in visible], avoid)
                chosen = PoolSpec(net)
            else:
                sid = self._sid(f"{space}/{spec.pool.cidr}")
                same = next((kv for s, _, kv in held if s == sid), None)
                if shared and same is not None:
                    joined = self._join_shared(same, spec, opts)
                    if joined is None:
                        continue
                    return joined
                mine = [(s, n) for s, n in visible
                        if s.partition("/")[0].partition("@")[0] == space
                        or (not overlay and s.startswith(GLOBAL_ADDRESS_SPACE + "/"))]
                clash = find_overlap(spec.pool, mine)
                if clash:
                    raise PoolOverlap(str(spec.pool.cidr), str(clash[1].cidr), _public_id(clash[0]))
                chosen = spec
            pool_id = f"{space}/{chosen.pool.cidr}"
            sid = self._sid(pool_id)
            self._purge(sid)
            record = _pool_record(chosen, space, opts)
            if shared:
                record["hosts"] = [self.host_id]
            txn = (TxnBuilder().replace(self._space_key(space), {"generation": generation + 1},
                                        space_kv.mod_rev if space_kv else 0)
                   .create(POOLS + sid, record))
            if self._commit(txn, POOLS + sid, record["token"]):
                return pool_id, record["pool"], {}
        raise StoreContention(f"RequestPool {pool or '(predefined)'}: store contention, try again")

    def _join_shared(self, kv: KV, spec: PoolSpec, opts: dict[str, str]) -> tuple[str, str, dict[str, str]] | None:
        """Another host's RequestPool of an existing shared pool: add its reference (None: lost a race)."""
        rec = decode(kv.value)
        sid = kv.key[len(POOLS):]
        same_spec = (rec["pool"], rec["subpool"], rec["v6"]) == (
            str(spec.pool.cidr), str(spec.sub_pool.cidr) if spec.sub_pool else "", spec.v6)
        hosts = list(rec.get("hosts") or [])
        if not same_spec or self.host_id in hosts:
            # Another SubPool of the same Pool, or a second network of this host on it: an overlap,
            # as on one host.
            raise PoolOverlap(str(spec.pool.cidr), rec["pool"], sid)
        rec["hosts"] = sorted([*hosts, self.host_id])
        if not self._commit(TxnBuilder().replace(kv.key, rec, kv.mod_rev)):
            return None
        return sid, rec["pool"], {}

    def release_pool(self, pool_id: str) -> None:
        """Drop this host's reference to the pool, and its addresses there; the last reference drops
        the pool and every record under it. Idempotent: an unknown PoolID is a success."""
        sid = self._resolve(_check_pool_id(pool_id))
        self._release_pool(sid, self.host_id, [])

    def _release_pool(self, sid: str, host: str, guard: list[Cmp]) -> None:
        """``host`` lets go of pool ``sid``; every txn also holds ``guard`` (reclaim: host absent)."""
        for _ in _attempts():
            kv = self._store.get(POOLS + sid)
            if kv is None:
                break
            rec = decode(kv.value)
            others = [h for h in rec.get("hosts") or [] if h != host]
            if others:
                # Shared and still held elsewhere: only this host's addresses and its reference go.
                if not self._release_host_addresses(sid, host, guard):
                    return
                kv = self._store.get(POOLS + sid)
                if kv is None:
                    break
                rec = decode(kv.value)
                if host not in (rec.get("hosts") or []):
                    return
                rec["hosts"] = [h for h in rec["hosts"] if h != host]
                if not rec["hosts"]:
                    continue  # the others left meanwhile: this is now the last reference
                txn = TxnBuilder(list(guard)).replace(kv.key, rec, kv.mod_rev)
                if self._commit(txn):
                    return
                if guard and not self._guard_holds(guard):
                    return
                continue
            if self._commit(TxnBuilder(list(guard)).delete(kv.key, kv.mod_rev)):
                break
            if guard and not self._guard_holds(guard):
                return
        else:
            raise StoreContention(f"ReleasePool {_public_id(sid)}: store contention, try again")
        self._purge(sid)

    def _guard_holds(self, guard: list[Cmp]) -> bool:
        return all((kv.mod_rev if (kv := self._store.get(c.key)) else 0) == c.mod_rev for c in guard)

    def _release_host_addresses(self, sid: str, host: str, guard: list[Cmp]) -> bool:
        """Delete ``host``'s address records in pool ``sid`` (leaving it a shared gateway); False if
        ``guard`` stopped holding. Batched, each batch one txn comparing the pool and every record."""
        batch = MAX_TXN_OPS // 2 - 1  # a delete and a free-set put per address
        for _ in _attempts():
            pool = self._load(sid)
            if pool is None:
                return True
            txn = TxnBuilder(list(guard)).require(pool.key, pool.mod_rev)
            count = 0
            for kv in self._scan(f"{ADDRS}{sid}/"):
                rec = decode(kv.value)
                holders = rec.get("hosts") or [rec.get("host")]
                if host not in holders:
                    continue
                if len(holders) > 1:
                    rec["hosts"] = [h for h in holders if h != host]
                    txn.replace(kv.key, rec, kv.mod_rev)
                else:
                    txn.delete(kv.key, kv.mod_rev)
                    offset = pool.spec.offset_of(IPAddress(kv.key.rsplit("/", 1)[1]))
                    if pool.spec.in_range(offset) and offset < pool.cursor:
                        txn.ops.append(Put(pool.free_key(offset), b"{}"))
                count += 1
                if count == batch:
                    break
            if count == 0:
                return True
            if not self._commit(txn) and guard and not self._guard_holds(guard):
                return False
        raise StoreContention(f"releasing the addresses of host {host} in pool {_public_id(sid)}: "
                              "store contention, try again")

    # -- hosts ---------------------------------------------------------------------------------

    def hosts_holding(self) -> set[str]:
        """Every host that holds a pool reference or a per-host pool: whose allocations may need reclaiming."""
        out: set[str] = set()
        for sid, _, kv in self._held_pools():
            owner = _store_host(sid)
            if owner:
                out.add(owner)
            out.update(h for h in decode(kv.value).get("hosts") or [] if h)
        return out

    def reclaim_host(self, host: str, guard: list[Cmp]) -> list[str]:
        """Release everything ``host`` holds (a host whose lease expired a grace period ago).

        Every txn carries ``guard`` (the caller's "hosts/<host> is absent"): should the host come
        back, with its lease and record, the reclaim stops where it is and takes nothing more.
        """
        done: list[str] = []
        for sid, _, kv in self._held_pools():
            if _store_host(sid) == host or host in (decode(kv.value).get("hosts") or []):
                if not self._guard_holds(guard):
                    break
                self._release_pool(sid, host, guard)
                done.append(_public_id(sid))
        return done

    def list_pools(self) -> list[dict[str, Any]]:
        kvs, _ = self._store.list(POOLS)
        out = []
        for kv in kvs:
            sid = kv.key[len(POOLS):]
            if not self._visible(sid):
                continue
            rec = decode(kv.value)
            out.append({"pool_id": _public_id(sid), "address_space": rec["address_space"],
                        "pool": rec["pool"], "sub_pool": rec["subpool"], "v6": rec["v6"],
                        "options": rec["options"], **({"hosts": rec["hosts"]} if "hosts" in rec else {})})
        return out

    def pool_usage(self, pool_id: str) -> dict[str, Any]:
        """Counts for the CLI; reads the pool's records page by page, so it is O(allocated)."""
        pool = self._load(self._resolve(_check_pool_id(pool_id)))
        if pool is None:
            raise PoolNotFound(pool_id)
        kinds: dict[str, int] = {}
        for kv in self._scan(f"{ADDRS}{pool.id}/"):
            kind = decode(kv.value).get("kind", "?")
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"pool_id": pool.pool_id, "pool": pool.record["pool"], "sub_pool": pool.record["subpool"],
                "allocated": sum(kinds.values()), "by_kind": kinds,
                "capacity": pool.spec.capacity(), "range_capacity": pool.spec.range_capacity()}

    # -- addresses -----------------------------------------------------------------------------

    def request_address(self, pool_id: str, address: str,
                        options: dict[str, str] | None) -> tuple[str, dict[str, str]]:
        """Allocate ``address`` (or the next free one if empty): ("ip/prefixlen", Data).

        The prefix length is the pool's, since Docker makes it the container's netmask.
        """
        pool_id = _check_pool_id(pool_id)
        opts = _check_options(options)
        wanted = parse_address("Address", address) if address else None
        record: Record = {"kind": _kind(opts, wanted is not None), "token": uuid.uuid4().hex,
                          "host": self.host_id}
        if opts.get(MAC_OPTION):
            record["mac"] = opts[MAC_OPTION]
        sid = self._resolve(pool_id)
        with self._pool_lock(sid):
            for _ in _attempts():
                pool = self._pool(sid)
                if pool is None:
                    raise PoolNotFound(pool_id)
                if wanted is None and record["kind"] == "gateway" and "hosts" in pool.record:
                    # A shared pool's gateway asked for without an address (dockerd without --gateway) by
                    # a second host: the one the first host got, the same on every host.
                    wanted = self._shared_gateway(pool)
                got = (self._try_static(pool, wanted, record) if wanted is not None
                       else self._try_dynamic(pool, record))
                if got is not None:
                    return pool.spec.with_prefix(got), {}
        raise StoreContention(f"RequestAddress in pool {shown(pool_id)}: store contention, try again")

    def request_addresses(self, pool_id: str, options: list[dict[str, str] | None]
                          ) -> list[tuple[str, dict[str, str]] | Exception]:
        """Allocate one dynamic address per entry of ``options`` (RequestAddress with no Address),
        in as few store transactions as the pool allows: one result or error per entry.

        Why: with one txn per allocation, concurrent requests on a pool queue on its lock and each
        pays a whole commit and WAL fsync (or etcd round trip) alone: 16 clients got ~250/s. A batch
        moves the cursor once over up to ``BATCH_MAX`` addresses and creates their records in the
        same CAS txn, so they share one commit; correctness is the single path's (the same
        compares: the pool's mod revision and every static stepped over).
        """
        try:
            pool_id = _check_pool_id(pool_id)
        except InvalidRequest as exc:
            return [exc for _ in options]
        out: list[tuple[str, dict[str, str]] | Exception | None] = [None] * len(options)
        pending: list[tuple[int, Record]] = []
        for i, opts in enumerate(options):
            try:
                checked = _check_options(opts)
            except InvalidRequest as exc:
                out[i] = exc
                continue
            record: Record = {"kind": _kind(checked, False), "token": uuid.uuid4().hex, "host": self.host_id}
            if record["kind"] == "gateway":
                # A gateway is no dynamic address: a shared pool's is the one every host has
                # (request_address finds it), so it never takes the next free offset.
                try:
                    out[i] = self.request_address(pool_id, "", opts)
                except Exception as exc:
                    out[i] = exc
                continue
            if checked.get(MAC_OPTION):
                record["mac"] = checked[MAC_OPTION]
            pending.append((i, record))
        sid = self._resolve(pool_id)
        walk = False  # True once a static allocation was met ahead of the cursor
        with self._pool_lock(sid):
            attempts = _attempts()
            while pending:
                try:
                    next(attempts)
                    pool = self._pool(sid)
                    if pool is None:
                        raise PoolNotFound(pool_id)
                    batch = [r for _, r in pending[:BATCH_MAX]]
                    fast = None if walk else self._try_next(pool, batch)
                    walk = fast is None
                    got = self._try_dynamic_many(pool, batch) if fast is None else fast
                except StopIteration:
                    err: Exception = StoreContention(
                        f"RequestAddress in pool {shown(pool_id)}: store contention, try again")
                except (PoolNotFound, PoolExhausted) as exc:
                    err = exc
                else:
                    if got:
                        attempts = _attempts()
                    for (i, _), addr in zip(pending, got, strict=False):
                        out[i] = (pool.spec.with_prefix(addr), {})
                    pending = pending[len(got):]
                    continue
                for i, _ in pending:
                    out[i] = err
                pending = []
        return [x if x is not None else StoreContention("unreachable") for x in out]

    def release_address(self, pool_id: str, address: str) -> None:
        """Free ``address``. Unknown pools and addresses succeed: Docker releases gateways it never
        requested (those it took from RequestPool Data) and only logs release errors anyway."""
        pool_id = _check_pool_id(pool_id)
        addr = parse_address("Address", address)
        sid = self._resolve(pool_id)
        with self._pool_lock(sid):
            self._release_address(sid, addr, address, pool_id)

    def _release_address(self, sid: str, addr: IPAddress, address: str, pool_id: str) -> None:
        for _ in _attempts():
            pool = self._pool(sid)
            if pool is None:
                return
            try:
                offset = pool.spec.offset_of(addr)
            except AddressOutOfPool:
                return
            mine = self._addrs.get(pool.addr_key(addr))
            if mine is not None:
                # Created here, at this revision, for this host alone: no read needed; the
                # compares say whether the record and the pool are still as this service left them.
                self._addrs.pop(pool.addr_key(addr))
                if self._commit(self._freeing(pool, offset, pool.addr_key(addr), mine)):
                    return
                continue
            kv = self._store.get(pool.addr_key(addr))
            if kv is None:
                return
            rec = decode(kv.value)
            holders = rec.get("hosts") or [rec.get("host", self.host_id)]
            if self.host_id not in holders:
                return  # another host's address (Docker releases gateways it never asked for): not ours
            if len(holders) > 1:
                rec["hosts"] = [h for h in holders if h != self.host_id]  # a shared gateway: let go of it
                if self._commit(TxnBuilder().replace(kv.key, rec, kv.mod_rev)):
                    return
                continue
            if self._commit(self._freeing(pool, offset, kv.key, kv.mod_rev)):
                return
        raise StoreContention(f"ReleaseAddress {address} in pool {shown(pool_id)}: store contention, try again")

    @staticmethod
    def _freeing(pool: _Pool, offset: int, key: str, mod_rev: int) -> TxnBuilder:
        """The txn that deletes address record ``key`` (at ``mod_rev``) of ``pool``."""
        txn = TxnBuilder().require(pool.key, pool.mod_rev).delete(key, mod_rev)
        if pool.spec.in_range(offset) and offset < pool.cursor:
            txn.ops.append(Put(pool.free_key(offset), b"{}"))  # the cursor passed it: keep it findable
        return txn

    # -- allocation steps (one CAS round each; None = lost a race, retry) -----------------------

    def _try_static(self, pool: _Pool, addr: IPAddress, record: Record) -> IPAddress | None:
        """One CAS round for a given address, unread: the create compares its key with absent and
        its free-set key with absent, and the failed compares say what is there instead (held:
        share a gateway or refuse; released below the cursor: take it out of the free set)."""
        offset = pool.spec.offset_of(addr)  # any usable address of the pool: aux may lie outside SubPool
        key = pool.addr_key(addr)
        free_key = pool.free_key(offset)
        txn = TxnBuilder().require(pool.key, pool.mod_rev).create(key, record).require(free_key, 0)
        result = self._txn(txn, key, record["token"])
        if result.succeeded:
            return addr
        failed = dict(result.failed)
        held = failed.get(key)
        if held is not None:
            shared = self._share_gateway(pool, held, record)
            if shared is None:
                return None  # lost a race on the gateway's record: retry
            if shared:
                return addr
            raise AddressInUse(str(addr), pool.pool_id)
        free = failed.get(free_key)
        if free is None or pool.key in failed:
            return None  # the pool changed (``_txn`` kept the new record): retry
        txn = TxnBuilder().require(pool.key, pool.mod_rev).create(key, record).delete(free.key, free.mod_rev)
        return addr if self._commit(txn, key, record["token"]) else None

    def _shared_gateway(self, pool: _Pool) -> IPAddress | None:
        for kv in self._scan(f"{ADDRS}{pool.id}/"):
            if decode(kv.value).get("kind") == "gateway":
                return IPAddress(kv.key.rsplit("/", 1)[1])
        return None

    def _share_gateway(self, pool: _Pool, held: KV, record: Record) -> bool | None:
        """A shared pool's gateway asked for by one more host: the hosts share the one record."""
        rec = decode(held.value)
        if not (record["kind"] == rec.get("kind") == "gateway" and "hosts" in pool.record):
            return False
        holders = rec.get("hosts") or [rec.get("host", "")]
        if self.host_id in holders:
            return False  # this host asked twice: in use, as on one host
        rec["hosts"] = sorted([*holders, self.host_id])
        return True if self._commit(TxnBuilder().replace(held.key, rec, held.mod_rev)) else None

    def _try_dynamic(self, pool: _Pool, record: Record) -> IPAddress | None:
        lo, hi = pool.spec.range()
        cursor = max(pool.cursor, lo)
        skipped: list[KV] = []
        while cursor <= hi:
            kv = self._store.get(pool.addr_key(pool.spec.address_at(cursor)))
            if kv is None:
                break
            skipped.append(kv)  # a static allocation ahead of the cursor: step over it
            cursor += 1
            if len(skipped) == MAX_SKIP:  # a long run: save progress, keep txns small
                txn = _stepping_over(TxnBuilder().replace(pool.key, pool.with_cursor(cursor), pool.mod_rev),
                                     skipped)
                reloaded = self._load(pool.id) if self._commit(txn) else None
                if reloaded is None:
                    return None
                pool, skipped = reloaded, []
        if cursor > hi:
            return self._take_free(pool, cursor, skipped, record)
        addr = pool.spec.address_at(cursor)
        txn = (_stepping_over(TxnBuilder(), skipped)
               .replace(pool.key, pool.with_cursor(cursor + 1), pool.mod_rev)
               .create(pool.addr_key(addr), record))
        return addr if self._commit(txn, pool.addr_key(addr), record["token"]) else None

    def _try_next(self, pool: _Pool, records: list[Record]) -> list[IPAddress] | None:
        """One round trip for the common case: the addresses after the cursor, unread.

        Their creates compare each key with "absent" and the pool with the revision it was read
        or cached at, so a static allocation ahead of the cursor or another writer of the pool
        fails the txn instead of being overwritten. None: a static is there (the caller walks
        with reads, ``_try_dynamic_many``); []: the pool changed (the caller retries; ``_txn``
        kept the pool record the failed compare returned).
        """
        lo, hi = pool.spec.range()
        cursor = max(pool.cursor, lo)
        count = min(len(records), hi - cursor + 1, MAX_TXN_OPS - 1)
        if count <= 0:
            return None
        addrs = [pool.spec.address_at(cursor + i) for i in range(count)]
        new = pool.with_cursor(cursor + count)
        txn = TxnBuilder().replace(pool.key, new, pool.mod_rev)
        for addr, record in zip(addrs, records, strict=False):
            txn.create(pool.addr_key(addr), record)
        result = self._txn(txn, pool.addr_key(addrs[0]), records[0]["token"])
        if result.succeeded:
            if result.revision:
                self._pools.put(pool.id, _Pool(pool.id, new, result.revision))
                for addr in addrs:
                    self._addrs.put(pool.addr_key(addr), result.revision)
            return addrs
        failed = dict(result.failed)
        if any(failed.get(pool.addr_key(addr)) is not None for addr in addrs):
            return None
        return []

    def _try_dynamic_many(self, pool: _Pool, records: list[Record]) -> list[IPAddress]:
        """One CAS round of ``request_addresses``: the addresses it allocated for the first
        records (fewer when statics, the txn size or the range's end cut the run short; empty
        when it lost a race). Past the range's end, or blocked by a run of statics, it falls back
        to ``_try_dynamic`` for one record, which walks statics and takes from the free set."""
        lo, hi = pool.spec.range()
        cursor = max(pool.cursor, lo)
        skipped: list[KV] = []
        addrs: list[IPAddress] = []
        # compares of the statics + the pool's replace + one create per address
        while len(addrs) < len(records) and cursor <= hi and len(skipped) + len(addrs) + 2 < MAX_TXN_OPS:
            addr = pool.spec.address_at(cursor)
            kv = self._store.get(pool.addr_key(addr))
            if kv is not None:
                if len(skipped) == MAX_SKIP:
                    break
                skipped.append(kv)
            else:
                addrs.append(addr)
            cursor += 1
        if not addrs:
            one = self._try_dynamic(pool, records[0])
            return [] if one is None else [one]
        txn = _stepping_over(TxnBuilder(), skipped).replace(pool.key, pool.with_cursor(cursor), pool.mod_rev)
        for addr, record in zip(addrs, records, strict=False):
            txn.create(pool.addr_key(addr), record)
        first = pool.addr_key(addrs[0])
        return addrs if self._commit(txn, first, records[0]["token"]) else []

    def _take_free(self, pool: _Pool, cursor: int, skipped: list[KV], record: Record) -> IPAddress | None:
        """The range was walked once: reuse the lowest released offset."""
        kvs, _ = self._store.list(f"{FREE}{pool.id}/", limit=1)
        if not kvs:
            raise PoolExhausted(f"{pool.record['pool']} (PoolID {shown(pool.pool_id)})")
        free = kvs[0]
        addr = pool.spec.address_at(parse_offset_key(free.key.rsplit("/", 1)[1]))
        txn = _stepping_over(TxnBuilder(), skipped)
        if cursor != pool.cursor:
            txn.replace(pool.key, pool.with_cursor(cursor), pool.mod_rev)
        else:
            txn.require(pool.key, pool.mod_rev)
        txn.delete(free.key, free.mod_rev)
        if self._store.get(pool.addr_key(addr)) is not None:
            self._commit(txn)  # a stale free entry (invariant 1 broken by hand): drop it, retry
            return None
        txn.create(pool.addr_key(addr), record)
        return addr if self._commit(txn, pool.addr_key(addr), record["token"]) else None

    # -- store helpers -------------------------------------------------------------------------

    def _commit(self, txn: TxnBuilder, key: str | None = None, token: str | None = None) -> bool:
        """Run ``txn``; an Indeterminate outcome is settled by reading ``key`` back for ``token``."""
        return self._txn(txn, key, token).succeeded

    def _txn(self, txn: TxnBuilder, key: str | None = None, token: str | None = None) -> TxnResult:
        """``_commit`` with the result (revision 0: settled by reading back, revision unknown).

        Every pool record the txn writes is forgotten from the cache (so is every one it compares,
        when the outcome is unknown), then the one a failed compare returned is kept: the cache
        never holds a pool this txn may have changed.
        """
        def forget(keys: set[str]) -> None:
            for key_ in keys:
                if key_.startswith(POOLS):
                    self._pools.pop(key_[len(POOLS):])

        forget({op.key for op in txn.ops})
        try:
            result = txn.commit(self._store)
        except Indeterminate:
            forget({c.key for c in txn.compares})
            if key is None:
                return TxnResult(False, 0)  # the caller re-reads and retries; its operation is idempotent
            kv = self._store.get(key)
            return TxnResult(kv is not None and decode(kv.value).get("token") == token, 0)
        for key_, kv in result.failed:
            if key_.startswith(POOLS):
                sid = key_[len(POOLS):]
                if kv is None:
                    self._pools.pop(sid)
                else:
                    self._pools.put(sid, _Pool(sid, decode(kv.value), kv.mod_rev))
        return result

    def _load(self, pool_id: str) -> _Pool | None:
        """The pool record as the store has it now (and cached as that)."""
        kv = self._store.get(POOLS + pool_id)
        if kv is None:
            self._pools.pop(pool_id)
            return None
        pool = _Pool(pool_id, decode(kv.value), kv.mod_rev)
        self._pools.put(pool_id, pool)
        return pool

    def _pool(self, pool_id: str) -> _Pool | None:
        """The pool record last seen (writes compare its revision), else the store's.

        A shared pool (``hosts``: several hosts allocate from it) is read afresh: every other
        host's allocation moves it, so a cached one is mostly stale there, and a txn that fails
        its compare costs a write (etcd puts every txn through raft), dearer than the read.
        """
        hit = self._pools.get(pool_id)
        return hit if hit is not None and "hosts" not in hit.record else self._load(pool_id)

    def _held_pools(self) -> list[tuple[str, IPNetwork, KV]]:
        """Every pool on the store, every host's: (store id, network, record)."""
        return [(kv.key[len(POOLS):], IPNetwork(decode(kv.value)["pool"]), kv)
                for kv in self._scan(POOLS)]

    def _scan(self, prefix: str, page: int = 1000) -> Iterator[Any]:
        after: str | None = None
        while True:
            kvs, _ = self._store.list(prefix, limit=page, start_after=after)
            yield from kvs
            if len(kvs) < page:
                return
            after = kvs[-1].key

    def _purge(self, pool_id: str) -> None:
        """Delete the records of a pool whose record is absent, a batch per txn.

        Each batch compares the pool key with "absent": once somebody re-creates the PoolID the
        purge stops, and the re-creator purged before creating (invariant 3), so no record of the
        new pool is ever touched.
        """
        for prefix in (f"{ADDRS}{pool_id}/", f"{FREE}{pool_id}/"):
            while True:
                kvs, _ = self._store.list(prefix, limit=MAX_TXN_OPS)
                if not kvs:
                    break
                result = self._store.txn([Cmp(POOLS + pool_id, 0)], [Delete(kv.key) for kv in kvs])
                if not result.succeeded:
                    return


def overlay_pool_hosts(store: Store, overlay: str, cidr: str) -> list[str] | None:
    """The hosts holding overlay ``overlay``'s pool ``cidr`` (None: no such pool): drivers/vxlan.py
    checks that a CreateNetwork's pool really is the overlay's, granted to this host."""
    kv = store.get(f"{POOLS}{overlay_space(overlay)}/{cidr}")
    return None if kv is None else list(decode(kv.value).get("hosts") or [])


def _stepping_over(txn: TxnBuilder, skipped: list[KV]) -> TxnBuilder:
    """Make a cursor move conditional on the statics it steps over still being allocated.

    Releasing an address ahead of the cursor only deletes its record (no free key: the cursor will
    reach it). Were it released while the cursor steps over it, that address would be lost forever.
    """
    for kv in skipped:
        txn.require(kv.key, kv.mod_rev)
    return txn


def _pool_record(spec: PoolSpec, space: str, options: dict[str, str]) -> Record:
    return {"pool": str(spec.pool.cidr), "subpool": str(spec.sub_pool.cidr) if spec.sub_pool else "",
            "v6": spec.v6, "address_space": space, "options": options,
            "cursor": spec.range()[0], "token": uuid.uuid4().hex}


# -- validation ----------------------------------------------------------------------------------

def _check_space(space: object) -> str:
    if not isinstance(space, str) or not _SPACE_RE.fullmatch(space):
        raise InvalidRequest("AddressSpace", f"{shown(space)} is not a valid address space name "
                             "(letters, digits, '.', '_', '-')")
    return space


def _named_space(name: str) -> str:
    """A space chosen by ``cnmkit.space``: per host like the local default; the ``cnmkit-`` names
    stay cnmkit's own (the global space, overlays' shared spaces), whose sharing rules differ."""
    field = f"Options.{SPACE_OPTION}"
    try:
        _check_space(name)
    except InvalidRequest:
        raise InvalidRequest(field, f"{shown(name)} is not a valid address space name "
                             "(1..128 of letters, digits, '.', '_', '-')") from None
    if name.startswith("cnmkit-"):
        raise InvalidRequest(field, f"{shown(name)}: names starting with 'cnmkit-' are cnmkit's own spaces")
    return name


def _check_overlay(name: str) -> str:
    if not OVERLAY_NAME_RE.fullmatch(name):
        raise InvalidRequest(f"Options.{OVERLAY_OPTION}", f"{shown(name)} is not an overlay name (1..64 of "
                             "letters, digits, '_', '.', '-'; starting with a letter or digit)")
    return name


def _check_pool_id(pool_id: object) -> str:
    if not isinstance(pool_id, str) or pool_id.count("/") != 2:
        raise InvalidRequest("PoolID", f"{shown(pool_id)} is not a PoolID of this driver")
    space, cidr = pool_id.split("/", 1)
    _check_space(space)
    try:
        parse_cidr("PoolID", cidr)
    except InvalidRequest:
        raise InvalidRequest("PoolID", f"{shown(pool_id)} is not a PoolID of this driver") from None
    return pool_id


def _check_options(options: object) -> dict[str, str]:
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise InvalidRequest("Options", f"{shown(options)} is not a map of strings to strings")
    return dict(options)


def _kind(options: dict[str, str], explicit: bool) -> str:
    """What an address is for. Docker sends aux addresses and a ``--ip`` replayed without options
    identically; a MAC option only ever comes with endpoint requests, hence the rule."""
    if options.get(GATEWAY_OPTION) == GATEWAY_LABEL:
        return "gateway"
    if options.get(MAC_OPTION) or not explicit:
        return "endpoint"
    return "aux"
