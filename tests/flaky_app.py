"""An executor app whose `fail_n` fails its first n calls per key (counted in files under
FLAKY_DIR), to test retries, and whose `outlive` ignores cancels, to test timeouts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from stagewise.executor import App

app = App("flaky")


@app.method("flaky.value")
def value(v: Any) -> Any:
    return v


@app.method("flaky.fail_n")
def fail_n(key: str, n: int) -> int:
    f = Path(os.environ["FLAKY_DIR"]) / key
    calls = int(f.read_text()) + 1 if f.exists() else 1
    f.write_text(str(calls))
    if calls <= n:
        raise RuntimeError(f"call {calls} of {key} fails")
    return calls


@app.method("flaky.outlive")
async def outlive(seconds: float) -> str:
    """Runs `seconds` whatever cancels it meanwhile, as a handler whose own awaits lose the
    cancel would (on Python 3.11 a Redis write can), then returns."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        try:
            await asyncio.sleep(end - loop.time())
        except asyncio.CancelledError:
            pass
    return "late"
