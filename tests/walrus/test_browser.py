"""Walrus from real headless Chromium: a browser POST upload through an HTML form, and CORS requests (with their
preflight) from a page served on another origin."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.exceptions import ClientError

from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.walrus.conftest import Walrus

playwright_api = pytest.importorskip("playwright.sync_api")


class Pages:
    """A small web site on its own loopback port (so its origin differs from Walrus's) serving set pages."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(urlsplit(self.path).path, "<p>not here</p>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def site() -> Iterator[Pages]:
    pages = Pages()
    try:
        yield pages
    finally:
        pages.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (deploy/bootstrap.sh installs it)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(15000)
        try:
            yield context
        finally:
            context.close()


def test_post_upload_from_an_html_form(walrus: Walrus, site: Pages, browser, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="browser-form")
    done = f"{site.origin}/done"
    form = s3.generate_presigned_post(
        "browser-form",
        "photos/${filename}",
        Fields={"success_action_redirect": done, "Content-Type": "text/plain", "x-amz-meta-source": "form"},
        Conditions=[
            {"success_action_redirect": done},
            ["starts-with", "$key", "photos/"],
            ["starts-with", "$Content-Type", "text/"],
            ["eq", "$x-amz-meta-source", "form"],
            ["content-length-range", 1, 1 << 20],
        ],
    )
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in form["fields"].items()
    )
    site.pages["/upload"] = (
        f'<form id="f" action="{html.escape(form["url"])}" method="post" enctype="multipart/form-data">{hidden}'
        '<input type="file" name="file"><input type="submit" value="Upload"></form>'
    )
    site.pages["/done"] = "<p id='done'>uploaded</p>"
    upload = tmp_path / "holiday.txt"
    upload.write_bytes(b"sent by Chromium through a form\n")
    page = browser.new_page()
    try:
        page.goto(f"{site.origin}/upload")
        page.set_input_files("input[name=file]", str(upload))
        page.click("input[type=submit]")
        page.wait_for_url(f"{done}?**")
        query = parse_qs(urlsplit(page.url).query)
        assert page.inner_text("#done") == "uploaded"
    finally:
        page.close()
    assert query["bucket"] == ["browser-form"] and query["key"] == ["photos/holiday.txt"]
    got = s3.get_object(Bucket="browser-form", Key="photos/holiday.txt")
    assert got["Body"].read() == upload.read_bytes()
    assert got["ContentType"] == "text/plain" and got["Metadata"] == {"source": "form"}
    assert query["etag"] == [got["ETag"]]


FETCH = """async ([url, method, headers, body]) => {
    try {
        const answer = await fetch(url, {method, headers, body: body === null ? undefined : body});
        return {status: answer.status, etag: answer.headers.get("ETag"), text: await answer.text()};
    } catch (err) {
        return {blocked: String(err)};
    }
}"""


def test_cors_from_a_page_on_another_origin(walrus: Walrus, site: Pages, browser) -> None:
    s3 = walrus.client()
    for name in ("browser-cors", "browser-no-cors"):
        s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=name, Key="hello.txt", Body=b"hello from walrus", ACL="public-read")
    s3.put_bucket_cors(
        Bucket="browser-cors",
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": [site.origin],
                    "AllowedMethods": ["GET", "PUT"],
                    "AllowedHeaders": ["content-type", "x-amz-meta-*"],
                    "ExposeHeaders": ["ETag"],
                    "MaxAgeSeconds": 5,
                }
            ]
        },
    )
    site.pages["/app"] = "<p>app</p>"
    page = browser.new_page()
    try:
        page.goto(f"{site.origin}/app")

        def call(url: str, method: str = "GET", headers: dict | None = None, body: str | None = None) -> dict:
            return page.evaluate(FETCH, [url, method, headers or {}, body])

        # a PUT with a JSON body and a metadata header: not simple, so Chromium sends a preflight first
        put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "browser-cors", "Key": "from-page.json"})
        answer = call(put_url, "PUT", {"Content-Type": "application/json", "x-amz-meta-origin": "page"}, '{"a": 1}')
        assert answer.get("status") == 200, answer
        stored = s3.get_object(Bucket="browser-cors", Key="from-page.json")
        assert stored["Body"].read() == b'{"a": 1}' and stored["Metadata"] == {"origin": "page"}
        assert answer["etag"] == stored["ETag"]  # readable by the page: the rule exposes it
        # a simple GET: allowed, its body readable
        answer = call(f"{walrus.url}/browser-cors/hello.txt")
        assert answer == {"status": 200, "etag": s3.head_object(Bucket="browser-cors", Key="hello.txt")["ETag"],
                          "text": "hello from walrus"}  # fmt: skip
        # a header no rule allows: the preflight fails, and so does the request
        answer = call(put_url, "PUT", {"Content-Type": "application/json", "x-custom": "1"}, "{}")
        assert "blocked" in answer, answer
        # DELETE is not an allowed method
        answer = call(s3.generate_presigned_url("delete_object", Params={"Bucket": "browser-cors", "Key": "hello.txt"}),
                      "DELETE")  # fmt: skip
        assert "blocked" in answer, answer
        assert s3.head_object(Bucket="browser-cors", Key="hello.txt")["ContentLength"] == 17
        # a bucket without CORS: the browser keeps the answer from the page
        answer = call(f"{walrus.url}/browser-no-cors/hello.txt")
        assert "blocked" in answer, answer
        no_cors_put = s3.generate_presigned_url("put_object", Params={"Bucket": "browser-no-cors", "Key": "x"})
        answer = call(no_cors_put, "PUT", {"Content-Type": "application/json"}, json.dumps({"b": 2}))
        assert "blocked" in answer, answer
    finally:
        page.close()
    with pytest.raises(ClientError):
        s3.head_object(Bucket="browser-no-cors", Key="x")  # the failed preflight kept the PUT from being sent
