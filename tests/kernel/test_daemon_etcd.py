"""The real daemon on a real 3-member etcd cluster, both inside one throwaway "host" namespace.

``cnmkit daemon --store etcd://a,b,c`` must keep its records in etcd (read back with etcdctl,
independently of our client), build the same kernel objects (read with ``ip -j``), and keep
serving when a member dies.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.etcd_cluster import EtcdCluster, require_etcd
from tests.kernel.test_daemon_process import HostDaemon


def test_daemon_on_etcd_creates_inspects_and_removes_a_network(netns: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    require_etcd()
    cluster = EtcdCluster(netns=netns)
    daemon = HostDaemon(netns, tmp_path)
    try:
        cluster.start()
        monkeypatch.setenv("CNMKIT_STORE", cluster.url)  # the CLI's --store default, daemon and clients
        daemon.start()
        made = daemon.cli("network", "create", "--subnet", "10.98.0.0/24", "shared")
        assert made.returncode == 0, made.stderr
        (net,) = json.loads(daemon.cli("network", "inspect", "shared").stdout)
        assert [b["ifalias"] for b in daemon.bridges()] == [f"cnmkit:net:{net['Id']}"]
        assert any(net["Id"] in key for key in cluster.keys("")), "the record lives in etcd"
        assert [n["Name"] for n in json.loads(daemon.cli("--format", "json", "network", "ls").stdout)] == ["shared"]

        cluster.kill(cluster.leader())  # losing the leader is not the daemon's problem
        listed = daemon.cli("--format", "json", "network", "ls")
        assert listed.returncode == 0, listed.stderr
        assert [n["Name"] for n in json.loads(listed.stdout)] == ["shared"]
        removed = daemon.cli("network", "rm", "shared")
        assert removed.returncode == 0, removed.stderr
        assert daemon.bridges() == []
        assert not any(net["Id"] in key for key in cluster.keys(""))
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        if daemon.proc is not None:
            daemon.stop(signal.SIGKILL)
        cluster.stop()
