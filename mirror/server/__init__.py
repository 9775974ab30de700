"""The mirror as an IVOA TAP service: TAP 1.1 (sync, async UWS), VOSI, DALI examples, and the
mirror's own status, over one catalogue that this process may also be writing."""

from mirror.server.context import ServiceContext
from mirror.server.pool import PoolBusyError, RunnerPool

__all__ = ["PoolBusyError", "RunnerPool", "ServiceContext"]
