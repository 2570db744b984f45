"""S3 errors: the exception handlers raise, and the `<Error>` document every failure answers with."""

from __future__ import annotations

import secrets

from services.walrus.s3 import xml as s3xml

# code -> (HTTP status, default message)
ERRORS: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AccessForbidden": (403, "CORSResponse: This CORS request is not allowed."),
    "AllAccessDisabled": (403, "All access to this object has been disabled"),
    "BadRequest": (400, "Bad Request"),
    "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
    "BucketAlreadyExists": (409, "The requested bucket name is not available."),
    "BucketAlreadyOwnedByYou": (
        409,
        "Your previous request to create the named bucket succeeded and you already own it.",
    ),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty"),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed object size."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed object size."),
    "ExpiredToken": (400, "The provided token has expired."),
    "IncompleteBody": (400, "You did not provide the number of bytes specified by the Content-Length HTTP header"),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The AWS Access Key Id you provided does not exist in our records."),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidDigest": (400, "The Content-MD5 you specified was invalid."),
    "InvalidPolicyDocument": (
        400,
        "The content of the form does not meet the conditions specified in the policy document.",
    ),
    "InvalidTag": (400, "The tag provided was not a valid tag."),
    "InvalidTargetBucketForLogging": (400, "The target bucket for logging does not exist or is not owned by you."),
    "InvalidPart": (
        400,
        "One or more of the specified parts could not be found. The part might not have been uploaded, or the "
        "specified entity tag might not have matched the part's entity tag.",
    ),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order. Parts must be ordered by part number."),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidObjectState": (403, "The operation is not valid for the current state of the object."),
    "InvalidRequest": (400, "Invalid Request"),
    "InvalidStorageClass": (400, "The storage class you specified is not valid"),
    "InvalidURI": (400, "Couldn't parse the specified URI."),
    "KeyTooLongError": (400, "Your key is too long"),
    "MalformedACLError": (400, "The XML you provided was not well-formed or did not validate against our schema"),
    "MalformedPolicy": (400, "Policy has invalid resource"),
    "MalformedPOSTRequest": (400, "The body of your POST request is not well-formed multipart/form-data."),
    "MalformedXML": (400, "The XML you provided was not well-formed or did not validate against our published schema"),
    "MaxPostPreDataLengthExceededError": (400, "Your POST request fields preceeding the upload file was too large."),
    "MaxMessageLengthExceeded": (400, "Your request was too big."),
    "MetadataTooLarge": (400, "Your metadata headers exceed the maximum allowed metadata size."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "MissingSecurityHeader": (400, "Your request was missing a required header"),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchBucketPolicy": (404, "The bucket policy does not exist"),
    "NoSuchCORSConfiguration": (404, "The CORS configuration does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchPublicAccessBlockConfiguration": (404, "The public access block configuration was not found"),
    "NoSuchTagSet": (404, "The TagSet does not exist"),
    "NoSuchUpload": (
        404,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted "
        "or completed.",
    ),
    "NotImplemented": (501, "A header you provided implies functionality that is not implemented"),
    "NotModified": (304, "Not Modified"),
    "PreconditionFailed": (412, "At least one of the pre-conditions you specified did not hold"),
    "QuotaExceeded": (403, "Your request would exceed the storage quota."),
    "RequestHeaderSectionTooLarge": (400, "Your request header section exceeds the maximum allowed size."),
    "RequestTimeTooSkewed": (403, "The difference between the request time and the current time is too large."),
    "UnresolvableGrantByEmailAddress": (400, "The e-mail address you provided does not match any account on record."),
    "ServiceUnavailable": (503, "Please reduce your request rate."),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided. Check your key and "
        "signing method.",
    ),
    "TooManyBuckets": (400, "You have attempted to create more buckets than allowed"),
    "XAmzContentSHA256Mismatch": (400, "The provided 'x-amz-content-sha256' header does not match what was computed."),
}


class S3Error(Exception):
    """Raise to answer with an S3 error. `extra` adds elements to the document (e.g. StringToSign)."""

    def __init__(self, code: str, message: str | None = None, status: int | None = None, **extra: object):
        default_status, default_message = ERRORS.get(code, (400, code))
        super().__init__(message or default_message)
        self.code = code
        self.message = message or default_message
        self.status = status or default_status
        self.extra = {k: str(v) for k, v in extra.items() if v is not None}
        self.headers: dict[str, str] = {}


def error_document(err: S3Error, resource: str, request_id: str) -> bytes:
    el = s3xml.el
    parts = [el("Code", err.code), el("Message", err.message)]
    parts += [el(name, value) for name, value in err.extra.items()]
    parts += [el("Resource", resource), el("RequestId", request_id), el("HostId", request_id)]
    return s3xml.document("Error", "".join(parts), namespace=False)


def http_error(status: int, code: str, message: str) -> tuple[bytes, str]:
    """An S3 error document for what the listener answers itself (a malformed request, a full service)."""
    return error_document(S3Error(code, message, status), "/", secrets.token_hex(8).upper()), "application/xml"
