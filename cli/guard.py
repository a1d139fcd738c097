"""How every CLI verb ends when something goes wrong: one place for the rule.

``one_line_errors``: an error the verb can foresee becomes ``cnmkit: <message>`` and exit 1,
Ctrl-C exit 130, neither with a traceback. ``guarded`` wraps the verbs that run on the embedded
runtime (containers, labs): it opens the runtime's service, hands the verb what it works on (the
service itself, or a service built on it), closes the service whatever happened, and exits with
the verb's own status when it returns one (``exec``). cli/main.py does the same for the verbs
that speak to the daemon through an ``Engine``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from cli.output import fail
from client.engine import DaemonUnavailable, PluginError

if TYPE_CHECKING:
    from runtime.containers import ContainerService

T = TypeVar("T")


@contextlib.contextmanager
def one_line_errors(*foreseen: type[Exception]) -> Iterator[None]:
    try:
        yield
    except foreseen as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def guarded(fn: Callable[[argparse.Namespace, T], int | None], make: Callable[[ContainerService], T],
            errors: Callable[[], tuple[type[Exception], ...]] = tuple) -> Callable[[argparse.Namespace], None]:
    """``fn(args, make(service))`` with the handling above; ``errors()`` names the foreseen errors
    beyond the runtime's and the client's (a function: its modules are imported only when run)."""

    def wrapper(args: argparse.Namespace) -> None:
        # Imported here: the runtime pulls in pyroute2 (~120 ms), which `cnmkit network ls` never needs.
        from runtime.containers import ContainerError, ContainerService

        foreseen: tuple[type[Exception], ...] = (ContainerError, PluginError, DaemonUnavailable, *errors())
        svc = ContainerService(args.state_dir, args.plugin_dir, getattr(args, "run_dir", None))
        with contextlib.closing(svc), one_line_errors(*foreseen):
            code = fn(args, make(svc))
        if code:
            raise SystemExit(code)

    return wrapper
