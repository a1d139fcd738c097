"""``cnmkit lab`` without root: the plan, the graph, listing, and one-line errors; the progress
display (a bar on a terminal, plain lines otherwise)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cli.lab import Progress
from cli.main import main

ROOT = Path(__file__).resolve().parents[2]
ROUTER = str(ROOT / "examples" / "labs" / "router.clab.yml")


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(["--plugin-dir", str(tmp_path / "p"), "--state-dir", str(tmp_path / "s"), *argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_dry_run_prints_the_plan(cli) -> None:
    code, out, err = cli("lab", "deploy", "--dry-run", ROUTER)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "would create network router-mgmt", "would start node r1", "would start node h1", "would start node h2",
        "would create link h1:eth1--r1:eth1", "would create link h2:eth1--r1:eth2",
        "would exec on node r1: 1 command(s)", "would exec on node h1: 1 command(s)",
        "would exec on node h2: 1 command(s)"]


def test_graph_dot_and_bad_output_names(cli, tmp_path: Path) -> None:
    code, out, _ = cli("lab", "graph", ROUTER, "-o", str(tmp_path / "r.dot"))
    assert code == 0 and out.strip() == str(tmp_path / "r.dot")
    dot = (tmp_path / "r.dot").read_text()
    assert dot.startswith('graph "router" {') and all(n in dot for n in ("r1", "h1", "h2", "10.81.20.1/24"))
    code, _, err = cli("lab", "graph", ROUTER, "-o", str(tmp_path / "r.txt"))
    assert code == 1 and err.startswith("cnmkit: -o ") and "must end in .svg, .png or .dot" in err


def test_errors_are_one_escaped_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\ntopology:\n  nodes:\n    a: {ports: [1]}\n    b: {kind: ceos}\n")
    code, out, err = cli("lab", "deploy", str(bad))
    assert code == 1 and out == ""
    assert err == f"cnmkit: {bad}:5: topology.nodes.b.kind: kind 'ceos' is not supported by cnmkit " \
                  "(supported: linux, bridge)\n"
    bad.write_text("name: warn\ntopology:\n  nodes:\n    a: {ports: [1]}\n    b: {ports: [2]}\n")
    code, out, err = cli("lab", "deploy", "--dry-run", str(bad))
    assert code == 0 and err == f"cnmkit: {bad}:4: topology.nodes.a.ports: containerlab's 'ports' is not " \
                                "implemented by cnmkit; ignored (and 1 more)\n"
    assert cli("lab", "destroy")[2] == "cnmkit: give the lab's FILE or --name NAME (one of them)\n"
    assert cli("lab", "destroy", "--name", "nope")[2] == "cnmkit: no lab nope is deployed\n"
    code, _, err = cli("lab", "inspect", "--name", "evil\x1b[2J")
    assert code == 1 and "\x1b" not in err and err.count("\n") == 1
    assert cli("lab", "exec", ROUTER, "h1")[2].startswith("cnmkit: lab exec: no command given")
    code, out, _ = cli("lab", "ls")
    assert code == 0 and out.split() == ["NAME", "NODES", "RUNNING", "NETWORKS", "LINKS", "FILE"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise() -> None:
    tty = _Tty()
    bar = Progress(tty, nodes=4)
    for i, text in enumerate(["start node r1", "start node r2\x1b[31m", "create link a--b"]):
        bar(i, 6, text)
    bar(6, 6, "done")
    shown = tty.getvalue()
    assert shown.startswith("\r\x1b[K[") and shown.endswith("] 6/6 done\n") and shown.count("\n") == 1
    assert "3/6" not in shown and "2/6 create link a--b" in shown and "\\x1b[31m" in shown
    few = _Tty()
    Progress(few, nodes=3)(0, 6, "start node r1")     # a few nodes: plain lines even on a terminal
    assert few.getvalue() == "start node r1\n"
    plain = io.StringIO()
    pipe = Progress(plain, nodes=50)
    pipe(0, 6, "start node r1")
    pipe(6, 6, "done")
    assert plain.getvalue() == "start node r1\n"
