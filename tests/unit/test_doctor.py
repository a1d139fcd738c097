"""``cnmkit doctor``'s parsing and output, on canned probe answers (the kernel tier and the
user-mode-linux guest run it for real)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from cli import doctor
from cli.main import main
from drivers import capabilities as caps
from drivers.capabilities import Capability

LINKS_NO_8021Q = ("bridge\t0\t\nveth\t0\t\nvxlan\t0\t\n8021q\t2\tError: Unknown device type.\n"
                  "bridge_vlan_filtering\t2\tRTNETLINK answers: Operation not supported\nmacvlan\t0\t\n")


class FakeRun:
    """Answers the commands capabilities runs; records them."""

    def __init__(self, links: str = LINKS_NO_8021Q, links_rc: int = 0, links_err: str = "",
                 forward: str = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n") -> None:
        self.links, self.links_rc, self.links_err, self.forward = links, links_rc, links_err, forward
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "unshare":
            return subprocess.CompletedProcess(argv, self.links_rc, self.links, self.links_err)
        if argv[:2] == ["iptables", "--version"]:
            return subprocess.CompletedProcess(argv, 0, "iptables v1.8.9 (legacy)\n", "")
        if argv[0] == "iptables":
            return subprocess.CompletedProcess(argv, 0, self.forward, "")
        return subprocess.CompletedProcess(argv, 127, "", "not found")


@pytest.fixture(autouse=True)
def _tools_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None if name == "nft" else f"/usr/sbin/{name}")


def test_link_probes_read_status_and_ip_error() -> None:
    found = {c.name: c for c in caps.probe_links(run=FakeRun())}
    assert found["8021q"].available is False
    assert found["8021q"].detail == "Error: Unknown device type."
    assert found["8021q"].if_missing == "cnmkit-vlan networks unavailable"
    assert found["vxlan"].available is True
    assert found["macvlan"].detail.endswith("ip link add link <veth> name cnmkd-mv type macvlan mode bridge")


def test_a_probe_with_no_answer_is_unknown_not_missing() -> None:
    found = {c.name: c for c in caps.probe_links(run=FakeRun(links="bridge\t0\t\n"))}
    assert found["bridge"].available is True
    assert found["vxlan"].available is None and "no answer" in found["vxlan"].detail


def test_no_namespace_means_unknown_with_the_reason() -> None:
    run = FakeRun(links="", links_rc=1, links_err="unshare: unshare failed: Operation not permitted\n")
    found = caps.probe_links(run=run)
    assert {c.available for c in found} == {None}
    assert "Operation not permitted" in found[0].detail


def test_probes_run_in_a_new_network_namespace_only() -> None:
    run = FakeRun()
    caps.probe_links(run=run)
    [call] = run.calls
    assert call[:3] == ["unshare", "--net", "--"]


def test_has_8021q_asks_only_for_8021q() -> None:
    run = FakeRun(links="8021q\t0\t\n")
    assert caps.has_8021q(run) is True
    assert "type vlan" in run.calls[0][-1] and "vxlan" not in run.calls[0][-1]
    assert caps.has_8021q(FakeRun(links="8021q\t2\tError: Unknown device type.\n")) is False


def test_settings_come_from_proc_sys(tmp_path: Path) -> None:
    (tmp_path / "net/bridge").mkdir(parents=True)
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "net/bridge/bridge-nf-call-iptables").write_text("1\n")
    (tmp_path / "net/bridge/bridge-nf-call-ip6tables").write_text("0\n")
    (tmp_path / "net/ipv4/ip_forward").write_text("0\n")
    found = {c.name: c for c in caps.probe_settings(str(tmp_path))}
    assert found["br_netfilter"].available is True
    assert found["bridge-nf-call-iptables"].detail.startswith("1: bridged IPv4 traffic passes")
    assert found["bridge-nf-call-ip6tables"].detail.startswith("0: bridged IPv6 traffic skips")
    assert found["ip_forward"].available is False
    assert caps.probe_settings(str(tmp_path / "none"))[0].available is False


def test_firewall_backend_and_forward_policy() -> None:
    found = {c.name: c for c in caps.probe_firewall(FakeRun())}
    assert found["iptables"].detail == "iptables v1.8.9 (legacy), backend legacy"
    assert found["forward_policy"].detail.startswith("DROP")
    assert found["nftables"].available is False
    assert caps.iptables_backend("iptables v1.8.9 (nf_tables)") == "nf_tables"
    unreadable = {c.name: c for c in caps.probe_firewall(FakeRun(forward=""))}
    assert unreadable["forward_policy"].available is None            # unknown, not missing


def _sample() -> list[Capability]:
    return [Capability("vxlan", "VXLAN", True, "made", "overlay unavailable"),
            Capability("8021q", "802.1Q", False, "Error: Unknown device type.", "cnmkit-vlan networks unavailable"),
            Capability("macvlan", "macvlan", None, "cannot probe\x1b[2J", "macvlan mode unavailable")]


def test_table_says_what_each_missing_one_disables() -> None:
    text = doctor.render_table(_sample(), "6.1.176")
    rows = {line.split()[0]: line for line in text.splitlines()[1:-1]}
    assert rows["8021q"].split()[1] == "NO" and rows["8021q"].endswith("cnmkit-vlan networks unavailable")
    assert rows["vxlan"].split()[1] == "yes" and "overlay unavailable" not in rows["vxlan"]
    assert rows["macvlan"].split()[1] == "?" and "\x1b" not in text          # escaped, not sent to the tty
    assert text.splitlines()[-1] == "kernel 6.1.176: 1 missing (8021q)"


def test_json_shape(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(doctor, "probe_all", _sample)
    main(["doctor", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"kernel", "capabilities", "missing"}
    assert data["missing"] == ["8021q"]
    assert [c["name"] for c in data["capabilities"]] == ["vxlan", "8021q", "macvlan"]
    assert set(data["capabilities"][1]) == {"name", "title", "available", "detail", "if_missing"}
    assert data["capabilities"][2]["available"] is None
    main(["--format", "json", "doctor"])                        # the global option before the command too
    assert json.loads(capsys.readouterr().out)["missing"] == ["8021q"]
