"""An executor app whose `fail_n` fails its first n calls per key (counted in files under
FLAKY_DIR), to test retries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from executor import App

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
