"""The web dashboard: a static page at GET / whose data all comes from POST /rpc.

The page (`manager/static/`: one HTML file, one script, one stylesheet) is a shell: the same bytes
for everyone, with no task data in it. The browser fetches everything through the JSON-RPC API
like any other client, with the bearer token the user typed in (kept in the tab's sessionStorage).

Auth: with STAGEWISE_API_TOKENS set, every route but /healthz needs `Authorization: Bearer`. A
browser navigating to / cannot send that header, and a token in the URL would end up in the history
and in logs, so the shell alone (GET/HEAD of exactly the paths in `SHELL`) is served without a token:
`setup` puts a middleware in front of the token guard that answers those requests itself. /rpc and
every other route stay behind the guard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).resolve().with_name("static")

# URL path -> (file under static/, content type); `ui/` holds the assets the page loads
SHELL: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html"),
    "/ui/dashboard.js": ("dashboard.js", "text/javascript"),
    "/ui/dashboard.css": ("dashboard.css", "text/css"),
}

# The page runs only its own script and style and talks only to its own origin; nobody may frame it
# (its buttons change tasks).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def setup(app: web.Application) -> None:
    """Register the dashboard's routes on `app` and let its static shell past the token guard."""
    files = {path: ((STATIC / name).read_bytes(), ctype) for path, (name, ctype) in SHELL.items()}

    async def serve(request: web.Request) -> web.Response:
        body, ctype = files[request.path]
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=HEADERS)

    @web.middleware
    async def public_shell(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and request.path in files:
            return await serve(request)
        return await handler(request)

    for path in files:
        app.router.add_get(path, serve)
    app.middlewares.insert(0, public_shell)  # first = outermost: runs before the token guard
