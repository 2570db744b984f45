"""The route table: every operation found by its S3 name, served by the handler named after it, and requests
routed as S3 routes them, also when a decision is remembered for requests of the same shape (the behaviour through
real clients is what the other Walrus tests check)."""

from __future__ import annotations

import re

import pytest
from multidict import CIMultiDict, MultiDict

from services.walrus.s3 import multipart, routes
from services.walrus.s3.errors import S3Error


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def test_operations_are_found_by_name_and_handlers_are_named_after_them() -> None:
    assert routes.route("CompleteMultipartUpload").handler is multipart.complete_multipart_upload
    for route in routes.ROUTES:
        assert route.handler.__name__ == snake(route.operation), route
    with pytest.raises(KeyError):
        routes.route("SelectObjectContent")


CASES = [
    ("GET", "", "", "", {}, "ListBuckets"),
    ("PUT", "b", "", "", {}, "CreateBucket"),
    ("PUT", "b", "", "versioning", {}, "PutBucketVersioning"),
    ("GET", "b", "", "list-type=2&prefix=a", {}, "ListObjectsV2"),
    ("GET", "b", "", "prefix=a", {}, "ListObjects"),
    ("GET", "b", "", "list-type=1", {}, "ListObjects"),  # the same parameters as ListObjectsV2's, another value
    ("GET", "b", "", "lifecycle", {}, "GetBucketLifecycleConfiguration"),
    ("POST", "b", "", "delete", {}, "DeleteObjects"),
    ("POST", "b", "", "", {}, "PostObject"),
    ("OPTIONS", "b", "k", "", {}, "OptionsObject"),
    ("PUT", "b", "k", "", {}, "PutObject"),
    ("PUT", "b", "k", "", {"x-amz-copy-source": "/b/j"}, "CopyObject"),
    ("PUT", "b", "k", "partNumber=1&uploadId=u", {}, "UploadPart"),
    ("PUT", "b", "k", "partNumber=1&uploadId=u", {"x-amz-copy-source": "/b/j"}, "UploadPartCopy"),
    ("PUT", "b", "k", "tagging", {}, "PutObjectTagging"),
    ("GET", "b", "k", "uploadId=u", {}, "ListParts"),
    ("HEAD", "b", "k", "uploadId=u", {}, "HeadObject"),
    ("HEAD", "b", "k", "acl", {}, "GetObjectAcl"),
    ("GET", "b", "k", "versionId=v", {}, "GetObject"),
    ("DELETE", "b", "k", "uploadId=u", {}, "AbortMultipartUpload"),
    ("POST", "b", "k", "uploads", {}, "CreateMultipartUpload"),
    ("POST", "b", "k", "uploadId=u", {}, "CompleteMultipartUpload"),
]


@pytest.mark.parametrize(("method", "bucket", "key", "query", "headers", "operation"), CASES)
def test_requests_route_to_their_operation(
    method: str, bucket: str, key: str, query: str, headers: dict[str, str], operation: str
) -> None:
    parsed = MultiDict(p.partition("=")[::2] for p in query.split("&") if p)
    assert routes.pick(method, bucket, key, parsed, CIMultiDict(headers)).operation == operation
    assert routes.pick(method, bucket, key, parsed, CIMultiDict(headers)).operation == operation  # remembered


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "code"),
    [
        ("POST", "b", "", "policy", "MethodNotAllowed"),  # a configuration without that method
        ("GET", "b", "", "website", "NotImplemented"),
        ("POST", "b", "k", "", "NotImplemented"),
        ("PUT", "", "", "", "MethodNotAllowed"),
        ("PATCH", "b", "k", "", "MethodNotAllowed"),
    ],
)
def test_what_walrus_does_not_do_is_an_s3_error(method: str, bucket: str, key: str, query: str, code: str) -> None:
    with pytest.raises(S3Error) as caught:
        routes.pick(method, bucket, key, MultiDict({query: ""} if query else {}), CIMultiDict())
    assert caught.value.code == code
