"""Time from tasks.create to FINISHED for a one-stage task, one task at a time.

    .venv/bin/python bench/create_to_finished.py [N]        (default N = 100)

Starts a private redis-server, the manager and one executor (examples.app:app, logs at
warning), then for each task: POST tasks.create, and poll GET /tasks/{id}/status (HTTP 201 =
FINISHED) without sleeping.  Prints the client-observed median / p90 / max, and the
server-side figure (the task's `updated` - `created`, both Redis server time)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import Daemons, RedisServer  # noqa: E402


async def main(n: int) -> None:
    server = RedisServer.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            d = Daemons(server.url, "lat" + uuid.uuid4().hex[:6], Path(tmp))
            try:
                env = {"STAGEWISE_LOG_LEVEL": "warning"}
                m = await d.manager(**env)
                await d.executor("examples.app:app", 8, **env)
                client, server_side = [], []
                for i in range(n + 10):
                    tid = f"l{i}"
                    t0 = time.perf_counter()
                    await m.rpc(
                        "tasks.create",
                        {
                            "task": {
                                "id": tid,
                                "app": "demo",
                                "commands": [{"method": "demo.echo", "params": {"value": i}}],
                            }
                        },
                    )
                    while (await m.get(f"/tasks/{tid}/status"))[0] != 201:
                        pass
                    dt = time.perf_counter() - t0
                    v = await m.rpc("tasks.get", {"id": tid})
                    if i >= 10:  # the first ten warm up connections and script caches
                        client.append(dt * 1000)
                        server_side.append((v["updated"] - v["created"]) * 1000)
                client.sort()
                server_side.sort()
                print(f"one-stage task, tasks.create -> FINISHED, {n} tasks one at a time")
                print(
                    f"  client-observed: median {statistics.median(client):.2f} ms, "
                    f"p90 {client[int(0.9 * n) - 1]:.2f} ms, max {client[-1]:.2f} ms"
                )
                print(
                    f"  server-side (updated - created): median {statistics.median(server_side):.2f} ms, "
                    f"p90 {server_side[int(0.9 * n) - 1]:.2f} ms"
                )
            finally:
                await d.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
