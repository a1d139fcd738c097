"""Driver-level failures; the plugin turns each into ``{"Err": message}``."""

from __future__ import annotations

import errno as _errno


class DriverError(Exception):
    """Base of every error a driver reports to its caller."""


class InvalidOption(DriverError):
    """A network or endpoint option is malformed; the message names the option."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"option {option}: {problem}")
        self.option = option


class NotFound(DriverError):
    """A network or endpoint id that the store does not know."""


class Conflict(DriverError):
    """The request collides with existing state (a name taken, a different spec under the same id)."""


class KernelError(DriverError):
    """A netlink or firewall call failed; carries the errno when there is one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class LinkNotFound(KernelError):
    pass


class LinkExists(KernelError):
    pass


def for_errno(message: str, code: int | None) -> KernelError:
    """The KernelError for a failed kernel request's errno: LinkNotFound, LinkExists or plain."""
    if code in (_errno.ENODEV, _errno.ENOENT):
        return LinkNotFound(message, code)
    if code == _errno.EEXIST:
        return LinkExists(message, code)
    return KernelError(message, code)


class KernelFeatureMissing(KernelError):
    """The running kernel lacks a feature a driver needs (802.1Q, vxlan); ``feature`` names it.

    Raised before anything is made, so the caller can report one clear line and leave nothing.
    """

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(message, 95)          # EOPNOTSUPP: what netlink answered
        self.feature = feature
