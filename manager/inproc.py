"""`RedisClient`: the client's methods without a manager process.

    async with RedisClient("redis://127.0.0.1:6379/0", namespace="stagewise") as c:
        await c.create({"app": "demo", "commands": [{"method": "demo.echo"}]})

It is an `AsyncClient` whose requests never leave the process: each one goes through the manager's
own method table (`stagewise.manager.rpc.Dispatcher`) against Redis, with the same validation, the
same scripts and the same errors as over HTTP.  It lives here, not in `stagewise.client`, because it
runs the manager's code: an HTTP-only producer never loads it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from stagewise import config, errors
from stagewise.client.aio import AsyncClient
from stagewise.faults import unavailable_reason
from stagewise.manager.rpc import Api, Dispatcher
from stagewise.manager.store import Store
from stagewise.storage.connection import connect
from stagewise.storage.durability import Durability, check_server

__all__ = ["RedisClient"]


class RedisClient(AsyncClient):
    """For producers that can reach Redis: it saves the HTTP hop and the manager's work (a
    create is one script call).  It has no token check: whoever can write to Redis is
    trusted already.  Settings not given come from the environment (STAGEWISE_REDIS_URL,
    STAGEWISE_NAMESPACE, STAGEWISE_PARTITIONS), as for the daemons.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        partitions: int | None = None,
        max_connections: int = 64,
    ) -> None:
        super().__init__()
        self.url = "redis-direct"
        self._settings = (redis_url, namespace, partitions)
        self._max_connections = max_connections
        self._dispatcher: Dispatcher | None = None
        self._redis: Any = None

    async def _rpc(self) -> Dispatcher:
        # Connected on first use, as AsyncClient opens its HTTP session: constructing one is free.
        if self._dispatcher is None:
            url, namespace, partitions = self._settings
            settings = config.load()
            settings = dataclasses.replace(
                settings,
                redis_url=url or settings.redis_url,
                namespace=namespace or settings.namespace,
                partitions=partitions or settings.partitions,
            )
            self._redis = await connect(settings.redis_url, max_connections=self._max_connections)
            try:  # ValueError when Redis cannot give STAGEWISE_DURABILITY (fsync before 7.2)
                await check_server(self._redis, Durability.of(settings))
            except BaseException:
                await self._redis.aclose()
                self._redis = None
                raise
            self._dispatcher = Dispatcher(Api(Store(self._redis, settings)))
        return self._dispatcher

    async def _post(self, body: Any) -> Any:
        try:
            d = await self._rpc()
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is None:
                raise
            # Redis could not be reached to connect: the error the manager would answer (the
            # client raises Unavailable); the next call connects again
            return {"jsonrpc": "2.0", "id": None, "error": errors.unavailable(reason).to_dict()}
        if isinstance(body, list):  # the batch rules (size limit, ...) of the HTTP path
            return await d.handle_body(json.dumps(body).encode())
        return await d.handle_one(body)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = self._dispatcher = None
