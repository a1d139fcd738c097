"""The README's first two commands work as written on a fresh Debian 12 machine, as root, which
has no ``sudo``; .ci/run runs the same test command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _sudo_calls(script: str) -> list[str]:
    """Lines of a shell script that run ``sudo`` (as a command word; comments left out)."""
    calls = []
    for line in script.splitlines():
        code = "" if line.lstrip().startswith("#") else line
        if re.search(r"(^|[\s;&|(`])sudo(\s|$)", code):
            calls.append(line)
    return calls


def test_readme_commands_need_no_sudo() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    for command in commands:
        for part in command.split("&&"):
            argv = shlex.split(part)
            assert argv[0] in ("bash", ".venv/bin/python"), command      # on a fresh machine or installed
            assert "sudo" not in argv, command
            if argv[0] == "bash":
                assert (ROOT / argv[1]).is_file(), argv[1]


def test_scripts_never_call_sudo() -> None:
    for path in (ROOT / "scripts" / "demo.sh", ROOT / "scripts" / "install.sh", ROOT / ".ci" / "run"):
        assert _sudo_calls(path.read_text()) == [], path
    assert _sudo_calls("set -e\n  sudo ip netns add x\n") == ["  sudo ip netns add x"]
    assert _sudo_calls("x && sudo true\n# sudo in a comment\n") == ["x && sudo true"]


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _readme_commands()[1].split("&&")[1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "bash scripts/install.sh" in ci
    assert any(line.startswith(test_command) for line in ci), test_command


def test_install_brings_python_venv_on_a_bare_debian() -> None:
    """Debian's python3 has no ensurepip without python3-venv, and a bare image has neither."""
    script = (ROOT / "scripts" / "install.sh").read_text()
    packages = re.search(r"packages=\((.*?)\)", script, re.S)
    assert packages is not None
    assert {"python3", "python3-venv", "ca-certificates", "busybox-static", "iptables"} <= set(
        packages.group(1).split())


def test_readme_labs_section_shows_a_committed_graph_of_an_example() -> None:
    """The README's lab graph is a committed SVG of an example, with every node of it drawn."""
    from lab import spec

    text = (ROOT / "README.md").read_text()
    found = re.search(r"!\[[^]]*\]\((examples/labs/([a-z0-9-]+)\.svg)\)", text)
    assert found is not None, "the Labs section shows no example's graph"
    svg = (ROOT / found.group(1)).read_text()
    lab = spec.load_file(str(ROOT / "examples" / "labs" / f"{found.group(2)}.clab.yml"))
    assert svg.startswith("<?xml") and f"<title>{lab.name}</title>" in svg
    for node in lab.nodes:
        assert f">{node}<" in svg, node


def test_demo_deploys_pings_and_destroys_an_example_lab() -> None:
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    lab = re.search(r"^LAB=(\S+)$", demo, re.M)
    assert lab is not None and (ROOT / lab.group(1)).is_file()
    for verb in ('lab deploy "$LAB"', 'lab exec "$LAB" h1 -- ping', 'lab destroy "$LAB"', "lab destroy --name"):
        assert verb in demo, verb
