"""Loads the Lua scripts of shared/scripts once, by name.

Each script is one state transition; ``_lib.lua`` (helpers every transition needs) is put in
front of each.  redis-py's Script objects run EVALSHA and fall back to loading the script on
NOSCRIPT, so a Redis restart or SCRIPT FLUSH costs one extra round trip, never an error.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aredis
from redis.commands.core import AsyncScript

NAMES = (
    "create",
    "claim",
    "commit",
    "fail",
    "wake",
    "send",
    "reap",
    "expire",
    "cancel",
    "unlock",
    "restart",
    "redeliver",
    "ping",
    "delete",
    "clean",
    "handback",
)


@cache
def source(name: str) -> str:
    folder = resources.files("shared") / "scripts"
    lib = (folder / "_lib.lua").read_text()
    return lib + "\n" + (folder / f"{name}.lua").read_text()


class Scripts:
    """The scripts registered on one client; ``await scripts.run("claim", keys, args)``."""

    def __init__(self, client: aredis.Redis) -> None:
        self._client = client
        self._scripts: dict[str, AsyncScript] = {}
        for name in NAMES:
            self._scripts[name] = client.register_script(source(name))

    async def run(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return await self._scripts[name](keys=keys, args=args, client=client or self._client)

    async def queue(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """Adds the script call to a pipeline (sent when the pipeline executes; scripts the
        server lacks are loaded then)."""
        await self._scripts[name](keys=keys, args=args, client=pipe)
