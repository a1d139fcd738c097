"""What a deploy checks before it makes anything: a lab this host cannot carry fails with one
line and leaves nothing, not even the bridges and networks an earlier step would have made.

- A VLAN network needs 802.1Q. The driver asks the same probe (drivers/capabilities.py), but
  only when that network's turn comes, after the lab's bridges and any earlier network.
- Its trunk must be there when the network is made: a bridge this deploy makes, or an interface
  of the host's namespace that the deploy does not remove.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from drivers.capabilities import NO_8021Q, probe_8021q
from drivers.errors import KernelError
from lab import links, names
from lab.plan import CREATE, REMOVE, Action
from lab.spec import VLAN_PARENT


def _host_link_names() -> set[str] | None:
    """The host namespace's interface names, or None when the kernel would not list them (the
    driver then reports a missing parent itself)."""
    try:
        return {str(link["name"]) for link in links.host_links()}
    except (KernelError, OSError):
        return None


def problem(actions: Sequence[Action], probe: Callable[[], bool | None] = probe_8021q,
            host_links: Callable[[], set[str] | None] = _host_link_names) -> str | None:
    """The one line that stops this deploy before its first step, or None."""
    vlans = [a for a in actions if a.verb == CREATE and a.kind == "network" and a.spec["driver"] == "vlan"]
    if not vlans:
        return None
    if probe() is False:                        # None (could not tell): the driver decides
        return f"{vlans[0].describe()}: {NO_8021Q}"
    made = {a.name for a in actions if a.verb == CREATE and a.kind == "bridge"}
    gone = {a.name for a in actions if a.verb == REMOVE and a.kind == "bridge"} - made
    found = host_links()
    if found is None:
        return None
    present = found - gone
    for action in vlans:
        parent = action.spec["options"][VLAN_PARENT]
        if parent not in made and parent not in present:
            return (f"{action.describe()}: option parent: interface {names.shown(parent)} does not exist on this "
                    "host (nor is it a kind: bridge node of this lab)")
    return None
