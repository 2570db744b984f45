"""BundleInstance between the CLC, the CC and the NC: the node snapshots and bundles an instance's root disk and
uploads the parts with the user's upload policy; the CLC signs and uploads the manifest (see
services/node_controller/bundler.py for why). The CC forwards each call to the instance's node."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

BUNDLE_ID = r"^bun-[0-9a-f]{8}$"
# The node's side of a task: bundling -> storing -> stored (parts uploaded, manifest to sign) | failed.
NodeBundleState = Literal["bundling", "storing", "stored", "failed"]


class StartBundleRequest(BaseModel):
    bundle_id: str = Field(pattern=BUNDLE_ID)
    instance_id: str = Field(max_length=32)
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field(min_length=1, max_length=128)
    access_key_id: str = Field(max_length=128)
    policy: str = Field(max_length=32 * 1024)  # base64 text, as signed
    signature: str = Field(max_length=128)
    acl: str = Field("", max_length=64)
    account_id: str = Field(max_length=64)  # the manifest's <user>
    cloud_cert_pem: str = Field(max_length=16 * 1024)  # the bundle key is wrapped for the cloud
    s3_url: str = Field(max_length=512)  # where the parts go (Walrus's S3 endpoint)


class BundleTaskRequest(BaseModel):
    bundle_id: str = Field(pattern=BUNDLE_ID)
    instance_id: str = Field(max_length=32)


class NodeBundleStatus(BaseModel):
    bundle_id: str
    instance_id: str
    state: NodeBundleState
    progress: int = 0  # percent
    error: str = ""
    manifest: str = ""  # the unsigned manifest, once stored
