"""Loads the Lua scripts of shared/scripts once, by name.

Each script is one state transition; ``_lib.lua`` (helpers every transition needs) is put in
front of each.  redis-py's Script objects run EVALSHA and fall back to loading the script on
NOSCRIPT, so a Redis restart or SCRIPT FLUSH costs one extra round trip, never an error.  On a
Redis Cluster the EVALSHA goes to the node of the script's KEYS (all of one partition, so of
one slot) and the SCRIPT LOAD of that fallback to every primary.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

NAMES = (
    "create",
    "create_many",
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

    def queue(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """Adds the script call to a pipeline as a bare EVALSHA: redis-py's own script
        support would send SCRIPT EXISTS before every pipeline; `execute` below handles the
        NOSCRIPT of a script cache that was emptied (Redis restart, failover, SCRIPT FLUSH).
        Queued through execute_command, which a cluster pipeline routes by the script's KEYS
        (it refuses `.evalsha`); on a plain pipeline `.evalsha` does just this."""
        script = self._scripts[name]
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        calls = getattr(pipe, "_sw_calls", None)
        if calls is None:
            calls = pipe._sw_calls = []
        calls.append((len(pipe) - 1, name, keys, args))

    async def execute(self, pipe: Any, raise_on_error: bool = True) -> list[Any]:
        """Executes a pipeline holding queued scripts; a script the server did not know is
        loaded and run again on its own (scripts are idempotent under such a replay: the
        first attempt was refused before it ran)."""
        calls = {i: (name, keys, args) for i, name, keys, args in getattr(pipe, "_sw_calls", [])}
        results = await pipe.execute(raise_on_error=False)
        for i, res in enumerate(results):
            if isinstance(res, NoScriptError) and i in calls:
                name, keys, args = calls[i]
                results[i] = await self.run(name, keys, args)
            elif raise_on_error and isinstance(res, Exception):
                raise res
        return results
