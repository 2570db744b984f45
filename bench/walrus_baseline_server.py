"""The raw baseline for Walrus GETs: aiohttp serving files of a directory with sendfile (FileResponse), and
nothing else. Run as `python bench/walrus_baseline_server.py DIR PORT`."""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    root, port = Path(sys.argv[1]).resolve(), int(sys.argv[2])

    async def serve(request: web.Request) -> web.StreamResponse:
        path = (root / request.match_info["name"]).resolve()
        if path.parent != root or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
