"""multipart/form-data POSTs for browser-upload tests that are not run in a browser (a small encoder: the
standard library has none, and these tests must control field order and size)."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request


def encode(fields: list[tuple[str, str]], file: tuple[str, bytes, str] | None) -> tuple[bytes, str]:
    boundary = "----koala" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    if file is not None:
        filename, data, content_type = file
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def post(
    url: str, fields: list[tuple[str, str]] | dict, file: tuple[str, bytes, str] | None = ("f.txt", b"x", "text/plain")
):
    """(status, headers, body) of a form POST; redirects are returned, not followed."""
    items = list(fields.items()) if isinstance(fields, dict) else fields
    body, content_type = encode(items, file)
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
