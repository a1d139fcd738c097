"""The VLAN trunk example (examples/labs/vlan.clab.yml) on THIS machine's kernel.

Without 802.1Q (this machine: "Unknown device type") ``cnmkit lab deploy`` stops before its first
step: exit 1, one line naming the network and the missing feature, and nothing made: no bridge,
link, network, pool, container or lab record (the lab's preflight, lab/preflight.py, asks before
the trunk bridge would be made). On a kernel with 802.1Q the same deploy must succeed and destroy
must leave nothing, so the test asserts something on every kernel; the example's datapath is
tested inside the real-kernel tier (tests/guest/test_guest_vlan_lab.py).
"""

from __future__ import annotations

from tests.runtime.conftest import Host
from tests.runtime.test_labs import EXAMPLES, _assert_clean, _pids, lab_host  # noqa: F401 (fixture)
from tests.runtime.test_vlan_no8021q import _pools, kernel_has_8021q

VLAN_LAB = EXAMPLES / "vlan.clab.yml"


def test_vlan_lab_without_8021q_is_one_line_and_leaves_nothing(lab_host: Host) -> None:  # noqa: F811
    h = lab_host
    out = h.cli("lab", "deploy", str(VLAN_LAB), check=False)
    if kernel_has_8021q():
        assert out.returncode == 0, out.stderr
        pids = _pids(h)
        h.cli("lab", "destroy", str(VLAN_LAB))
        _assert_clean(h, pids)
        return
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("cnmkit: create network vlan-v10: this kernel has no 802.1Q"), lines[0]
    assert "8021q" in lines[0]
    assert h.cli("lab", "ls").stdout.splitlines()[1:] == []
    assert _pools(h) == []
    _assert_clean(h, [])
    gone = h.cli("lab", "destroy", str(VLAN_LAB), check=False)
    assert gone.returncode == 1 and gone.stderr == "cnmkit: no lab vlan is deployed\n"
