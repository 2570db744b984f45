"""Which S3 operation a request is: one declarative table of routes keyed by the operation's name (as botocore's S3
model and AWS's API reference name it), each with what selects it (the method, whether the request names the
service, a bucket or an object, a sub-resource in the query, a header) and the handler that serves it.

**A new S3 operation** is a handler named after it (`CompleteMultipartUpload` -> `complete_multipart_upload`) in the
module of its family and one `Route` in `ROUTES`, placed before any route it must win over: the first route that
matches a request serves it. `route("CompleteMultipartUpload")` finds a route by its name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

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
    restore,
    tagging,
    versioning,
)
from services.walrus.s3.errors import S3Error

if TYPE_CHECKING:
    from services.walrus.s3.context import Ctx

Handler = Callable[["Ctx"], Awaitable[web.StreamResponse]]

# What a request names: the service (no bucket), a bucket (no key) or an object.
SERVICE, BUCKET, OBJECT = "service", "bucket", "object"


@dataclass(frozen=True)
class Route:
    operation: str  # the S3 operation's name
    methods: tuple[str, ...]
    target: str  # SERVICE, BUCKET or OBJECT
    handler: Handler
    sub: tuple[str, ...] = ()  # query parameters that select this route: any one of them (none: no condition)
    header: str = ""  # a header the request must carry
    query: tuple[str, str] | None = None  # a query parameter with this exact value (list-type=2)

    def matches(self, query: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        if self.sub and not any(name in query for name in self.sub):
            return False
        if self.header and self.header not in headers:
            return False
        return self.query is None or query.get(self.query[0]) == self.query[1]


def _r(
    operation: str,
    methods: str,
    target: str,
    handler: Handler,
    sub: str = "",
    *,
    header: str = "",
    query: tuple[str, str] | None = None,
) -> Route:
    return Route(operation, tuple(methods.split()), target, handler, tuple(sub.split()), header, query)


# Bucket configurations: when one of these sub-resources is in a bucket request's query it decides the operation,
# and a method the configuration has no route for is MethodNotAllowed.
BUCKET_CONFIGS = ("policy", "policyStatus", "cors", "lifecycle", "logging", "tagging", "publicAccessBlock")

# Sub-resources Walrus does not implement: answered with NotImplemented rather than mistaken for another call.
UNSUPPORTED = frozenset(
    """website notification replication encryption requestPayment
    accelerate analytics inventory metrics intelligent-tiering ownershipControls
    torrent select""".split()
)

ROUTES: tuple[Route, ...] = (
    # A CORS preflight, on a bucket or an object (never signed).
    _r("OptionsObject", "OPTIONS", BUCKET, cors.options_object),
    _r("OptionsObject", "OPTIONS", OBJECT, cors.options_object),
    _r("ListBuckets", "GET HEAD", SERVICE, buckets.list_buckets),
    # Bucket configurations (see BUCKET_CONFIGS).
    _r("PutBucketPolicy", "PUT", BUCKET, bucket_policy.put_bucket_policy, "policy"),
    _r("GetBucketPolicy", "GET", BUCKET, bucket_policy.get_bucket_policy, "policy"),
    _r("DeleteBucketPolicy", "DELETE", BUCKET, bucket_policy.delete_bucket_policy, "policy"),
    _r("GetBucketPolicyStatus", "GET", BUCKET, bucket_policy.get_bucket_policy_status, "policyStatus"),
    _r("PutBucketCors", "PUT", BUCKET, cors.put_bucket_cors, "cors"),
    _r("GetBucketCors", "GET", BUCKET, cors.get_bucket_cors, "cors"),
    _r("DeleteBucketCors", "DELETE", BUCKET, cors.delete_bucket_cors, "cors"),
    _r("PutBucketLifecycleConfiguration", "PUT", BUCKET, lifecycle.put_bucket_lifecycle_configuration, "lifecycle"),
    _r("GetBucketLifecycleConfiguration", "GET", BUCKET, lifecycle.get_bucket_lifecycle_configuration, "lifecycle"),
    _r("DeleteBucketLifecycle", "DELETE", BUCKET, lifecycle.delete_bucket_lifecycle, "lifecycle"),
    _r("PutBucketLogging", "PUT", BUCKET, access_log.put_bucket_logging, "logging"),
    _r("GetBucketLogging", "GET", BUCKET, access_log.get_bucket_logging, "logging"),
    _r("PutBucketTagging", "PUT", BUCKET, tagging.put_bucket_tagging, "tagging"),
    _r("GetBucketTagging", "GET", BUCKET, tagging.get_bucket_tagging, "tagging"),
    _r("DeleteBucketTagging", "DELETE", BUCKET, tagging.delete_bucket_tagging, "tagging"),
    _r("PutPublicAccessBlock", "PUT", BUCKET, bucket_policy.put_public_access_block, "publicAccessBlock"),
    _r("GetPublicAccessBlock", "GET", BUCKET, bucket_policy.get_public_access_block, "publicAccessBlock"),
    _r("DeletePublicAccessBlock", "DELETE", BUCKET, bucket_policy.delete_public_access_block, "publicAccessBlock"),
    # Buckets.
    _r("PutBucketAcl", "PUT", BUCKET, buckets.put_bucket_acl, "acl"),
    _r("PutBucketVersioning", "PUT", BUCKET, versioning.put_bucket_versioning, "versioning"),
    _r("PutObjectLockConfiguration", "PUT", BUCKET, object_lock.put_object_lock_configuration, "object-lock"),
    _r("CreateBucket", "PUT", BUCKET, buckets.create_bucket),
    _r("GetBucketAcl", "GET", BUCKET, buckets.get_bucket_acl, "acl"),
    _r("GetBucketLocation", "GET", BUCKET, buckets.get_bucket_location, "location"),
    _r("ListMultipartUploads", "GET", BUCKET, multipart.list_multipart_uploads, "uploads"),
    _r("ListObjectVersions", "GET", BUCKET, versioning.list_object_versions, "versions"),
    _r("GetBucketVersioning", "GET", BUCKET, versioning.get_bucket_versioning, "versioning"),
    _r("GetObjectLockConfiguration", "GET", BUCKET, object_lock.get_object_lock_configuration, "object-lock"),
    _r("ListObjectsV2", "GET", BUCKET, buckets.list_objects_v2, query=("list-type", "2")),
    _r("ListObjects", "GET", BUCKET, buckets.list_objects),
    _r("HeadBucket", "HEAD", BUCKET, buckets.head_bucket),
    _r("DeleteBucket", "DELETE", BUCKET, buckets.delete_bucket),
    _r("DeleteObjects", "POST", BUCKET, objects.delete_objects, "delete"),
    _r("PostObject", "POST", BUCKET, post.post_object),  # a browser's form upload
    # Objects: writes.
    _r("PutObjectAcl", "PUT", OBJECT, objects.put_object_acl, "acl"),
    _r("PutObjectRetention", "PUT", OBJECT, object_lock.put_object_retention, "retention"),
    _r("PutObjectLegalHold", "PUT", OBJECT, object_lock.put_object_legal_hold, "legal-hold"),
    _r("PutObjectTagging", "PUT", OBJECT, object_tagging.put_object_tagging, "tagging"),
    _r("UploadPartCopy", "PUT", OBJECT, multipart.upload_part_copy, "uploadId partNumber", header="x-amz-copy-source"),
    _r("UploadPart", "PUT", OBJECT, multipart.upload_part, "uploadId partNumber"),
    _r("CopyObject", "PUT", OBJECT, objects.copy_object, header="x-amz-copy-source"),
    _r("PutObject", "PUT", OBJECT, objects.put_object),
    # Objects: reads.
    _r("GetObjectAcl", "GET HEAD", OBJECT, objects.get_object_acl, "acl"),
    _r("GetObjectAttributes", "GET", OBJECT, attributes.get_object_attributes, "attributes"),
    _r("GetObjectRetention", "GET HEAD", OBJECT, object_lock.get_object_retention, "retention"),
    _r("GetObjectLegalHold", "GET HEAD", OBJECT, object_lock.get_object_legal_hold, "legal-hold"),
    _r("GetObjectTagging", "GET", OBJECT, object_tagging.get_object_tagging, "tagging"),
    _r("ListParts", "GET", OBJECT, multipart.list_parts, "uploadId"),
    _r("GetObject", "GET", OBJECT, objects.get_object),
    _r("HeadObject", "HEAD", OBJECT, objects.head_object),
    # Objects: deletes and multipart uploads.
    _r("AbortMultipartUpload", "DELETE", OBJECT, multipart.abort_multipart_upload, "uploadId"),
    _r("DeleteObjectTagging", "DELETE", OBJECT, object_tagging.delete_object_tagging, "tagging"),
    _r("DeleteObject", "DELETE", OBJECT, objects.delete_object),
    _r("RestoreObject", "POST", OBJECT, restore.restore_object, "restore"),
    _r("CreateMultipartUpload", "POST", OBJECT, multipart.create_multipart_upload, "uploads"),
    _r("CompleteMultipartUpload", "POST", OBJECT, multipart.complete_multipart_upload, "uploadId"),
)

_BY_NAME: dict[str, Route] = {}
for _route in ROUTES:
    _BY_NAME.setdefault(_route.operation, _route)
_BY_TARGET: dict[tuple[str, str], tuple[Route, ...]] = {}
for _route in ROUTES:
    for _method in _route.methods:
        _BY_TARGET[(_route.target, _method)] = (*_BY_TARGET.get((_route.target, _method), ()), _route)


# What a route can depend on besides the method, the target and which query parameters are there: a header's presence
# and one parameter's value. The first match for one combination is remembered (a client repeats its requests).
_HEADERS = {r.header for r in ROUTES if r.header}
_VALUES = {r.query[0] for r in ROUTES if r.query is not None}
assert len(_HEADERS) == len(_VALUES) == 1, "the memo key below names one header and one parameter value"
_HEADER, _VALUE = _HEADERS.pop(), _VALUES.pop()
_picked: dict[tuple[object, ...], Route] = {}
MEMO_ENTRIES = 4096


def route(operation: str) -> Route:
    """The route of an operation by its S3 name (KeyError for one Walrus does not serve)."""
    return _BY_NAME[operation]


def pick(method: str, bucket: str, key: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Route:
    """The route of one request; S3Error for what Walrus does not do."""
    target = OBJECT if key else BUCKET if bucket else SERVICE
    memo_key = (target, method, _HEADER in headers, query.get(_VALUE), *query)
    found = _picked.get(memo_key)
    if found is None:
        found = _match(method, target, bucket, query, headers)
        if len(_picked) >= MEMO_ENTRIES:
            _picked.clear()
        _picked[memo_key] = found
    return found


def _match(method: str, target: str, bucket: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Route:
    candidates = _BY_TARGET.get((target, method), ())
    if target == BUCKET and method != "OPTIONS":
        for name in BUCKET_CONFIGS:
            if name in query:
                for found in candidates:
                    if name in found.sub:
                        return found
                raise S3Error("MethodNotAllowed")
    if bucket and method != "OPTIONS" and not UNSUPPORTED.isdisjoint(query):
        raise S3Error("NotImplemented", f"Walrus does not implement ?{sorted(UNSUPPORTED.intersection(query))[0]}")
    for found in candidates:
        if found.matches(query, headers):
            return found
    if target == OBJECT and method == "POST":
        raise S3Error("NotImplemented", "Walrus does not implement this POST request")
    raise S3Error("MethodNotAllowed")
