"""A fresh supervisor (runtime/supervisor.py, FRESH_FROM) starts as ``python -I -S``: no site, so
no editable-install hook and no PYTHONPATH; ``boot_path`` alone must make the runtime importable,
from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys

from runtime.supervisor import boot_path


def test_boot_path_imports_the_supervisor_without_site_or_pythonpath() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import os, sys; sys.path[:0] = sys.argv[1].split(os.pathsep); "
            "from runtime import supervisor; print(supervisor.__file__)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, os.pathsep.join(boot_path())], cwd="/", env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == os.path.abspath(sys.modules["runtime.supervisor"].__file__)
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import runtime.supervisor"], cwd="/", env=env,
                          capture_output=True, text=True, check=False)
    assert bare.returncode != 0, "without boot_path the runtime is not importable there: the test would prove nothing"
