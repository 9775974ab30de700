"""The long-running `mirror daemon`: schedule, worker, watchers, signals, logs, live state."""

from mirror.daemon.process import Daemon
from mirror.daemon.state import DaemonState

__all__ = ["Daemon", "DaemonState"]
