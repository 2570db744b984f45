"""Which bucket and key a request names (path style at / and /services/Walrus, or virtual-host style) and its
decoded query; `routes.py` says which S3 operation it is."""

from __future__ import annotations

from urllib.parse import unquote, unquote_plus

from multidict import MultiDict, MultiDictProxy

from services.walrus.s3.errors import S3Error

# Requests whose path, query and presigned check are remembered (`locate`, `parse_query`, auth's presigned memo):
# a URL read again is how one object is served to many, while an upload's URL is most often new, and remembering
# each only grew a busy Walrus (by 1.5 MB of paths, and 5 MB of presigned queries) for nothing.
REMEMBERED_METHODS = frozenset({"GET", "HEAD"})

WALRUS_PREFIX = "/services/Walrus"


def origin_form(target: str) -> str:
    """The path and query of a request target, also when it came in absolute form (`http://host/path`)."""
    if target.startswith("/"):
        return target
    _, sep, rest = target.partition("://")
    if not sep:
        return "/" + target
    slash = rest.find("/")
    query = rest.find("?")
    if slash < 0 or (0 <= query < slash):
        return "/" + rest[query:] if query >= 0 else "/"
    return rest[slash:]


def _decode(text: str) -> str:
    return unquote_plus(text) if "%" in text or "+" in text else text


_parsed: dict[str, MultiDictProxy[str]] = {}  # raw query -> parsed (a presigned URL comes back many times)


def parse_query(raw_query: str, limit: int = 200, remember: bool = True) -> MultiDictProxy[str]:
    """The decoded query parameters, read-only; remembered when `remember` (as `locate`: a presigned upload's query
    is new each time)."""
    found = _parsed.get(raw_query)
    if found is None:
        found = MultiDictProxy(_parse_query(raw_query, limit))
        if not remember:
            return found
        if len(_parsed) >= 4096:
            _parsed.clear()
        _parsed[raw_query] = found
    return found


def _parse_query(raw_query: str, limit: int) -> MultiDict[str]:
    query: MultiDict[str] = MultiDict()
    for index, part in enumerate(raw_query.split("&")):
        if index >= limit:
            raise S3Error("InvalidArgument", "too many query parameters")
        if not part:
            continue
        name, _, value = part.partition("=")
        query.add(_decode(name), _decode(value))
    return query


def host_bucket(host: str, domains: tuple[str, ...]) -> str:
    """The bucket named by a virtual-host style Host header, or "" for path style."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else ""
    name = name.rstrip(".").lower()
    if not name:
        return ""
    for domain in domains:  # an IP address never ends in ".<domain>"
        if name.endswith("." + domain) and len(name) > len(domain) + 1:
            return name[: -len(domain) - 1]
    return ""


_located: dict[tuple[str, str, tuple[str, ...]], tuple[str, str]] = {}  # (path, host, domains) -> (bucket, key)


def locate(raw_path: str, host: str, domains: tuple[str, ...], remember: bool = True) -> tuple[str, str]:
    """(bucket, key) from the raw (still percent-encoded) path and the Host header; remembered when `remember`
    (paths read again and again; a PUT's path is most often new, and remembering each held 1.5 MB for nothing)."""
    memo_key = (raw_path, host, domains)
    found = _located.get(memo_key)
    if found is None:
        found = _locate(raw_path, host, domains)
        if not remember:
            return found
        if len(_located) >= 4096:
            _located.clear()
        _located[memo_key] = found
    return found


def _locate(raw_path: str, host: str, domains: tuple[str, ...]) -> tuple[str, str]:
    path = raw_path
    if path == WALRUS_PREFIX or path.startswith(WALRUS_PREFIX + "/"):
        path = path[len(WALRUS_PREFIX) :]
    if not path.startswith("/"):
        path = "/" + path
    try:
        decoded = unquote(path[1:], errors="strict")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI", "the path is not valid UTF-8") from None
    bucket = host_bucket(host, domains)
    if bucket:
        return bucket, decoded
    bucket, _, key = decoded.partition("/")
    return bucket, key
