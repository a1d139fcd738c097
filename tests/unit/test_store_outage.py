"""Store outage handling without a real store (issue 7 item 6): naming, one probe, settling.

The kernel tier proves the same against a real etcd cluster that is stopped and restarted
(tests/kernel/test_daemon_store_outage.py); these pin the rules down deterministically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from store.base import KV, Cmp, Indeterminate, Op, Put, TxnResult, Unavailable
from store.guard import GuardedStore, display_url
from store.memory import MemoryStore
from store.settle import SettlingStore


class Flaky(MemoryStore):
    """A MemoryStore whose next txn can be made to fail: before applying, or after (outcome unknown)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_txn: list[str] = []            # "lost" (not applied) / "applied" (applied), per txn
        self.down = False
        self.gate: threading.Event | None = None  # a get waits on it (a slow probe), then raises if down
        self.entered = threading.Event()
        self.get_calls = 0

    def get(self, key: str) -> KV | None:
        self.get_calls += 1
        if self.gate is not None:
            self.entered.set()
            self.gate.wait()
        if self.down:
            raise Unavailable("etcd unreachable at 127.0.0.1:1 within 15s (last error:\nconnection refused)")
        return super().get(key)

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Op]) -> TxnResult:
        mode = self.fail_txn.pop(0) if self.fail_txn else ""
        if mode == "lost":
            raise Indeterminate("deadline exceeded mid-commit")
        result = super().txn(compares, ops)
        if mode == "applied":
            raise Indeterminate("deadline exceeded mid-commit")
        return result


def test_errors_name_the_store_in_one_line_and_hide_a_password() -> None:
    inner = Flaky()
    inner.down = True
    store = GuardedStore(inner, "etcd://u:secret@127.0.0.1:1")
    with pytest.raises(Unavailable) as err:
        store.get("k")
    assert str(err.value).startswith("store etcd://u:***@127.0.0.1:1: unavailable (etcd unreachable")
    assert "\n" not in str(err.value) and "secret" not in str(err.value)
    assert display_url("sqlite:///var/lib/cnmkit/state.db") == "sqlite:///var/lib/cnmkit/state.db"


def test_callers_arriving_during_a_probe_share_its_verdict_and_service_resumes() -> None:
    inner = Flaky()
    inner.put("k", b"v")
    store = GuardedStore(inner, "etcd://127.0.0.1:1")
    inner.down = True
    with pytest.raises(Unavailable):
        store.get("k")
    assert store.down
    gate = inner.gate = threading.Event()        # the next call that reaches the store hangs there
    results: list[object] = []
    probe = threading.Thread(target=lambda: results.append(store.get("k")))
    probe.start()
    inner.entered.wait()
    inner.gate = None
    # Arrives while the probe is in the store: it must not reach the (still down) store itself.
    waiter = threading.Thread(target=lambda: results.append(store.get("k")))
    waiter.start()
    inner.down = False                           # the store is back before the probe's answer
    gate.set()
    probe.join()
    waiter.join()
    assert [kv.value for kv in results if isinstance(kv, KV)] == [b"v", b"v"] and not store.down


def test_a_caller_that_waited_for_a_failed_probe_fails_with_it_without_asking_the_store() -> None:
    inner = Flaky()
    store = GuardedStore(inner, "etcd://127.0.0.1:1")
    inner.down = True
    with pytest.raises(Unavailable):
        store.get("k")
    gate = inner.gate = threading.Event()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            store.get("k")
        except Unavailable as exc:
            errors.append(exc)

    probe = threading.Thread(target=call)
    probe.start()
    inner.entered.wait()
    inner.entered.clear()
    waiter = threading.Thread(target=call)
    waiter.start()
    while store.waiting == 0:                    # until the waiter is parked on the probe's verdict
        time.sleep(0.001)
    gate.set()                                   # the probe fails: the store is still down
    probe.join()
    waiter.join()
    assert len(errors) == 2 and all(str(e).startswith("store etcd://127.0.0.1:1: unavailable (") for e in errors)
    assert inner.get_calls == 2, "the first failure and the probe; the waiter never asked"


@pytest.mark.parametrize("mode", ["applied", "lost"])
def test_an_unknown_outcome_is_settled_by_reading_back(mode: str) -> None:
    inner = Flaky()
    store = SettlingStore(inner)
    inner.fail_txn = [mode]
    result = store.cas("endpoints/n/e", b'{"id": "e"}', 0)
    assert result.succeeded
    kv = inner.get("endpoints/n/e")
    assert kv is not None and kv.value == b'{"id": "e"}'
    assert kv.version == 1, "applied exactly once"


def test_a_settled_resend_does_not_overwrite_what_another_writer_made() -> None:
    inner = Flaky()
    store = SettlingStore(inner)
    inner.put("networks/x", b"theirs")          # somebody else's record is there when we settle
    inner.fail_txn = ["lost"]
    result = store.txn([Cmp("networks/x", 0)], [Put("networks/x", b"ours")])
    assert not result.succeeded
    kv = inner.get("networks/x")
    assert kv is not None and kv.value == b"theirs"


def test_unknown_outcome_that_cannot_be_read_back_stays_unknown() -> None:
    inner = Flaky()
    store = SettlingStore(inner)
    inner.fail_txn = ["lost"]
    inner.down = True
    with pytest.raises(Indeterminate) as err:
        store.put("k", b"v")
    assert "reading it back to settle failed too" in str(err.value)
