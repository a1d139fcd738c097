"""Start a set of containers with one call: the seam a lab's deploy goes through.

Today a loop over ``ContainerService.run`` (one shim per container); a faster bring-up (many
containers without a Python interpreter per node) replaces the body of ``start_nodes`` and
nothing that calls it changes. The contract either way:

- every node that started is returned, in order, with its id and network namespace;
- on the first failure, ``BatchError`` carries the nodes started so far (still running: the
  caller records them, so a re-run or a destroy finds them) and the failed node left nothing
  behind (no record, namespace, endpoint or address), as ``run`` guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from client.engine import DaemonUnavailable, PluginError
from runtime.containers import ContainerError, ContainerService


@dataclass(frozen=True)
class NodeStart:
    """One container to start detached: ``networks`` as ``cnmkit run --network`` takes them."""

    name: str
    command: list[str]
    hostname: str
    networks: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    rootfs: str | None = None


@dataclass(frozen=True)
class Started:
    name: str
    id: str
    netns: str


class BatchError(ContainerError):
    def __init__(self, message: str, started: list[Started], failed: str) -> None:
        super().__init__(message)
        self.started = started
        self.failed = failed


def start_nodes(svc: ContainerService, nodes: Sequence[NodeStart],
                progress: Callable[[Started], None] | None = None) -> list[Started]:
    """Start every node (detached); ``progress`` is called as each one is up."""
    started: list[Started] = []
    for node in nodes:
        try:
            cid, _shim = svc.run(node.command, name=node.name, networks=node.networks, hostname=node.hostname,
                                 rootfs=node.rootfs, env=node.env, detach=True)
        except (ContainerError, PluginError, DaemonUnavailable) as exc:
            raise BatchError(f"{node.name}: {exc}", started, node.name) from None
        netns = str(svc.inspect(cid)["NetworkSettings"]["SandboxKey"])
        done = Started(name=node.name, id=cid, netns=netns)
        started.append(done)
        if progress is not None:
            progress(done)
    return started
