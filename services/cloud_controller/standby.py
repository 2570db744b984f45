"""Active and standby CLCs on one PostgreSQL database (KOALA_DATABASE_URL).

Every CLC process opens its port at once, then competes for the leadership advisory lock
(`common.database.leadership`). The winner loads the cloud's state from the database and serves; the others stand
by and answer every request with 503 Service Unavailable and `Retry-After`, `/healthz` included, so that:

- a load balancer (or a DNS/VIP health check) in front of the CLCs sends traffic to the one whose `GET /healthz`
  answers 200, and retries a request that got 503 on another CLC: EC2 clients see one endpoint;
- clients and CCs configured with one CLC's address see 503 with Retry-After (botocore retries it) from a
  standby, and an answer from the active CLC.

When the active CLC dies, its database session ends, the lock is released and a standby takes it within
POLL_SECONDS. When it is cut off from the database, the server drops its session after a few seconds of silence
and the cut-off process gives up by itself (`Leadership.watch`): it exits, and its supervisor (systemd,
Restart=always) starts it again as a standby. All its writes went through the lock's session, so nothing it
does after losing the lock can reach the database; every change it acknowledged was committed before.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from common.http_site import HttpSite

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

log = logging.getLogger("koala.clc.standby")
LEADER_LOCK = 0x4B4C4331  # the advisory lock key of "the active CLC" ("KLC1")
RETRY_AFTER_SECONDS = 2
EXIT_LEADERSHIP_LOST = 75  # EX_TEMPFAIL: the supervisor restarts the process, as a standby


def standby_app(render: Callable[[int, str, str], tuple[bytes, str]]) -> web.Application:
    """What a standby serves: 503 with Retry-After for every request, `/healthz` included."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    body, content_type = render(503, "ServiceUnavailable", "This CLC is standing by: retry shortly")

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.Response(status=503, text="standby\n", headers=headers)
        return web.Response(status=503, body=body, content_type=content_type, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def start_when_leader(clc: CloudControllerService) -> web.AppRunner:
    """Answer 503 on the CLC's port until this process holds the leadership; then start the CLC on the lock's
    session and put it on the port in the standby's place (the port is closed for the few milliseconds between)."""
    from common.database.leadership import Leadership  # asyncpg: only where PostgreSQL is configured

    standby = web.AppRunner(standby_app(clc.render_http_error), access_log=None, shutdown_timeout=1)
    await standby.setup()
    await HttpSite(standby, clc.listen_hosts(), clc.config.port, clc.guard).start()
    clc.leadership = await Leadership.acquire(
        clc.config.KOALA_DATABASE_URL,
        LEADER_LOCK,
        on_standby=lambda: log.info("standing by: another CLC is active on this database"),
    )
    try:
        await clc.on_start()
        clc.leadership.watch(_give_up)
        await standby.cleanup()
        runner = await clc.listen()
    except BaseException:
        await clc.leadership.release()
        raise
    clc.monitor.set_peers(clc.peer_list())
    log.info("active: this CLC serves the cloud")
    return runner


def _give_up(reason: str) -> None:
    """Leadership lost: stop at once (no request may be answered from state this process no longer owns)."""
    log.critical("leadership lost (%s): exiting so that a standby takes over", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_LEADERSHIP_LOST)
