"""CSRF defences for the admin forms.

- Every form carries a hidden `csrf` field. After sign-in it must equal the session's own random token; on the
  sign-in form (no session yet) it must equal a random pre-session cookie (double submit).
- Cookies are SameSite=Strict, so a cross-site form post arrives without them in current browsers anyway.
- When the browser sends an Origin header, it must name this site.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

FIELD = "csrf"
PRE_COOKIE = "koala_admin_login"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(expected: str | None, given: object) -> bool:
    """`given` comes from a form or a cookie: anything but a short string is a mismatch."""
    if not expected or not isinstance(given, str) or not given or len(given) > 128:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def origin_ok(request: web.Request) -> bool:
    """False when an Origin (or, lacking it, a Referer) header names another site."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return source != "null"
    parts = urlsplit(source)
    return parts.netloc.lower() == request.host.lower()
