"""The operator's CLI against a real daemon (null driver): tables, JSON, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from plugin.server import DaemonConfig
from tests.daemon_thread import DaemonThread


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator:
    config = DaemonConfig(plugin_dir=str(tmp_path / "p"), state_dir=str(tmp_path / "s"),
                          store_url=f"sqlite://{tmp_path}/state.db", drivers=["null"])
    daemon = DaemonThread(config).start()

    def run(*argv: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(["--plugin-dir", config.plugin_dir, *argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    daemon.stop()


def test_create_ls_inspect_rm(cli) -> None:
    code, out, _ = cli("network", "create", "-d", "null", "--subnet", "10.90.0.0/24", "--gateway", "10.90.0.254",
                       "--aux-address", "r=10.90.0.2", "front")
    assert code == 0 and len(out.strip()) == 64
    code, out, _ = cli("network", "ls")
    lines = out.splitlines()
    assert lines[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SUBNETS", "FLAGS", "ENDPOINTS"]
    assert "front" in lines[1] and "10.90.0.0/24" in lines[1] and "cnmkit-null" in lines[1]
    code, out, _ = cli("--format", "json", "network", "ls")
    (net,) = json.loads(out)
    assert net["IPv4"][0]["Gateway"] == "10.90.0.254/24"
    code, out, _ = cli("network", "inspect", "front")
    assert json.loads(out)[0]["IPv4"][0]["AuxAddresses"] == {"r": "10.90.0.2/24"}
    assert cli("network", "rm", "front")[0] == 0
    assert cli("network", "ls", "-q")[1].strip() == ""


@pytest.mark.parametrize("argv,message", [
    (["network", "create", "-d", "null", "--subnet", "10.91.0.0/33", "x"], "10.91.0.0/33"),
    (["network", "create", "-d", "null", "--subnet", "10.91.0.0/24", "-o", "novalue", "x"], "KEY=VALUE"),
    (["network", "create", "-d", "null", "--subnet", "10.91.0.0/24", "-o", "weird=1", "x"], "weird"),
    (["network", "create", "-d", "null", "--subnet", "10.91.0.0/24", "--gateway", "10.92.0.1", "x"],
     "10.92.0.1"),
    (["network", "create", "-d", "nosuch", "x"], "cnmkit-nosuch.sock"),
    (["network", "inspect", "missing"], "not found"),
    (["network", "rm", "missing"], "not found"),
])
def test_errors_are_one_line_and_nonzero(cli, argv: list[str], message: str) -> None:
    code, _, err = cli(*argv)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("cnmkit: ") and message in err, err
    assert json.loads(cli("--format", "json", "network", "ls")[1]) == []     # nothing half-made


def test_no_daemon_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--plugin-dir", str(tmp_path), "network", "ls"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "no cnmkit daemon is listening" in err and err.count("\n") == 1
