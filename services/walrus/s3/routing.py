"""Which bucket and key a request names (path style at / and /services/Walrus, or virtual-host style), and
which S3 operation it is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import unquote, unquote_plus

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from services.walrus.s3 import (
    access_log,
    attributes,
    bucket_policy,
    buckets,
    cors,
    lifecycle,
    multipart,
    object_lock,
    object_tagging,
    objects,
    post,
    tagging,
    versioning,
)
from services.walrus.s3.errors import S3Error

WALRUS_PREFIX = "/services/Walrus"
Handler = Callable[..., Awaitable[web.StreamResponse]]
# Sub-resources Walrus does not implement: answered with NotImplemented rather than mistaken for another call.
UNSUPPORTED = frozenset(
    """website notification replication encryption requestPayment
    accelerate analytics inventory metrics intelligent-tiering ownershipControls
    restore torrent select""".split()
)
# Bucket-level configurations: sub-resource -> method -> handler.
BUCKET_CONFIGS: dict[str, dict[str, Handler]] = {
    "policy": {
        "PUT": bucket_policy.put_bucket_policy,
        "GET": bucket_policy.get_bucket_policy,
        "DELETE": bucket_policy.delete_bucket_policy,
    },
    "policyStatus": {"GET": bucket_policy.get_bucket_policy_status},
    "cors": {"PUT": cors.put_bucket_cors, "GET": cors.get_bucket_cors, "DELETE": cors.delete_bucket_cors},
    "lifecycle": {
        "PUT": lifecycle.put_bucket_lifecycle,
        "GET": lifecycle.get_bucket_lifecycle,
        "DELETE": lifecycle.delete_bucket_lifecycle,
    },
    "logging": {"PUT": access_log.put_bucket_logging, "GET": access_log.get_bucket_logging},
    "tagging": {
        "PUT": tagging.put_bucket_tagging,
        "GET": tagging.get_bucket_tagging,
        "DELETE": tagging.delete_bucket_tagging,
    },
    "publicAccessBlock": {
        "PUT": bucket_policy.put_public_access_block,
        "GET": bucket_policy.get_public_access_block,
        "DELETE": bucket_policy.delete_public_access_block,
    },
}


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


def parse_query(raw_query: str, limit: int = 200) -> MultiDictProxy[str]:
    """The decoded query parameters, read-only."""
    found = _parsed.get(raw_query)
    if found is None:
        found = MultiDictProxy(_parse_query(raw_query, limit))
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


def locate(raw_path: str, host: str, domains: tuple[str, ...]) -> tuple[str, str]:
    """(bucket, key) from the raw (still percent-encoded) path and the Host header."""
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


def pick(method: str, bucket: str, key: str, query: MultiDictProxy[str], headers) -> Handler:
    """The handler of one request; S3Error for what Walrus does not do."""
    if method == "OPTIONS" and bucket:
        return cors.preflight
    if bucket and not key:
        for name, handlers in BUCKET_CONFIGS.items():
            if name in query:
                if method not in handlers:
                    raise S3Error("MethodNotAllowed")
                return handlers[method]
    unsupported = UNSUPPORTED.intersection(query)
    if unsupported and bucket:
        raise S3Error("NotImplemented", f"Walrus does not implement ?{sorted(unsupported)[0]}")
    if not bucket:
        if method in ("GET", "HEAD"):
            return buckets.list_buckets
        raise S3Error("MethodNotAllowed")
    if not key:
        if method == "PUT":
            if "acl" in query:
                return buckets.put_bucket_acl
            if "versioning" in query:
                return versioning.put_bucket_versioning
            if "object-lock" in query:
                return object_lock.put_object_lock_configuration
            return buckets.create_bucket
        if method == "GET":
            if "acl" in query:
                return buckets.get_bucket_acl
            if "location" in query:
                return buckets.get_bucket_location
            if "uploads" in query:
                return multipart.list_uploads
            if "versions" in query:
                return versioning.list_object_versions
            if "versioning" in query:
                return versioning.get_bucket_versioning
            if "object-lock" in query:
                return object_lock.get_object_lock_configuration
            if query.get("list-type") == "2":
                return buckets.list_objects_v2
            return buckets.list_objects
        if method == "HEAD":
            return buckets.head_bucket
        if method == "DELETE":
            return buckets.delete_bucket
        if method == "POST":
            if "delete" in query:
                return objects.delete_objects
            return post.post_object
        raise S3Error("MethodNotAllowed")
    if method == "PUT":
        if "acl" in query:
            return objects.put_object_acl
        if "retention" in query:
            return object_lock.put_object_retention
        if "legal-hold" in query:
            return object_lock.put_object_legal_hold
        if "tagging" in query:
            return object_tagging.put_object_tagging
        if "uploadId" in query or "partNumber" in query:
            return multipart.upload_part_copy if "x-amz-copy-source" in headers else multipart.upload_part
        if "x-amz-copy-source" in headers:
            return objects.copy_object
        return objects.put_object
    if method in ("GET", "HEAD"):
        if "acl" in query:
            return objects.get_object_acl
        if "attributes" in query and method == "GET":
            return attributes.get_object_attributes
        if "retention" in query:
            return object_lock.get_object_retention
        if "legal-hold" in query:
            return object_lock.get_object_legal_hold
        if "tagging" in query and method == "GET":
            return object_tagging.get_object_tagging
        if "uploadId" in query and method == "GET":
            return multipart.list_parts
        return objects.get_object
    if method == "DELETE":
        if "uploadId" in query:
            return multipart.abort_upload
        if "tagging" in query:
            return object_tagging.delete_object_tagging
        return objects.delete_object
    if method == "POST":
        if "uploads" in query:
            return multipart.create_upload
        if "uploadId" in query:
            return multipart.complete_upload
        raise S3Error("NotImplemented", "Walrus does not implement this POST request")
    raise S3Error("MethodNotAllowed")
