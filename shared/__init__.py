"""stagewise: durable multi-stage tasks over Redis Streams.

The public names are loaded on first use, not here: every module of the package imports this
one first, and a daemon must not pay for what it does not use (the executor needs no HTTP
client, a producer script no executor).  `__version__` too: importlib.metadata is slow to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stagewise.client import AsyncClient, Client, StagewiseError
    from stagewise.executor.app import App, Ctx, RetryLater

    __version__: str

# public name -> module that defines it
_EXPORTS = {
    "App": "stagewise.executor.app",
    "Ctx": "stagewise.executor.app",
    "RetryLater": "stagewise.executor.app",
    "AsyncClient": "stagewise.client",
    "Client": "stagewise.client",
    "StagewiseError": "stagewise.client",
}

__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "Ctx",
    "RetryLater",
    "StagewiseError",
]  # = _EXPORTS, checked by a test


def _version() -> str:
    """The installed distribution's version: pyproject.toml's, the one source of it.  "0.0.0"
    when the package runs from a checkout that was never installed."""
    from importlib import metadata  # ~10 ms to import: only when the version is asked for

    try:
        return metadata.version("stagewise")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    else:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'stagewise' has no attribute {name!r}")
        value = getattr(import_module(module), name)
    globals()[name] = value  # next time a plain attribute
    return value
