"""Inside the user-mode-linux guest (a kernel with 802.1Q) ``cnmkit doctor`` says so: the other
side of tests/kernel/test_doctor_kernel.py, where this machine's kernel lacks it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from drivers.capabilities import has_8021q

ROOT = Path(__file__).resolve().parents[2]


def test_doctor_sees_8021q_in_the_guest() -> None:
    out = subprocess.run([sys.executable, "-m", "cli.main", "doctor", "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    report = {c["name"]: c for c in data["capabilities"]}
    assert report["8021q"]["available"] is True, report["8021q"]
    assert report["bridge_vlan_filtering"]["available"] is True, report["bridge_vlan_filtering"]
    assert report["vxlan"]["available"] is True and report["macvlan"]["available"] is True
    assert data["kernel"] == subprocess.run(["uname", "-r"], capture_output=True, text=True,
                                            check=True).stdout.strip()
    assert has_8021q() is True
