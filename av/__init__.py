"""av: the core everyone imports (values, geometry, data adapter, features, networks, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("av-closedloop")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
