"""The admin site's machinery: routes under /admin/, sign-in and sessions, CSRF checks, rendering, failures.

Pages register with `admin.get(path, handler)` / `admin.post(path, handler, back=...)`. A handler gets a `Page`
(the request, the session, the parsed form) and returns a response, usually `page.render(...)` or
`page.redirect(...)`. Every page needs a signed-in session (else a redirect to the sign-in page); every POST needs
the session's CSRF token (else 403). An exception carrying `code` and `message` (the EC2 errors of the service
code: ComputeError, Ec2Error, ...) or a `Failure` becomes a message on the page the form came from.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from common.messages.identity import Principal
from services.cloud_controller.admin import csrf
from services.cloud_controller.admin.backend import admin_principal
from services.cloud_controller.admin.passwords import MAX_PASSWORD, LoginFile, verify_or_dummy
from services.cloud_controller.admin.ratelimit import FailureLimiter
from services.cloud_controller.admin.sessions import Session, Sessions

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

log = logging.getLogger("koala.clc.admin")
PREFIX = "/admin"
COOKIE = "koala_admin"
MAX_FORM = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAV = [
    ("/admin/", "Dashboard"),
    ("/admin/accounts", "Accounts"),
    ("/admin/clusters", "Clusters"),
    ("/admin/vmtypes", "VM types"),
    ("/admin/images", "Images"),
    ("/admin/instances", "Instances"),
    ("/admin/volumes", "Volumes"),
    ("/admin/network", "Addresses & groups"),
    ("/admin/leases", "Leases"),
]


class Failure(Exception):
    """An expected failure of an admin action, shown to the admin as is."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def error_text(err: BaseException) -> str | None:
    """The admin-facing text of a service-code error (code + message), or None for an unexpected exception."""
    if isinstance(err, Failure):
        return err.message
    code, message = getattr(err, "code", None), getattr(err, "message", None)
    if isinstance(code, str) and isinstance(message, str):
        return f"{message} ({code})"
    return None


@dataclass
class Page:
    admin: Admin
    request: web.Request
    session: Session
    form: MultiDictProxy[str | bytes | bytearray | FileField] = field(
        default_factory=lambda: MultiDictProxy(__import__("multidict").MultiDict())
    )

    @property
    def service(self) -> CloudControllerService:
        return self.admin.service

    async def principal(self) -> Principal:
        return await admin_principal(self.admin.service.identity_store, self.session.login)

    def field(self, name: str, limit: int = 256, required: bool = True) -> str:
        value = self.form.get(name, "")
        if not isinstance(value, str):
            raise Failure(f"{name} must be text")
        value = value.strip()
        if required and not value:
            raise Failure(f"{name} is required")
        if len(value) > limit:
            raise Failure(f"{name} is limited to {limit} characters")
        return value

    def integer(self, name: str, low: int, high: int) -> int:
        text = self.field(name, 20)
        try:
            value = int(text)
        except ValueError:
            raise Failure(f"{name} must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise Failure(f"{name} must be between {low} and {high}")
        return value

    def flash(self, kind: str, text: str) -> None:
        self.session.flash(kind, text)

    def redirect(self, path: str) -> web.Response:
        return see_other(path)

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        return self.admin.render(template, status=status, session=self.session, path=self.request.path, **context)


Handler = Callable[[Page], Awaitable[web.StreamResponse]]


class Admin:
    def __init__(self, service: CloudControllerService, state_dir: Path):
        self.service = service
        self.logins = LoginFile(state_dir)
        self.sessions = Sessions()
        self.limiter = FailureLimiter()
        self._hashing: asyncio.Semaphore | None = None  # one scrypt at a time: bounded CPU and memory
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader(__package__, "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.globals["nav"] = NAV
        self.env.filters["when"] = _when
        self.css = (importlib.resources.files(__package__) / "static" / "admin.css").read_bytes()
        self.routes: list[tuple[str, str, Callable[..., Any]]] = []

    # --- wiring -----------------------------------------------------------------------------------------
    def install(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self._root)
        app.router.add_get(PREFIX + "/login", self._login_form)
        app.router.add_post(PREFIX + "/login", self._login)
        app.router.add_get(PREFIX + "/static/admin.css", self._css)
        for method, path, handler in self.routes:
            app.router.add_route(method, path, handler)
        app.on_startup.append(self._startup)

    async def _startup(self, _: web.Application) -> None:
        self._hashing = asyncio.Semaphore(1)
        initial = await asyncio.to_thread(self.logins.ensure_initial)
        if initial:
            log.info("admin pages: created login 'admin'; its password is in %s", initial)

    def get(self, path: str, handler: Handler) -> None:
        self.routes.append(("GET", path, self._wrap(handler, None)))

    def post(self, path: str, handler: Handler, back: str | Callable[[Page], str]) -> None:
        self.routes.append(("POST", path, self._wrap(handler, back)))

    # --- rendering --------------------------------------------------------------------------------------
    def render(self, template: str, status: int = 200, session: Session | None = None, **context: Any) -> web.Response:
        if session is not None:
            context.setdefault("flashes", session.take_flashes())
            context.setdefault("csrf", session.csrf)
            context.setdefault("login", session.login)
        context.setdefault("flashes", [])
        context.setdefault("login", None)
        body = self.env.get_template(template).render(**context)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    async def _root(self, _: web.Request) -> web.Response:
        return see_other(PREFIX + "/")

    async def _css(self, _: web.Request) -> web.Response:
        return web.Response(body=self.css, content_type="text/css", headers={"Cache-Control": "max-age=3600"})

    # --- the page wrapper -------------------------------------------------------------------------------
    def _wrap(
        self, handler: Handler, back: str | Callable[[Page], str] | None
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            session = self.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                target = request.path if request.method == "GET" else PREFIX + "/"
                return _secure(see_other(f"{PREFIX}/login?next={quote(target, safe='/')}"))
            page = Page(self, request, session)
            if request.method == "POST":
                refused = await self._read_form(page)
                if refused is not None:
                    return _secure(refused)
            try:
                response = await handler(page)
            except Exception as err:
                text = error_text(err)
                if text is None:
                    log.exception("admin page %s %s failed", request.method, request.path)
                    text = "An internal error occurred; the Cloud Controller's log has the details."
                    if back is None:
                        response = page.render("error.html", status=500, message=text)
                        return _secure(response)
                if back is None:  # a GET page that could not be shown
                    response = page.render("error.html", status=getattr(err, "status", 503), message=text)
                else:
                    page.flash("error", text)
                    response = see_other(back(page) if callable(back) else back)
            return _secure(response)

        return run

    async def _read_form(self, page: Page) -> web.StreamResponse | None:
        request = page.request
        if request.content_length is None or request.content_length > MAX_FORM:
            return page.render("error.html", status=413, message=f"A form is limited to {MAX_FORM} bytes.")
        page.form = await request.post()
        if not csrf.origin_ok(request) or not csrf.same_token(page.session.csrf, page.form.get(csrf.FIELD)):
            log.warning("admin: refused a %s %s without a valid CSRF token", request.method, request.path)
            return page.render(
                "error.html",
                status=403,
                message="This form was refused: it did not carry this session's security token. "
                "Reload the page and submit it again.",
            )
        return None

    # --- sign-in ----------------------------------------------------------------------------------------
    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        if self.sessions.get(request.cookies.get(COOKIE)) is not None:
            return _secure(see_other(_next(request.query.get("next"))))
        return self._login_page(request, error=None, status=200)

    def _login_page(self, request: web.Request, error: str | None, status: int, login: str = "") -> web.StreamResponse:
        token = request.cookies.get(csrf.PRE_COOKIE)
        if not token or len(token) > 128:
            token = csrf.new_token()
        notice = "You have signed out." if request.query.get("bye") else None
        response = self.render(
            "login.html",
            status=status,
            csrf=token,
            error=error,
            notice=notice,
            next=_next(request.query.get("next")),
            login_name=login,
        )
        response.set_cookie(
            csrf.PRE_COOKIE, token, httponly=True, samesite="Strict", secure=request.secure, path=PREFIX + "/"
        )
        return _secure(response)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is None or request.content_length > MAX_FORM:
            return self._login_page(request, "The sign-in form was too large.", 413)
        form = await request.post()
        if not csrf.origin_ok(request) or not csrf.same_token(request.cookies.get(csrf.PRE_COOKIE), form.get("csrf")):
            return self._login_page(request, "The sign-in form expired or came from another site; try again.", 403)
        name, password = form.get("login", ""), form.get("password", "")
        if not isinstance(name, str) or not isinstance(password, str) or len(name) > 64 or len(password) > MAX_PASSWORD:
            return self._login_page(request, "Wrong login name or password.", 401)
        remote = request.remote or ""
        wait = self.limiter.locked_for(name, remote)
        if wait > 0:
            log.warning("admin: sign-in for %r from %s refused: locked for %.0f s", name, remote, wait)
            return self._login_page(
                request,
                f"Too many failed sign-ins. Sign-in is locked for {_minutes(wait)}; try again later.",
                429,
                name,
            )
        assert self._hashing is not None
        async with self._hashing:
            encoded = await asyncio.to_thread(self.logins.get, name)
            ok = await asyncio.to_thread(verify_or_dummy, password, encoded)
        if not ok:
            self.limiter.failed(name, remote)
            log.warning("admin: failed sign-in for %r from %s", name, remote)
            return self._login_page(request, "Wrong login name or password.", 401, name)
        self.limiter.succeeded(name)
        cookie, _ = self.sessions.create(name, remote)
        log.info("admin: %s signed in from %s", name, remote)
        response = see_other(_next(form.get("next")))
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", secure=request.secure, path=PREFIX + "/")
        response.del_cookie(csrf.PRE_COOKIE, path=PREFIX + "/")
        return _secure(response)

    async def logout(self, page: Page) -> web.StreamResponse:
        self.sessions.drop(page.request.cookies.get(COOKIE))
        response = see_other(PREFIX + "/login?bye=1")
        response.del_cookie(COOKIE, path=PREFIX + "/")
        return response

    async def change_password(self, page: Page) -> web.StreamResponse:
        current = page.field("current", MAX_PASSWORD)
        new, again = page.field("new", MAX_PASSWORD), page.field("again", MAX_PASSWORD)
        if new != again:
            raise Failure("The two new passwords differ.")
        assert self._hashing is not None
        async with self._hashing:
            encoded = await asyncio.to_thread(self.logins.get, page.session.login)
            if not await asyncio.to_thread(verify_or_dummy, current, encoded):
                raise Failure("The current password is wrong.")
            try:
                await asyncio.to_thread(self.logins.set, page.session.login, new)
            except ValueError as err:
                raise Failure(f"The new password was refused: {err}.") from None
        self.sessions.drop_login(page.session.login)  # everywhere, including here: sign in again
        response = see_other(PREFIX + "/login")
        response.del_cookie(COOKIE, path=PREFIX + "/")
        return response


def see_other(location: str) -> web.Response:
    """A 303 redirect (returned, not raised, so headers and cookies can be added)."""
    return web.Response(status=303, headers={"Location": location})


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _next(value: Any) -> str:
    """Where to go after sign-in: only a path on the admin site (no open redirect)."""
    if isinstance(value, str) and value.startswith(PREFIX + "/") and "//" not in value and "\\" not in value:
        return value[:300]
    return PREFIX + "/"


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _when(epoch: float | None) -> str:
    import time

    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
