"""A remote zone's picture of one instance (the local id and state the CLC sees, the remote id and state), and of
one local image uploaded to the remote cloud."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.messages.cc_nc import NetConfig, VmType
from common.messages.clc_cc import ClusterInstance

LIVE_STATES = frozenset({"Pending", "Extant"})
# The remote's instance states as the local cloud reports them (a stopped instance is still the user's).
REMOTE_STATES = {
    "pending": "Pending",
    "running": "Extant",
    "stopping": "Extant",
    "stopped": "Extant",
    "shutting-down": "Extant",
    "terminated": "Teardown",
}


@dataclass
class RemoteInstance:
    instance_id: str
    reservation_id: str
    owner_id: str
    vm: VmType
    launch_index: int = 0
    net: NetConfig = field(default_factory=NetConfig)
    state: str = "Pending"
    remote_id: str = ""  # empty while its RunInstances is in flight
    remote_state: str = ""
    terminating: bool = False
    detail: str = ""
    reason: str = ""
    launch_time: float = field(default_factory=time.time)
    ended_at: float = 0.0

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def launching(self) -> bool:
        return self.live and not self.remote_id

    def report(self, reachable: bool, node_id: str) -> ClusterInstance:
        return ClusterInstance(
            instance_id=self.instance_id,
            reservation_id=self.reservation_id,
            owner_id=self.owner_id,
            node_id=node_id,
            # A remote that does not answer: not terminated, just not known (as a local node that is DOWN).
            state=self.state if reachable or not self.live else "Unknown",
            detail=self.detail,
            reason=self.reason,
            net=self.net,
            launch_time=self.launch_time,
        )


UPLOAD_STATES = ("uploading", "registering", "ready", "failed", "deleting")


@dataclass
class Upload:
    """A local image re-bundled for the remote cloud: `uploading` (fetched, bundled, put in `bucket`), then
    `registering` (every object is there), then `ready` with its `remote_id`; or `failed` with the `reason`; or
    `deleting` once the local image is deregistered (until its remote image and bucket are gone)."""

    local_id: str
    kind: str  # machine, kernel, ramdisk
    manifest: str  # the local bundle (bucket/key)
    bucket: str  # the remote bucket, this zone's alone
    state: str = "uploading"
    remote_id: str = ""
    reason: str = ""
    failed_at: float = 0.0  # monotonic; a refusal is remembered a while, not for ever
    architecture: str = ""  # the local image's (i386, x86_64...); registered remotely with it ('' is x86_64)
