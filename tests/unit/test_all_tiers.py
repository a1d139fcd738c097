"""Under CNMKIT_ALL_TIERS=1 (.ci/run) nothing is skipped: every skip in the suite goes through a
guard that fails instead in that mode, so CI can never count a test that did not run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.runtime.conftest import require_tool

TESTS = Path(__file__).resolve().parents[1]
_SKIPPING = {"skip", "skipif", "importorskip", "xfail"}


def _attr_chain(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _unguarded_skips(tree: ast.Module) -> list[int]:
    """Lines that skip without failing under CNMKIT_ALL_TIERS=1 in the same function."""
    bad = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
            continue
        body = list(ast.walk(func)) if not isinstance(func, ast.Module) else []
        guarded = (any(isinstance(n, ast.Constant) and n.value == "CNMKIT_ALL_TIERS" for n in body)
                   and any(isinstance(n, ast.Call) and _attr_chain(n.func) == "pytest.fail" for n in body))
        for node in body:
            name = _attr_chain(node.func) if isinstance(node, ast.Call) else ""
            if name.split(".")[-1] in _SKIPPING and name.startswith("pytest") and not guarded:
                bad.append(node.lineno)
    for node in ast.walk(tree):                          # markers: @pytest.mark.skip / skipif / xfail
        if isinstance(node, ast.Attribute) and _attr_chain(node).startswith("pytest.mark.") \
                and node.attr in _SKIPPING:
            bad.append(node.lineno)
    return bad


def test_no_test_file_skips_without_the_all_tiers_guard() -> None:
    found = {str(p.relative_to(TESTS)): lines for p in sorted(TESTS.rglob("*.py"))
             if (lines := _unguarded_skips(ast.parse(p.read_text(), str(p))))}
    assert found == {}, f"skips that CNMKIT_ALL_TIERS=1 would not turn into failures: {found}"


def test_the_scan_sees_a_bare_skip() -> None:
    assert _unguarded_skips(ast.parse("import pytest\ndef t():\n    pytest.skip('x')\n")) == [3]
    assert _unguarded_skips(ast.parse("import pytest\n@pytest.mark.skipif(True, reason='x')\ndef t(): pass\n"))


def test_require_tool_fails_under_all_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setenv("CNMKIT_ALL_TIERS", "1")
    with pytest.raises(pytest.fail.Exception, match="busybox-static"):
        require_tool("busybox", "busybox-static")
    monkeypatch.delenv("CNMKIT_ALL_TIERS")
    with pytest.raises(pytest.skip.Exception):
        require_tool("busybox", "busybox-static")


def test_require_root_fails_under_all_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("CNMKIT_ALL_TIERS", "1")
    with pytest.raises(pytest.fail.Exception):
        require_root()


def test_test_modules_have_unique_basenames() -> None:
    """The tiers have no __init__.py, so pytest imports test modules by basename: two
    ``test_x.py`` in different tiers stop the whole run at collection (it did once)."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(TESTS)} and {path.relative_to(TESTS)}")
        seen.setdefault(path.name, path)
    assert not clashes, f"test modules sharing a basename: {clashes}"
