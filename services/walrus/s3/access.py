"""The access decision for one request, as S3 makes it: the bucket's PublicAccessBlock, its policy and the ACLs.

Order (AWS's): an explicit Deny in the bucket policy refuses; with RestrictPublicBuckets and a public policy only
the bucket owner's account gets in; an Allow in the policy grants; otherwise the ACL (bucket's or object's, with
public grants ignored under IgnorePublicAcls) decides, and operations no ACL covers are the bucket owner's.

Handlers call `check(ctx, action, bucket, permission, acl=..., key=...)` before they act."""

from __future__ import annotations

from dataclasses import dataclass

from services.walrus.s3 import acl as acls
from services.walrus.s3 import policy as policies
from services.walrus.s3.condition_keys import RequestKeys
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.xml import child_text, el, parse_xml
from services.walrus.storage import ALL_USERS, AUTHENTICATED_USERS, Acl, BucketInfo

POLICY = "policy"
PUBLIC_ACCESS_BLOCK = "public-access-block"
OWNER = None  # `permission` for operations only the bucket owner may do (unless the policy allows them)
# The policy actions the bucket owner's account may always use on its own bucket, whatever the policy says.
LOCKOUT_SAFE = frozenset({"s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"})
PAB_FIELDS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


@dataclass(frozen=True)
class PublicAccessBlock:
    block_public_acls: bool = False
    ignore_public_acls: bool = False
    block_public_policy: bool = False
    restrict_public_buckets: bool = False

    @classmethod
    def from_xml(cls, body: bytes) -> PublicAccessBlock:
        root = parse_xml(body)
        if root.tag != "PublicAccessBlockConfiguration":
            raise S3Error("MalformedXML")
        values = []
        for name in PAB_FIELDS:
            text = (child_text(root, name) or "false").strip().lower()
            if text not in ("true", "false"):
                raise S3Error("MalformedXML", f"{name} must be true or false")
            values.append(text == "true")
        return cls(*values)

    def to_document(self) -> str:
        return ",".join(str(v).lower() for v in self.values())

    @classmethod
    def from_document(cls, text: str) -> PublicAccessBlock:
        return cls(*(v == "true" for v in text.split(",")))

    def values(self) -> tuple[bool, bool, bool, bool]:
        return (self.block_public_acls, self.ignore_public_acls, self.block_public_policy, self.restrict_public_buckets)

    def to_xml(self) -> str:
        return "".join(el(name, value) for name, value in zip(PAB_FIELDS, self.values(), strict=True))


NO_BLOCK = PublicAccessBlock()
_pab_cache: dict[str, PublicAccessBlock] = {}


async def public_access_block(ctx: Ctx, bucket: str) -> PublicAccessBlock:
    document = await ctx.app.storage.get_bucket_config(bucket, PUBLIC_ACCESS_BLOCK)
    if document is None:
        return NO_BLOCK
    found = _pab_cache.get(document)
    if found is None:
        found = _pab_cache[document] = PublicAccessBlock.from_document(document)
    return found


async def bucket_policy(ctx: Ctx, bucket: str) -> policies.Policy | None:
    document = await ctx.app.storage.get_bucket_config(bucket, POLICY)
    return policies.compiled(document, bucket) if document is not None else None


def is_public_acl(acl: Acl) -> bool:
    return any(g.grantee in (ALL_USERS, AUTHENTICATED_USERS) for g in acl.grants if g.grantee_type == "Group")


async def vet_acl(ctx: Ctx, bucket: str, acl: Acl) -> Acl:
    """An ACL a request sets, checked: grantees must exist (they get their display names), and BlockPublicAcls
    refuses a public one."""
    resolved = await acls.resolve_grantees(ctx, acl)
    assert resolved is not None
    if is_public_acl(resolved) and (await public_access_block(ctx, bucket)).block_public_acls:
        raise S3Error("AccessDenied", "Access Denied: the bucket's public access block refuses public ACLs")
    return resolved


def resource_arn(bucket: str, key: str | None) -> str:
    return f"arn:aws:s3:::{bucket}/{key}" if key is not None else f"arn:aws:s3:::{bucket}"


async def stored_tags(ctx: Ctx, bucket: str, key: str) -> dict[str, str] | None:
    """The tags of the object version a request acts on (the one its versionId names, else the current one), None
    when there is none."""
    version_id = ctx.query.get("versionId") if (bucket, key) == (ctx.bucket, ctx.key) else None
    info = await ctx.app.storage.get_version(bucket, key, version_id or None)
    return None if info is None or info.delete_marker else info.tags


async def check(
    ctx: Ctx,
    action: str,
    bucket: BucketInfo,
    permission: str | None,
    acl: Acl | None = None,
    key: str | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Raise AccessDenied unless the requester may do `action` (an s3:... name) on the bucket or its `key`.
    `permission` is the ACL permission that grants it (checked against `acl`, the bucket's by default), or
    OWNER for operations that belong to the bucket owner. `tags`: the object's stored tags when the caller has
    them at hand (else read when a policy condition asks for them)."""
    if not await allowed(ctx, action, bucket, permission, acl, key, tags):
        raise S3Error("AccessDenied")


async def allowed(
    ctx: Ctx,
    action: str,
    bucket: BucketInfo,
    permission: str | None,
    acl: Acl | None = None,
    key: str | None = None,
    tags: dict[str, str] | None = None,
) -> bool:
    requester = ctx.requester
    same_account = bool(requester.account_id) and requester.account_id == bucket.owner_id
    policy = await bucket_policy(ctx, bucket.name)
    block = await public_access_block(ctx, bucket.name)
    if policy is not None:
        if same_account and action in LOCKOUT_SAFE:
            return True
        caller = policies.Caller(requester.account_id, requester.user_name, requester.is_cloud)
        if tags is None and key is not None and policy.reads_existing_tags:
            tags = await stored_tags(ctx, bucket.name, key)
        keys = RequestKeys(ctx, bucket, tags)
        decision = policy.evaluate(caller, action, resource_arn(bucket.name, key), keys)
        if decision == "Deny":
            return False
        if block.restrict_public_buckets and not same_account and not requester.is_cloud and policy.public:
            return False
        if decision == "Allow":
            return True
    if permission is OWNER:
        return same_account
    return acls.allowed(acl or bucket.acl, requester, permission, ignore_public=block.ignore_public_acls)
