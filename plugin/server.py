"""The daemon: builds every part once, serves one unix socket per role, stops cleanly.

Sockets appear only once every part is built, because dockerd activates a plugin once per
lifetime and a failed first GetCapabilities leaves the driver unusable until dockerd restarts
(protocol.md §1.4). A stale socket from a crashed run is removed before binding: a dead
socket costs dockerd 15 s of retries per lookup (§6.4). On SIGTERM/SIGINT the sockets go
away and the kernel state stays, so running containers keep their network.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import random
import signal
import socket
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from agent.hosts import DEFAULT_GRACE, DEFAULT_TTL, HostLiveness, default_advertise, default_host_id
from agent.netwatch import NetworkDeletionWatch
from agent.peer_names import RemotePeerNames
from agent.reconcile import Agent
from drivers.base import NetworkDriver
from drivers.manager import NetworkManager
from drivers.reaper import InFlight
from drivers.registry import DriverSettings, build_drivers
from ipam.hostroutes import host_networks
from ipam.service import IpamService
from plugin import profile
from plugin.app import build_ipam_app, build_network_app
from plugin.listener import BoundedSockSite
from store.base import Store, StoreError, Unavailable
from store.guard import GuardedStore, display_url
from store.records import NetworkRecord
from store.url import open_store

if TYPE_CHECKING:
    from agent.dns import OverlayDNS
    from agent.dockernames import NameLearner
    from agent.overlay import OverlayAgent

log = logging.getLogger("cnmkit.daemon")

DEFAULT_PLUGIN_DIR = "/run/docker/plugins"
DEFAULT_STATE_DIR = "/var/lib/cnmkit"
IPAM_SOCKET = "cnmkit.sock"
ENGINE_NETNS_DIRS = ("/var/run/docker/netns", "/run/docker/netns")


def default_sandbox_dirs() -> list[str]:
    """Where sandboxes a direct Join may open live: dockerd's, and our runtime's <run_dir>/netns.

    The runtime's run dir follows CNMKIT_RUN_DIR (as the runtime's --run-dir default does), so a
    daemon started from the same environment as the runtime agrees with it without options.
    """
    run_dir = os.environ.get("CNMKIT_RUN_DIR") or "/run/cnmkit"
    return [*ENGINE_NETNS_DIRS, os.path.join(os.path.abspath(run_dir), "netns")]


@dataclass
class DaemonConfig:
    plugin_dir: str = DEFAULT_PLUGIN_DIR
    state_dir: str = DEFAULT_STATE_DIR
    store_url: str = ""                     # empty: sqlite under state_dir
    drivers: list[str] = field(default_factory=lambda: ["bridge", "vlan", "vxlan"])
    vlan_range: tuple[int, int] | None = None   # the VLAN driver's VID pool (None: 2-4094)
    workers: int = 4
    sandbox_dirs: list[str] = field(default_factory=default_sandbox_dirs)
    # Per socket. dockerd keeps a handful of connections per plugin; the cap stops idle or
    # hostile clients from using up the daemon's fds (issue 6), the timeout frees idle ones.
    max_connections: int = 128
    idle_timeout: float = 75.0              # seconds a connection may wait for its next request
    accept_retry_delay: float = 1.0         # seconds without accepting after running out of fds
    cleanup: bool = True                    # reconcile removes marked orphans (--no-cleanup: not)
    reconcile_interval: float = 60.0        # seconds between periodic passes; 0: only at start
    store_retry_max: float = 30.0           # cap of the backoff between attempts to reach the store
    host_id: str = ""                       # empty: /etc/machine-id, else the hostname (agent/hosts.py)
    advertise: str = ""                     # empty: the address of the default route's device
    host_ttl: int = DEFAULT_TTL             # seconds of the lease on hosts/<host-id>
    host_grace: float = DEFAULT_GRACE       # seconds a gone host keeps its addresses
    docker_socket: str = ""                 # dockerd's API, for its overlay containers' names ("": off;
                                            # the CLI's default is /var/run/docker.sock)
    overlay_dns: bool = True                # answer DNS at each overlay's gateway (agent/dns.py)

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite://{os.path.join(os.path.abspath(self.state_dir), 'state.db')}"


def _prepare_socket(path: str) -> socket.socket:
    """Bind a fresh socket, replacing a stale file only if no live daemon answers there."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise RuntimeError(f"another daemon is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    try:
        gid = grp.getgrnam("docker").gr_gid
        os.chown(path, 0, gid)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP)
    except KeyError:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return sock


class Daemon:
    def __init__(self, config: DaemonConfig, store: Store | None = None,
                 drivers: list[NetworkDriver] | None = None) -> None:
        self.config = config
        url = config.resolved_store_url()
        self.store_url = display_url(url)
        self.store = profile.wrap(store or GuardedStore(open_store(url), url), "store")
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="cnmkit")
        # -- host identity (agent/hosts.py): every record of this host carries its id
        self.host_id = config.host_id or default_host_id()
        self.inflight = InFlight()              # requests being served: the reaper's batches wait for none
        advertise = config.advertise or default_advertise()
        if not advertise:
            log.warning("no default route to take an address from: pass --advertise (needed once "
                        "hosts exchange traffic)")
        self.drivers = drivers if drivers is not None else build_drivers(
            config.drivers, self.store, DriverSettings(sandbox_dirs=tuple(config.sandbox_dirs),
                                                       host_id=self.host_id, advertise=advertise,
                                                       vlan_range=config.vlan_range, idle=self.inflight))
        self.manager = NetworkManager(self.store, {d.name: d for d in self.drivers}, self.executor,
                                      host_id=self.host_id)
        self.ipam = IpamService(self.store, avoid=host_networks, host_id=self.host_id)
        self.agent = Agent(self.store, self.manager.drivers, self.executor, self.manager.network_lock,
                           host_id=self.host_id)
        # The runtime keeps its containers under the daemon's state dir (the CLI's --state-dir).
        self.peer_names = RemotePeerNames(self.store, config.state_dir)
        self.hosts = HostLiveness(self.store, self.host_id, advertise, ttl=config.host_ttl,
                                  grace=config.host_grace, reclaim=self.ipam.reclaim_host,
                                  holders=self.ipam.hosts_holding)
        self.names = self._name_learner()
        self._runners: list[web.AppRunner] = []
        self.socket_paths: list[str] = []

    async def start(self) -> None:
        os.makedirs(self.config.plugin_dir, mode=0o755, exist_ok=True)
        apps = [(IPAM_SOCKET, build_ipam_app(self.ipam, self.manager, self.executor, self.agent, self.hosts,
                                             self.inflight))]
        apps += [(f"{d.name}.sock", build_network_app(d, self.manager, self.inflight)) for d in self.drivers]
        for filename, app in apps:
            path = os.path.join(self.config.plugin_dir, filename)
            runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                   keepalive_timeout=self.config.idle_timeout)
            await runner.setup()
            sock = _prepare_socket(path)
            await BoundedSockSite(runner, sock, limit=self.config.max_connections,
                                  retry_delay=self.config.accept_retry_delay).start()
            self._runners.append(runner)
            self.socket_paths.append(path)
            log.info("serving %s", path)

    def _name_learner(self) -> NameLearner | None:
        """dockerd's overlay containers get their names from its API after Join (agent/dockernames.py)."""
        if "cnmkit-vxlan" not in self.manager.drivers:
            return None
        path = self.config.docker_socket
        if not path:
            log.info("docker names: off (no --docker-socket): other hosts cannot resolve dockerd's containers")
            return None
        from agent.dockernames import NameLearner, UnixDockerAPI

        log.info("docker names: asking %s for the names of dockerd's overlay containers%s", path,
                 "" if os.path.exists(path) else " (not there yet: from when it answers)")
        learner = NameLearner(UnixDockerAPI(path), self.store, self.manager.record_names,
                              run=lambda fn, *args: asyncio.get_running_loop().run_in_executor(
                                  self.executor, fn, *args))
        self.manager.joined.append(learner.joined)
        return learner

    async def stop(self) -> None:
        for path in self.socket_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self.names is not None:
            await self.names.close()
        self.executor.shutdown(wait=True)
        for driver in self.drivers:
            close = getattr(driver, "close", None)   # the bridge's reaper deletes what is marked
            if callable(close):
                await asyncio.get_running_loop().run_in_executor(None, close)
        self.store.close()

    async def serve_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if profile.enabled():                        # bench/endpoint_lifecycle.py's per-call profile
            loop.add_signal_handler(signal.SIGUSR1, profile.dump)
        # -- reconciling agent (agent/reconcile.py): the kernel made to match the store before
        # dockerd can reach us, then again every reconcile_interval seconds. Until the store
        # answers, nothing is served (no socket: dockerd must not activate a half-working plugin).
        if not await self._reconcile_when_reachable(stop):
            await self._shutdown_unserved()
            return
        periodic = None
        if self.config.reconcile_interval > 0:
            periodic = asyncio.create_task(self.agent.run_every(self.config.reconcile_interval,
                                                                cleanup=self.config.cleanup))
        # -- end of reconciling agent
        # -- deletions of this host's networks by other hosts (agent/netwatch.py), acted on at once
        netwatch = self._network_deletion_watch(loop)
        netwatch.start()
        # -- end of network deletions
        # -- host liveness (agent/hosts.py): our leased record, the watch of the others, reclaim
        await loop.run_in_executor(self.executor, self.hosts.register)
        self.hosts.start_watch()
        liveness = asyncio.create_task(self.hosts.run())
        # -- end of host liveness
        # -- overlay entries (agent/overlay.py): FDB and neighbour entries of remote endpoints
        # and the runtime containers' hosts files, with other hosts' peers (agent/peer_names.py)
        overlay = self._overlay_agent()
        dns = self._overlay_dns(overlay)
        if overlay is not None:
            self.peer_names.start()
            overlay.start()
        # -- end of overlay entries
        await self.start()
        if self.names is not None:
            try:
                await self.names.sweep(self.host_id)
            except StoreError as exc:             # names are worth a line, not a failed start
                log.warning("docker names: start-up look-up skipped: %s", exc)
        pid_path = os.path.join(self.config.state_dir, "daemon.pid")
        with open(pid_path, "w") as f:
            f.write(f"{os.getpid()}\n")
        try:
            await stop.wait()
        finally:
            log.info("stopping: sockets removed, kernel state kept")
            if periodic is not None:
                periodic.cancel()
            liveness.cancel()
            if overlay is not None:
                await loop.run_in_executor(None, overlay.stop)
                await loop.run_in_executor(None, self.peer_names.stop)
            if dns is not None:
                await loop.run_in_executor(None, dns.stop)
            await loop.run_in_executor(None, netwatch.stop)
            self.hosts.stop_watch()
            await loop.run_in_executor(None, self.hosts.deregister)
            await self.stop()
            profile.dump()
            try:
                os.unlink(pid_path)
            except FileNotFoundError:
                pass


    def _network_deletion_watch(self, loop: asyncio.AbstractEventLoop) -> NetworkDeletionWatch:
        from drivers.vxlan import DRIVER_NAME as OVERLAY_DRIVER

        def removed(network_id: str, rec: NetworkRecord) -> None:   # on the watch's thread
            self.manager.cache.forget_network(network_id)       # its writes would have failed anyway
            done = asyncio.run_coroutine_threadsafe(self.agent.remove_deleted(network_id, rec), loop)
            done.add_done_callback(partial(_log_failed_removal, network_id))

        # Overlay namespaces follow the records through the overlay agent's own watch.
        return NetworkDeletionWatch(self.store, self.host_id, removed, deleted_here=self.manager.dropped_here,
                                    skip_drivers=(OVERLAY_DRIVER,))

    def _overlay_agent(self) -> OverlayAgent | None:
        from agent.overlay import OverlayAgent  # imports netlink: only when serving
        from drivers.vxlan import VxlanDriver

        vxlan = next((d for d in self.drivers if isinstance(d, VxlanDriver)), None)
        if vxlan is None:
            return None
        interval = self.config.reconcile_interval or 60.0
        return OverlayAgent(self.store, vxlan, self.host_id, resync_interval=interval,
                            on_endpoints=self.peer_names.changed)

    def _overlay_dns(self, overlay: OverlayAgent | None) -> OverlayDNS | None:
        """DNS at each overlay's gateway, fed by the overlay agent's watch (agent/dns.py)."""
        if overlay is None or not self.config.overlay_dns:
            return None
        from agent.dns import OverlayDNS

        dns = OverlayDNS(overlay.driver.host, self.host_id)
        overlay.listeners.append(dns)
        dns.start()
        return dns

    async def _reconcile_when_reachable(self, stop: asyncio.Event) -> bool:
        """The start-up pass, retried while the store is unreachable; False if stopped meanwhile.

        One log line per failed attempt, then a capped, jittered exponential pause: a store that
        stays away for hours costs a line every ``store_retry_max`` seconds, and many daemons
        restarted together do not hammer it in step (libnetwork#408: a Consul restart pegged
        dockerd in a retry loop). The attempt itself is bounded by the backend's deadline.
        """
        pause = 1.0
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                attempt = asyncio.ensure_future(
                    self.agent.reconcile(cleanup=self.config.cleanup, unattended=True))
                await asyncio.wait([attempt, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not attempt.done():               # SIGTERM while the store is being tried
                    attempt.cancel()
                    return False
                try:
                    attempt.result()
                    return True
                except Unavailable as exc:
                    delay = random.uniform(pause / 2, pause)
                    log.error("%s; not serving yet, retrying in %.1f s", exc, delay)
                    pause = min(pause * 2, self.config.store_retry_max)
                await asyncio.wait([stopped], timeout=delay)
            return False
        finally:
            stopped.cancel()

    async def _shutdown_unserved(self) -> None:
        log.info("stopping before the store was reached: nothing was served")
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def _log_failed_removal(network_id: str, done: Future[list[str]]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("network %s: removing it after its record was deleted: %s (the next reconcile pass "
                    "retries)", network_id[:12], done.exception())


def run_daemon(config: DaemonConfig) -> None:
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    asyncio.run(Daemon(config).serve_forever())
