"""One wrapper for every CLI verb that runs on the embedded runtime (containers, labs).

It opens the runtime's service, hands the verb what it works on (the service itself, or a
service built on it), turns every error the verb can foresee into ``cnmkit: <message>`` and
exit 1, Ctrl-C into exit 130 with no traceback, closes the service whatever happened, and
exits with the verb's own status when it returns one (``exec``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from cli.output import fail
from client.engine import DaemonUnavailable, PluginError

if TYPE_CHECKING:
    from runtime.containers import ContainerService

T = TypeVar("T")


def guarded(fn: Callable[[argparse.Namespace, T], int | None], make: Callable[[ContainerService], T],
            errors: Callable[[], tuple[type[Exception], ...]] = tuple) -> Callable[[argparse.Namespace], None]:
    """``fn(args, make(service))`` with the handling above; ``errors()`` names the foreseen errors
    beyond the runtime's and the client's (a function: its modules are imported only when run)."""

    def wrapper(args: argparse.Namespace) -> None:
        # Imported here: the runtime pulls in pyroute2 (~120 ms), which `cnmkit network ls` never needs.
        from runtime.containers import ContainerError, ContainerService

        foreseen: tuple[type[Exception], ...] = (ContainerError, PluginError, DaemonUnavailable, *errors())
        svc = ContainerService(args.state_dir, args.plugin_dir, getattr(args, "run_dir", None))
        try:
            code = fn(args, make(svc))
        except foreseen as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        finally:
            svc.close()
        if code:
            raise SystemExit(code)

    return wrapper
