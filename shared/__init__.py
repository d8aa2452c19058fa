"""stagewise: durable multi-stage tasks over Redis Streams.

The public names are loaded on first use, not here: every module of the package imports this
one first, and a daemon must not pay for what it does not use (the executor needs no HTTP
client, a producer script no executor).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stagewise.client import AsyncClient, Client, StagewiseError
    from stagewise.executor.app import App, Ctx

# public name -> module that defines it
_EXPORTS = {
    "App": "stagewise.executor.app",
    "Ctx": "stagewise.executor.app",
    "AsyncClient": "stagewise.client",
    "Client": "stagewise.client",
    "StagewiseError": "stagewise.client",
}

__all__ = ["App", "AsyncClient", "Client", "Ctx", "StagewiseError"]  # = _EXPORTS, checked by a test


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stagewise' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # next time a plain attribute
    return value
