"""S3 ACLs: canned ACLs, grant headers, AccessControlPolicy XML both ways, and the access check."""

from __future__ import annotations

import functools
import re

from services.walrus.s3.context import Ctx, Requester
from services.walrus.s3.errors import S3Error
from services.walrus.s3.xml import XSI, child_text, el, parse_xml, raw
from services.walrus.storage import ALL_USERS, AUTHENTICATED_USERS, CLOUD_GROUP, Acl, Grant

CANNED = frozenset(
    {
        "private",
        "public-read",
        "public-read-write",
        "authenticated-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
        "aws-exec-read",
        "log-delivery-write",
    }
)
GRANT_HEADERS = {
    "x-amz-grant-read": "READ",
    "x-amz-grant-write": "WRITE",
    "x-amz-grant-read-acp": "READ_ACP",
    "x-amz-grant-write-acp": "WRITE_ACP",
    "x-amz-grant-full-control": "FULL_CONTROL",
}
LOG_DELIVERY = "http://acs.amazonaws.com/groups/s3/LogDelivery"
GROUPS = {ALL_USERS, AUTHENTICATED_USERS, CLOUD_GROUP, LOG_DELIVERY}
MAX_GRANTS = 100
_GRANTEE = re.compile(r'\s*(id|uri|emailAddress)\s*=\s*"([^"]*)"\s*')


def allowed(acl: Acl, requester: Requester, permission: str, ignore_public: bool = False) -> bool:
    """Whether the ACL grants `permission`; with `ignore_public` (IgnorePublicAcls) the AllUsers and
    AuthenticatedUsers grants count for nothing."""
    if requester.account_id and requester.account_id == acl.owner_id and permission in ("READ_ACP", "WRITE_ACP"):
        return True  # an owner may always read and change the ACL
    for grant in acl.grants:
        if grant.permission != permission and grant.permission != "FULL_CONTROL":
            continue
        if grant.grantee_type == "CanonicalUser":
            if requester.account_id and grant.grantee == requester.account_id:
                return True
        elif grant.grantee == ALL_USERS:
            if not ignore_public:
                return True
        elif grant.grantee == AUTHENTICATED_USERS and requester.authenticated:
            if not ignore_public:
                return True
        elif grant.grantee == CLOUD_GROUP and requester.is_cloud:
            return True
    return False


def require(acl: Acl, requester: Requester, permission: str) -> None:
    if not allowed(acl, requester, permission):
        raise S3Error("AccessDenied")


def canned(name: str, owner_id: str, owner_name: str, bucket_owner: tuple[str, str] | None = None) -> Acl:
    """A canned ACL (Acl is immutable: the same one serves every request that asks for it)."""
    if name not in CANNED:
        raise S3Error("InvalidArgument", f"unknown canned ACL {name}", ArgumentName="x-amz-acl", ArgumentValue=name)
    return _canned(name, owner_id, owner_name, bucket_owner)


@functools.lru_cache(maxsize=1024)
def _canned(name: str, owner_id: str, owner_name: str, bucket_owner: tuple[str, str] | None) -> Acl:
    # Only `canned` calls this, with a name already checked (so no client-made name takes a cache slot).
    grants = [Grant("CanonicalUser", owner_id, "FULL_CONTROL", owner_name)]
    if name == "public-read":
        grants.append(Grant("Group", ALL_USERS, "READ"))
    elif name == "public-read-write":
        grants += [Grant("Group", ALL_USERS, "READ"), Grant("Group", ALL_USERS, "WRITE")]
    elif name == "authenticated-read":
        grants.append(Grant("Group", AUTHENTICATED_USERS, "READ"))
    elif name == "aws-exec-read":
        grants.append(Grant("Group", CLOUD_GROUP, "READ"))
    elif name == "log-delivery-write":
        grants += [Grant("Group", LOG_DELIVERY, "WRITE"), Grant("Group", LOG_DELIVERY, "READ_ACP")]
    elif name in ("bucket-owner-read", "bucket-owner-full-control") and bucket_owner and bucket_owner[0] != owner_id:
        permission = "READ" if name == "bucket-owner-read" else "FULL_CONTROL"
        grants.append(Grant("CanonicalUser", bucket_owner[0], permission, bucket_owner[1]))
    return Acl(owner_id, owner_name, tuple(grants))


def from_headers(ctx: Ctx, owner_id: str, owner_name: str, bucket_owner: tuple[str, str] | None = None) -> Acl | None:
    """The ACL a request asks for with x-amz-acl or x-amz-grant-* headers, or None if it asks for none."""
    headers = ctx.headers
    name = headers.get("x-amz-acl")
    grant_headers = [h for h in GRANT_HEADERS if h in headers]
    if name and grant_headers:
        raise S3Error("InvalidRequest", "Specifying both Canned ACLs and Header Grants is not allowed")
    if name:
        return canned(name.strip(), owner_id, owner_name, bucket_owner)
    if not grant_headers:
        return None
    grants: list[Grant] = []
    for header in grant_headers:
        for item in headers.getall(header):
            for grantee in item.split(","):
                grants.append(_parse_grantee(grantee, GRANT_HEADERS[header]))
    if len(grants) > MAX_GRANTS:
        raise S3Error("InvalidArgument", "too many grants")
    return Acl(owner_id, owner_name, tuple(grants))


def _parse_grantee(text: str, permission: str) -> Grant:
    match = _GRANTEE.fullmatch(text)
    if not match:
        raise S3Error("InvalidArgument", f"malformed grant {text.strip()!r}")
    kind, value = match.groups()
    if kind == "id":
        return Grant("CanonicalUser", value, permission)
    if kind == "uri":
        if value not in GROUPS:
            raise S3Error("InvalidArgument", f"unknown group {value}")
        return Grant("Group", value, permission)
    raise _unresolvable(value)


def _unresolvable(email: str) -> S3Error:
    return S3Error("UnresolvableGrantByEmailAddress", EmailAddress=email[:256])


async def resolve_grantees(ctx: Ctx, acl: Acl | None) -> Acl | None:
    """The ACL with every grantee account checked and named (ID and DisplayName, as S3 answers them);
    InvalidArgument for an account that does not exist."""
    if acl is None:
        return None
    if all(g.grantee_type != "CanonicalUser" or _named_owner(acl, g) for g in acl.grants):
        return acl  # nothing to look up or rename (a canned ACL): the same object, so callers keep their spec
    grants = []
    for grant in acl.grants:
        if grant.grantee_type == "CanonicalUser":
            if grant.grantee == acl.owner_id:
                name: str | None = acl.owner_name
            else:
                name = await ctx.app.keys.account_name(grant.grantee)
            if name is None:
                raise S3Error(
                    "InvalidArgument", "Invalid id", ArgumentName="CanonicalUser/ID", ArgumentValue=grant.grantee[:64]
                )
            grant = Grant(grant.grantee_type, grant.grantee, grant.permission, name)
        grants.append(grant)
    return Acl(acl.owner_id, acl.owner_name, tuple(grants))


def _named_owner(acl: Acl, grant: Grant) -> bool:
    """A grant to the ACL's owner that already carries the owner's name (resolving it changes nothing)."""
    return grant.grantee == acl.owner_id and grant.display_name == acl.owner_name


def from_xml(body: bytes, current: Acl) -> Acl:
    root = parse_xml(body, "MalformedACLError")
    if root.tag != "AccessControlPolicy":
        raise S3Error("MalformedACLError")
    owner = root.find("Owner")
    owner_id = child_text(owner, "ID") if owner is not None else None
    if owner_id is not None and owner_id != current.owner_id:
        raise S3Error("AccessDenied", "the owner of an ACL cannot be changed")
    grants: list[Grant] = []
    acl_node = root.find("AccessControlList")
    for node in acl_node.findall("Grant") if acl_node is not None else []:
        grantee = node.find("Grantee")
        permission = child_text(node, "Permission")
        if grantee is None or permission not in ("FULL_CONTROL", "WRITE", "WRITE_ACP", "READ", "READ_ACP"):
            raise S3Error("MalformedACLError")
        kind = grantee.get(f"{{{XSI}}}type") or grantee.get("type") or ""
        if kind == "CanonicalUser":
            grant_id = child_text(grantee, "ID")
            if not grant_id:
                raise S3Error("MalformedACLError")
            grants.append(Grant("CanonicalUser", grant_id, permission, child_text(grantee, "DisplayName") or ""))
        elif kind == "Group":
            uri = child_text(grantee, "URI") or ""
            if uri not in GROUPS:
                raise S3Error("InvalidArgument", f"unknown group {uri}")
            grants.append(Grant("Group", uri, permission))
        elif kind == "AmazonCustomerByEmail":
            raise _unresolvable(child_text(grantee, "EmailAddress") or "")
        else:
            raise S3Error("MalformedACLError")
        if len(grants) > MAX_GRANTS:
            raise S3Error("MalformedACLError", "too many grants")
    return Acl(current.owner_id, current.owner_name, tuple(grants))


def to_xml(acl: Acl) -> str:
    grants = []
    for grant in acl.grants:
        if grant.grantee_type == "CanonicalUser":
            inner = el("ID", grant.grantee) + el("DisplayName", grant.display_name or grant.grantee)
        else:
            inner = el("URI", grant.grantee)
        grantee = f'<Grantee xmlns:xsi="{XSI}" xsi:type="{grant.grantee_type}">{inner}</Grantee>'
        grants.append(el("Grant", raw(grantee, el("Permission", grant.permission))))
    owner = el("Owner", raw(el("ID", acl.owner_id), el("DisplayName", acl.owner_name)))
    return owner + el("AccessControlList", raw(*grants))
