"""mirror: a local, complete and incremental mirror of IVOA ObsCore archives.

    >>> from mirror import Mirror
    >>> m = Mirror.open("mirror.toml")
    >>> m.sync()            # harvest every configured source
    >>> m.status()
"""

__version__ = "0.1.0"

from mirror.api import Mirror  # noqa: E402
from mirror.errors import MirrorError  # noqa: E402

__all__ = ["Mirror", "MirrorError", "__version__"]
