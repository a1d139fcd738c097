"""The operator's CLI against a real daemon (null driver): tables, JSON, one-line errors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import DEFAULT_PLUGIN_DIR, build_parser, main
from cli.output import safe
from client.engine import Engine
from client.transport import PluginError
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


# -- global options before and after the subcommand --------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["network", "ls"], {"format": "table", "plugin_dir": DEFAULT_PLUGIN_DIR}),
    (["--format", "json", "network", "ls"], {"format": "json"}),
    (["network", "ls", "--format", "json"], {"format": "json"}),
    (["network", "--format", "json", "ls"], {"format": "json"}),
    # Given before AND after: the later one wins, and neither is reset by a subparser default.
    (["--format", "json", "network", "ls", "--format", "table"], {"format": "table"}),
    (["--format", "table", "network", "ls", "--format", "json"], {"format": "json"}),
    (["--plugin-dir", "/p1", "--format", "json", "network", "ls", "--log-level", "debug"],
     {"plugin_dir": "/p1", "format": "json", "log_level": "debug"}),
    (["daemon", "--state-dir", "/s2", "--store", "memory://", "--plugin-dir", "/p2"],
     {"state_dir": "/s2", "store": "memory://", "plugin_dir": "/p2"}),
    (["--state-dir", "/s1", "--store", "memory://", "daemon"], {"state_dir": "/s1", "store": "memory://"}),
    (["--state-dir", "/s1", "daemon", "--plugin-dir", "/p2"], {"state_dir": "/s1", "plugin_dir": "/p2"}),
    (["--run-dir", "/r1", "ps"], {"run_dir": "/r1", "format": "table"}),
    (["ps", "--run-dir", "/r2", "--format", "json", "--state-dir", "/s3"],
     {"run_dir": "/r2", "format": "json", "state_dir": "/s3"}),
    (["--state-dir", "/s1", "run", "--store", "memory://", "--name", "x", "--", "true"],
     {"state_dir": "/s1", "store": "memory://"}),
    (["network", "connect", "--run-dir", "/r3", "--state-dir", "/s4", "n", "c"],
     {"run_dir": "/r3", "state_dir": "/s4"}),
])
def test_global_options_before_and_after_the_command(argv: list[str], expected: dict[str, str]) -> None:
    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def _help(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv, shown, not_shown", [
    (["daemon"], ["--plugin-dir", "--state-dir", "--store", "--log-level"], ["--format", "--run-dir"]),
    (["cleanup"], ["--plugin-dir", "--log-level"], ["--format", "--store"]),
    (["network", "ls"], ["--plugin-dir", "--format", "--log-level"], ["--store", "--state-dir"]),
    (["network", "create"], ["--plugin-dir", "--log-level"], ["--format"]),
    (["network", "connect"], ["--plugin-dir", "--state-dir", "--run-dir"], ["--format"]),
    (["run"], ["--plugin-dir", "--state-dir", "--run-dir", "--store"], ["--format"]),
    (["ps"], ["--plugin-dir", "--state-dir", "--run-dir", "--format"], ["--store"]),
    (["stats"], ["--format", "--run-dir"], ["--store"]),
    (["exec"], ["--state-dir", "--run-dir"], ["--format", "--store"]),
])
def test_every_command_help_shows_the_global_options_that_apply(
        argv: list[str], shown: list[str], not_shown: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(*argv, capsys=capsys)
    assert "global options" in text
    for opt in shown:
        assert opt in text, (argv, opt)
    for opt in not_shown:
        assert opt not in text, (argv, opt)
    assert "==SUPPRESS==" not in text                    # the real defaults are in the help text


def _subparsers(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}".strip(), sub
                yield from _subparsers(sub, f"{path} {name}")


def test_every_subcommand_accepts_plugin_dir_and_log_level_after_it() -> None:
    found = dict(_subparsers(build_parser()))
    assert {"daemon", "cleanup", "network ls", "network connect", "run", "exec", "rm"} <= set(found)
    for path, sub in found.items():
        options = {s for a in sub._actions for s in a.option_strings}
        assert {"--plugin-dir", "--log-level"} <= options, path


def test_network_ls_format_json_after_the_command(cli) -> None:
    cli("network", "create", "-d", "null", "--subnet", "10.93.0.0/24", "after")
    code, out, _ = cli("network", "ls", "--format", "json")
    assert code == 0 and [n["Name"] for n in json.loads(out)] == ["after"]
    code, out, _ = cli("--format", "json", "network", "ls", "--log-level", "warning")
    assert code == 0 and [n["Name"] for n in json.loads(out)] == ["after"]


# -- nothing from the store reaches the terminal raw ----------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("plain", "plain"),
    ("caf\u00e9", "caf\u00e9"),
    ("a\x1b[2Jb", "a\\x1b[2Jb"),
    ("a\nb", "a\\nb"),
    ("a\tb\r", "a\\tb\\r"),
    ("a\x7fb\x9bc", "a\\x7fb\\x9bc"),
    ("evil\u202etxt", "evil\\u202etxt"),
    ("back\\slash", "back\\slash"),
    ("'a\\nb'", "'a\\nb'"),                              # repr output in a message is not doubled
])
def test_safe_escapes_control_characters(raw: str, shown: str) -> None:
    assert safe(raw) == shown


_HOSTILE = "bad\x1b]0;owned\x07\nFAKE ROW"


def _assert_clean(text: str) -> None:
    assert all(ch == "\n" or ch.isprintable() for ch in text), repr(text)
    assert "FAKE ROW" not in [row.strip() for row in text.splitlines()]


def test_network_ls_table_escapes_names_and_json_stays_exact(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    net = {"Id": "ab" * 32, "Name": _HOSTILE, "Driver": "cnmkit-null\x1b[31m", "IPv4": [], "IPv6": [],
           "Internal": False, "Endpoints": 0}
    monkeypatch.setattr(Engine, "list_networks", lambda self: [dict(net)])
    code, out, _ = cli("network", "ls")
    assert code == 0
    _assert_clean(out)
    assert len(out.splitlines()) == 2 and "bad\\x1b]0;owned\\x07\\nFAKE ROW" in out
    code, out, _ = cli("network", "ls", "--format", "json")
    assert json.loads(out)[0]["Name"] == _HOSTILE and "\x1b" not in out


def test_plain_lines_and_errors_escape_names(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Engine, "cleanup", lambda self, dry_run=False: [f"remove link {_HOSTILE}"])
    code, out, _ = cli("cleanup", "--dry-run")
    assert code == 0
    _assert_clean(out)
    assert len(out.splitlines()) == 1

    def refuse(self: Engine, ref: str) -> None:
        raise PluginError(f"network {ref} not found")

    monkeypatch.setattr(Engine, "remove_network", refuse)
    code, _, err = cli("network", "rm", "x\x1b[2J")
    assert code == 1 and err == "cnmkit: network x\\x1b[2J not found\n"


def test_ps_table_escapes_container_fields(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.containers import ContainerService

    row = {"Id": "cd" * 32, "Name": "n\x1b[1m", "Command": ["sh", "-c", "echo\nFAKE ROW"], "Status": "running",
           "ExitCode": None, "Pid": 7, "Networks": {"net\r": "10.0.0.2/24"}}
    monkeypatch.setattr(ContainerService, "ps", lambda self, all_=False: [row])
    code, out, _ = cli("ps")
    assert code == 0
    _assert_clean(out)
    assert len(out.splitlines()) == 2 and "n\\x1b[1m" in out and "net\\r=10.0.0.2/24" in out
