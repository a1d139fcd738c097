"""``docker run --rm`` through a real dockerd: a cnmkit-bridge network vs Docker's own bridge vs none.

Issue 11 item 2: what a cnmkit-bridge network adds to ``docker run --rm`` over ``--network none``
must be at most 0.85 times what a network of Docker's own (in-process) bridge driver adds, and
``docker network create``/``rm`` no slower than Docker's bridge. One run, interleaved: every round
runs the three variants in shuffled order (``docker run --rm --network X IMAGE sh -c :``), and the
network create/rm pairs alternate between the two drivers.

Runs like the docker tier (tests/docker/conftest.py): under the shared lock
``/tmp/cnmkit-docker.lock`` (taken here with flock(2), so ``flock`` on the command line is not
needed), with the dockerd that already answers or one it starts itself (and stops afterwards;
never one it did not start), and a cnmkit daemon serving /run/docker/plugins (refused if another
one already does). Networks and containers are named ``cnmb-<pid>-...`` and removed by name.

    PYTHONPATH=. .venv/bin/python bench/docker_run.py [--rounds 12] [--net-rounds 5]
        [--default-ipam] [--baseline-code DIR] [--profile]

``--default-ipam`` adds a variant: a cnmkit-bridge network on dockerd's built-in IPAM (no
RequestAddress/ReleaseAddress round trips). ``--baseline-code DIR`` runs a second cnmkit daemon from
another checkout (e.g. ``git archive main | tar -x -C DIR``) in the same run, as driver
``cnmkit-base-bridge`` / IPAM ``cnmkit-base``: its sockets live in a private directory and are
symlinked into /run/docker/plugins under those names (dockerd's lookup follows the link, and
nothing in a request tells the daemon which name was used). Before/after, interleaved with the
same load. Both daemons run with ``--reconcile-interval 0``: a periodic pass would take the other
daemon's bridges and rules for orphans (it has no record of them).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Summary, machine_info, markdown_table, write_results

LOCK = "/tmp/cnmkit-docker.lock"
PLUGIN_DIR = "/run/docker/plugins"
IMAGE = "cnmkit-test-bb:latest"                 # the docker tier's image, made the same way if absent
ENV = {**os.environ, "DOCKER_API_VERSION": "1.41"}


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def docker_up() -> bool:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return subprocess.run(["docker", "version"], capture_output=True, env=ENV, timeout=10).returncode == 0
    return False


def ms(*args: str) -> float:
    t = time.perf_counter()
    docker(*args)
    return (time.perf_counter() - t) * 1000


def ensure_image() -> None:
    if docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory() as root:
        bindir = Path(root, "bin")
        bindir.mkdir()
        shutil.copy(busybox, bindir / "busybox")
        for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split():
            if applet != "busybox":
                (bindir / applet).symlink_to("busybox")
        for d in ("etc", "tmp", "proc", "sys", "dev"):
            Path(root, d).mkdir(exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", IMAGE], stdin=tar.stdout, env=ENV, check=True, capture_output=True)
        tar.wait()


BASE_LINKS = {"cnmkit-base-bridge.sock": "cnmkit-bridge.sock", "cnmkit-base.sock": "cnmkit.sock"}


def start_cnmkit(code: Path, plugin_dir: str, state: str, name: str, profile_file: str | None
                 ) -> subprocess.Popen[bytes]:
    """A cnmkit daemon from the tree ``code`` serving ``plugin_dir``; returns once its bridge socket is there."""
    log = open(os.path.join(state, f"{name}.log"), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--plugin-dir", plugin_dir, "--state-dir",
                             os.path.join(state, name), "--log-level", "warning", "daemon",
                             "--reconcile-interval", "0"],
                            stdout=log, stderr=log, cwd=code, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1",
                                 **({"CNMKIT_PROFILE": profile_file} if profile_file else {})})
    while not os.path.exists(os.path.join(plugin_dir, "cnmkit-bridge.sock")):
        if proc.poll() is not None:
            raise RuntimeError(Path(state, f"{name}.log").read_text()[-2000:])
        time.sleep(0.05)
    return proc


def stop_cnmkit(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


class Events:
    """``docker events`` as JSON lines, read as they come (a full pipe would make dockerd drop some)."""

    def __init__(self, *filters: str) -> None:
        self.proc = subprocess.Popen(["docker", "events", *filters, "--format", "{{json .}}"],
                                     stdout=subprocess.PIPE, text=True, env=ENV)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or ()), daemon=True).start()

    def stop(self, marker: str) -> list[str]:
        """Run one more container named ``marker``; once its destroy is read, every earlier event is."""
        docker("run", "--rm", "--name", marker, "--network", "none", IMAGE, "sh", "-c", ":")
        deadline = time.monotonic() + 60
        while not any(marker in line and '"destroy"' in line for line in list(self.lines)):
            if time.monotonic() > deadline:
                raise RuntimeError("dockerd's events stopped arriving")
            time.sleep(0.05)
        self.proc.terminate()
        self.proc.wait()
        return [line for line in self.lines if line.strip()]


def in_dockerd(lines: list[str], names: dict[str, str], variants: list[str]) -> dict[str, list[float]]:
    """Per variant, dockerd's own time from a container's ``create`` to its ``destroy`` event (ms).

    The same containers as the wall-clock figures, without the docker CLI's start-up and API
    round trips, which on a loaded machine jitter by more than the difference being measured.
    """
    at: dict[str, dict[str, int]] = {}
    for line in lines:
        ev = json.loads(line)
        name = ev.get("Actor", {}).get("Attributes", {}).get("name", "")
        if name in names and ev.get("Action") in ("create", "destroy"):
            at.setdefault(name, {})[ev["Action"]] = int(ev["timeNano"])
    out: dict[str, list[float]] = {v: [] for v in variants}
    for name, times in at.items():
        if "create" in times and "destroy" in times:
            out[names[name]].append((times["destroy"] - times["create"]) / 1e6)
    return out


def run(args: argparse.Namespace) -> int:
    tag = f"cnmb-{os.getpid()}"
    own_dockerd: subprocess.Popen[bytes] | None = None
    state = tempfile.mkdtemp(prefix="cnmb-docker-")
    cnmkit: subprocess.Popen[bytes] | None = None
    base: subprocess.Popen[bytes] | None = None
    linked: list[str] = []
    made: list[str] = []
    dockerd_ms: dict[str, list[float]] = {}
    profile_file = os.path.join(state, "profile.jsonl")
    profile_rows: list[dict[str, float | str]] = []
    try:
        if not docker_up():
            log = open(os.path.join(state, "dockerd.log"), "wb")
            own_dockerd = subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + 90
            while not docker_up():
                if own_dockerd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd did not start; see {log.name}")
                time.sleep(0.5)
        for name in ("cnmkit.sock", "cnmkit-bridge.sock", *BASE_LINKS):
            if os.path.lexists(os.path.join(PLUGIN_DIR, name)):
                raise RuntimeError(f"{PLUGIN_DIR}/{name} exists: another cnmkit daemon serves dockerd")
        ensure_image()
        cnmkit = start_cnmkit(REPO, PLUGIN_DIR, state, "cnmkit", profile_file if args.profile else None)
        create = {"cnmkit-bridge": ["-d", "cnmkit-bridge", "--ipam-driver", "cnmkit", "--subnet", "10.231.0.0/24"],
                  "bridge": ["-d", "bridge", "--subnet", "10.232.0.0/24"]}
        if args.baseline_code:
            base_dir = os.path.join(state, "base-plugins")
            base = start_cnmkit(Path(args.baseline_code).resolve(), base_dir, state, "base", None)
            for link, target in BASE_LINKS.items():
                os.symlink(os.path.join(base_dir, target), os.path.join(PLUGIN_DIR, link))
                linked.append(os.path.join(PLUGIN_DIR, link))
            create["cnmkit-base-bridge"] = ["-d", "cnmkit-base-bridge", "--ipam-driver", "cnmkit-base",
                                            "--subnet", "10.229.0.0/24"]
        info = machine_info()
        if args.baseline_code:
            info["baseline_code"] = str(args.baseline_code)
        net_ms: dict[str, dict[str, list[float]]] = {d: {"create": [], "rm": []} for d in create}
        for i in range(args.net_rounds + 1):           # the first round is a warm-up
            for driver in (list(create) if i % 2 else list(create)[::-1]):
                name = f"{tag}-n{i}-{driver}"
                made.append(name)
                c = ms("network", "create", *create[driver], name)
                r = ms("network", "rm", name)
                if i:
                    net_ms[driver]["create"].append(c)
                    net_ms[driver]["rm"].append(r)
        nets = {"none": "none", "bridge": f"{tag}-bridge", "cnmkit-bridge": f"{tag}-cnm"}
        if args.default_ipam:
            nets["cnmkit-bridge default IPAM"] = f"{tag}-cnmd"
            create["cnmkit-bridge default IPAM"] = ["-d", "cnmkit-bridge", "--subnet", "10.230.0.0/24"]
        if args.baseline_code:
            nets["cnmkit-base-bridge"] = f"{tag}-base"
        for variant, name in nets.items():
            if variant != "none":
                made.append(name)
                docker("network", "create", *create[variant], name)
        rng = random.Random(args.seed)
        runs: dict[str, list[float]] = {v: [] for v in nets}
        names: dict[str, str] = {}
        events = Events("--filter", "type=container", "--filter", "event=create", "--filter", "event=destroy")
        for i in range(args.rounds + 1):               # round 0 is a warm-up
            order = list(nets)
            rng.shuffle(order)
            for k, variant in enumerate(order):
                name = f"{tag}-r{i}-{k}"
                t = ms("run", "--rm", "--name", name, "--network", nets[variant], IMAGE, "sh", "-c", ":")
                if i:
                    runs[variant].append(t)
                    names[name] = variant
        dockerd_ms = in_dockerd(events.stop(f"{tag}-last"), names, list(nets))
        info["loadavg_end"] = list(os.getloadavg())
    finally:
        for name in made:
            docker("network", "rm", name, check=False)
        for link in linked:
            os.unlink(link)
        stop_cnmkit(base)
        stop_cnmkit(cnmkit)
        if args.profile and os.path.exists(profile_file):   # written by the daemon as it stops
            with open(profile_file) as f:
                profile_rows = [json.loads(line) for line in f if line.strip()]
        if own_dockerd is not None:
            own_dockerd.send_signal(signal.SIGTERM)
            try:
                own_dockerd.wait(timeout=60)
            except subprocess.TimeoutExpired:
                own_dockerd.kill()
                own_dockerd.wait()
        shutil.rmtree(state, ignore_errors=True)
    med = {v: Summary.of(s).median for v, s in runs.items()}
    add_br = med["bridge"] - med["none"]
    rows = [[f"docker run --rm --network {v}", Summary.of(s).text(), f"{med[v] - med['none']:+.1f}"]
            for v, s in runs.items()]
    for driver, per in net_ms.items():
        rows += [[f"docker network {op} -d {driver}", Summary.of(s).text(), ""] for op, s in per.items()]
    print(f"load {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}; {args.rounds} rounds; "
          f"dockerd {'started here' if own_dockerd is not None else 'already running'}; git {info['git_head']}")
    print(markdown_table(["what", "ms min / median / max (N)", "over none"], rows))
    print()
    for variant in (v for v in runs if v.startswith("cnmkit")):
        add = med[variant] - med["none"]
        print(f"added over --network none: {variant} {add:.1f} ms, Docker's bridge {add_br:.1f} ms: "
              f"ratio {add / add_br:.2f} (target <= 0.85)")
    dmed = {v: Summary.of(s).median for v, s in dockerd_ms.items()}
    print("\nthe same containers inside dockerd (its create -> destroy events; no CLI start-up):")
    print(markdown_table(["what", "ms min / median / max (N)", "over none"],
                         [[v, Summary.of(s).text(), f"{dmed[v] - dmed['none']:+.1f}"]
                          for v, s in dockerd_ms.items()]))
    for variant in (v for v in dockerd_ms if v.startswith("cnmkit")):
        add, base_add = dmed[variant] - dmed["none"], dmed["bridge"] - dmed["none"]
        print(f"inside dockerd, added over none: {variant} {add:.1f} ms, Docker's bridge {base_add:.1f} ms: "
              f"ratio {add / base_add:.2f}")
    for op in ("create", "rm"):
        b = Summary.of(net_ms["bridge"][op]).median
        for driver in (d for d in net_ms if d != "bridge"):
            a = Summary.of(net_ms[driver][op]).median
            print(f"docker network {op}: {driver} {a:.1f} ms vs bridge {b:.1f} ms: ratio {a / b:.2f}")
    if profile_rows:
        print("\nper-call profile of the cnmkit daemon (CNMKIT_PROFILE; medians, ms; plugin/profile.py):")
        cols = ("server", "hop", "worker", "store", "kernel")
        table = []
        for call in sorted({str(r["path"]) for r in profile_rows}):
            mine = [r for r in profile_rows if r["path"] == call]
            table.append([call.lstrip("/"), str(len(mine)),
                          *(f"{Summary.of([float(r[c]) for r in mine]).median:.2f}" for c in cols)])
        print(markdown_table(["call", "N", *cols], table))
    path = write_results("docker_run", {"machine": info, "runs_ms": runs, "dockerd_ms": dockerd_ms,
                                        "network_ms": net_ms,
                                        "profile": profile_rows})
    print(f"results: {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--net-rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--default-ipam", action="store_true",
                    help="add a cnmkit-bridge network on dockerd's built-in IPAM as a variant")
    ap.add_argument("--baseline-code", metavar="DIR",
                    help="a second cnmkit checkout, run in the same rounds as cnmkit-base-bridge")
    ap.add_argument("--profile", action="store_true",
                    help="run the daemon with CNMKIT_PROFILE, print its per-call profile")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (dockerd)", file=sys.stderr)
        return 2
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)               # the docker tier's lock: one dockerd user at a time
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
