"""Container names, hostnames and aliases are checked where they come in; hosts files stay one
entry per line whatever a record holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from runtime import names
from runtime.containers import ContainerError, ContainerService
from runtime.hosts import HostEntry, Member, render_all, render_hosts

GOOD_NAMES = ["web", "a", "Web_1.prod-2", "0abc", "x" * 64]
BAD_NAMES = ["", "a\nb", "web\n", "a b", "-web", "_web", ".web", "a/b", "x" * 65, "a\x1b[2J", "caf\u00e9", "a\tb"]
GOOD_HOSTS = ["web", "a", "web-1", "a.b.c", "x" * 63, ".".join(["x" * 63] * 3) + "." + "y" * 61, "0abc", "A1"]
BAD_HOSTS = ["", "x 1.2.3.4 evil", "a\nb", "web\n", "-web", "web-", "a..b", ".a", "a.", "a_b", "x" * 64,
             ".".join(["x" * 63] * 4), "a\tb", "a#b", "caf\u00e9"]


@pytest.mark.parametrize("value", GOOD_NAMES)
def test_good_container_names(value: str) -> None:
    assert names.check_container_name(value) == value


@pytest.mark.parametrize("value", BAD_NAMES)
def test_bad_container_names_are_refused_naming_the_option(value: str) -> None:
    with pytest.raises(ValueError) as exc:
        names.check_container_name(value)
    message = str(exc.value)
    assert message.startswith("--name ") and "\n" not in message and message.isprintable()


@pytest.mark.parametrize("value", GOOD_HOSTS)
def test_good_hostnames_and_aliases(value: str) -> None:
    assert names.check_hostname(value) == value and names.check_alias(value) == value


@pytest.mark.parametrize("value", BAD_HOSTS)
def test_bad_hostnames_and_aliases_are_refused(value: str) -> None:
    for check, option in ((names.check_hostname, "--hostname"), (names.check_alias, "--alias")):
        with pytest.raises(ValueError) as exc:
            check(value)
        assert str(exc.value).startswith(f"{option} ") and str(exc.value).isprintable()


def test_refusal_echoes_a_bounded_value() -> None:
    with pytest.raises(ValueError) as exc:
        names.check_hostname("-" * 100_000)
    assert len(str(exc.value)) < 400


@pytest.fixture
def svc(tmp_path: Path) -> ContainerService:
    # No daemon at plugin_dir: a name check that came after the first network look-up would fail
    # with "no cnmkit daemon" instead, so these tests also prove the names are checked first.
    return ContainerService(str(tmp_path / "state"), str(tmp_path / "plugins"), str(tmp_path / "run"))


@pytest.mark.parametrize("kwargs, option", [
    ({"name": "a\nb"}, "--name"),
    ({"name": "web\n"}, "--name"),
    ({"hostname": "x 1.2.3.4 evil"}, "--hostname"),
    ({"hostname": "x\n10.0.0.1 bank"}, "--hostname"),
    ({"networks": ["n1,alias=x 1.2.3.4"]}, "--network alias"),
    ({"networks": ["n1,alias=a\nb"]}, "--network alias"),
])
def test_service_refuses_bad_names_before_anything_is_made(svc: ContainerService, kwargs: dict,
                                                          option: str) -> None:
    with pytest.raises(ContainerError) as exc:
        svc.create(["true"], **kwargs)
    assert str(exc.value).startswith(option)
    assert svc.store.ids() == []


def test_connect_refuses_a_bad_alias_first(svc: ContainerService) -> None:
    with pytest.raises(ContainerError) as exc:
        svc.connect("n1", "nosuch", aliases=["ok", "bad alias"])
    assert str(exc.value).startswith("--alias 'bad alias'")


def test_cli_run_bad_hostname_is_one_line_and_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--plugin-dir", str(tmp_path / "p"), "--state-dir", str(tmp_path / "s"), "run",
              "--run-dir", str(tmp_path / "r"), "--hostname", "x\x1b[2J 1.2.3.4", "--", "true"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnmkit: --hostname 'x\\x1b[2J 1.2.3.4'"), err


# -- hosts.py: the last line of defence ---------------------------------------------------------

def _entries(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[6:]]


def test_render_all_leaves_out_names_that_would_add_entries() -> None:
    att = {"network_id": "n" * 64, "address": "10.0.0.2/24", "address_v6": "", "aliases": ["ok", "x 10.9.9.9 evil"]}
    members = {
        "bad": Member("bad\n10.6.6.6 bank", "h\tx", ({**att, "aliases": ["ok", "x 10.9.9.9 evil", "y\nz"]},)),
        "good": Member("good", "good", ({**att, "address": "10.0.0.3/24", "aliases": []},)),
    }
    files = render_all(members)
    for text in files.values():
        for words in _entries(text):
            assert words[0] in ("10.0.0.2", "10.0.0.3"), text
        assert "10.6.6.6" not in text and "10.9.9.9" not in text and "bank" not in text
    assert ["10.0.0.2", "ok"] in _entries(files["good"])
    assert ["10.0.0.3", "good"] in _entries(files["bad"])


def test_render_leaves_out_bad_addresses() -> None:
    text = render_hosts([HostEntry("10.0.0.2", ("web",))],
                        [HostEntry("10.0.0.3 10.6.6.6", ("x",)), HostEntry("fe80::1%eth0\nbank", ("y",)),
                         HostEntry("fd00::1", ("v6",))])
    assert _entries(text) == [["10.0.0.2", "web"], ["fd00::1", "v6"]]
    members = {"c": Member("c", "c", ({"network_id": "n", "address": "not-an-ip/24", "address_v6": "fd00::5/64"},))}
    assert _entries(render_all(members)["c"]) == [["fd00::5", "c"]]
