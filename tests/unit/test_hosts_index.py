"""hosts.Index: incremental joins and leaves give every file the entries a full rendering gives.

The incremental path appends and filters lines instead of re-rendering every file; the order of
lines may differ from ``render_all``'s, the set of entries may not.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime import hosts
from runtime.hosts import Index, Member


def _att(net: str, v4: str, v6: str = "", aliases: tuple[str, ...] = ()) -> dict:
    return {"network_id": net, "address": v4, "address_v6": v6, "aliases": list(aliases)}


def _entries(text: str) -> set[tuple[str, ...]]:
    return {tuple(line.split()) for line in text.splitlines() if line.strip()}


def _check(tmp: Path, members: dict[str, Member]) -> None:
    expected = hosts.render_all(members)
    for cid, text in expected.items():
        assert _entries((tmp / cid).read_text()) == _entries(text), cid


def test_joins_and_leaves_match_a_full_rendering(tmp_path: Path) -> None:
    path_of = lambda cid: str(tmp_path / cid)                               # noqa: E731
    index = Index(str(tmp_path / "index.json"), {})
    first = {"a": Member("a", "ha", (_att("n1", "10.0.0.2/24", "fd00::2/64"),)),
             "b": Member("b", "hb", (_att("n1", "10.0.0.3/24", aliases=("db",)), _att("n2", "10.1.0.3/24")))}
    index.add(first, path_of)
    inodes = {cid: os.stat(path_of(cid)).st_ino for cid in first}
    _check(tmp_path, index.members)
    second = {"c": Member("c", "hc", (_att("n2", "10.1.0.4/24"),)),
              "d": Member("d", "hd", (_att("n3", "10.2.0.2/24"),)),
              "e": Member("e", "he", (_att("n1", "10.0.0.5/24"), _att("n2", "10.1.0.5/24")))}
    index.add(second, path_of)
    _check(tmp_path, index.members)
    assert "10.1.0.4\tc hc" in (tmp_path / "b").read_text()          # appended to a peer's file
    assert "10.1.0" not in (tmp_path / "a").read_text()              # not to a non-peer's
    index.remove(["b"], path_of)
    _check(tmp_path, index.members)
    assert "db" not in (tmp_path / "a").read_text() and "hb" not in (tmp_path / "e").read_text()
    index.remove(["e", "nobody"], path_of)
    _check(tmp_path, index.members)
    assert os.stat(path_of("a")).st_ino == inodes["a"], "bind-mounted files are rewritten in place"

    # The index on disk is what the next CLI call continues from; gone records are dropped.
    again = Index.load(str(tmp_path / "index.json"), alive=lambda cid: cid != "d")
    assert again is not None and set(again.members) == {"a", "c"}
    assert Index.load(str(tmp_path / "missing.json"), alive=lambda cid: True) is None


def test_a_leave_keeps_an_address_another_member_still_has(tmp_path: Path) -> None:
    """Two networks with overlapping subnets: the same address belongs to two containers."""
    path_of = lambda cid: str(tmp_path / cid)                               # noqa: E731
    index = Index(str(tmp_path / "index.json"), {})
    index.add({"p": Member("p", "p", (_att("n1", "10.0.0.2/24"), _att("n2", "10.0.0.9/24"))),
               "x": Member("x", "x", (_att("n1", "10.0.0.9/24"),)),
               "y": Member("y", "y", (_att("n2", "10.0.0.9/24"),))}, path_of)
    index.remove(["x"], path_of)
    _check(tmp_path, index.members)
    assert "10.0.0.9\ty" in (tmp_path / "p").read_text()
