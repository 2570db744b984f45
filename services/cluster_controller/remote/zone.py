"""The remote zone engine: the CC's answers to the CLC (the same operations as a zone of local nodes), backed by
instances in a remote EC2-compatible cloud.

Every instance is written (state Pending, no remote id) before its RunInstances goes out, with a ClientToken
and tags naming this cloud and the local instance id, so whatever the CC or the remote does next can be sorted
out from both sides: the poll loop reads every remote instance tagged with this cloud and terminates any whose
local instance is not live (never recorded, ended, or launching when the CC crashed: the CLC took that launch for
failed), ends local instances the remote no longer has, and re-sends terminations until the remote confirms.
Remote failures are timeouts and backoff, never a wait on the CLC's requests: describe calls answer from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any
from urllib.parse import urlsplit

from common.backoff import Backoff
from common.config import ConfigError
from common.ids import is_id
from common.messages.cc_nc import InstanceInfo, LaunchSpec, VmType
from common.messages.clc_cc import (
    ClusterInstance,
    DescribeNodesResponse,
    DescribeResourcesResponse,
    InstancePlacement,
    NodeInfo,
    ResourceAvailability,
    RunInstancesRequest,
    RunInstancesResponse,
)
from common.messages.network import NetworkRule
from common.rpc import RpcError
from common.tasks import TaskSet
from services.cluster_controller.config import ClusterControllerConfig
from services.cluster_controller.notifier import Notifier
from services.cluster_controller.remote.ec2 import Ec2Client, RemoteError, RemoteRefused, RemoteUnavailable
from services.cluster_controller.remote.model import REMOTE_STATES, RemoteInstance
from services.cluster_controller.remote.resources import RemoteResources
from services.cluster_controller.remote.store import RemoteStore
from services.cluster_controller.remote.uploads import RemoteImages
from services.cluster_controller.reservations import purge_ended

log = logging.getLogger("koala.cc.remote")
# The tags of every remote instance: this cloud's prefix, and the local instance, reservation and account.
TAG_CLOUD, TAG_INSTANCE = "koala-cloud", "koala-instance"
TAG_RESERVATION, TAG_OWNER = "koala-reservation", "koala-owner"
SWEEP_EVERY = 60.0  # seconds between sweeps of unused remote key pairs and groups when nothing ended
SWEEP_RETRY = 2.0  # ... and after a sweep that left a group (still used by a remote instance on its way out)
FAST_WHILE = 120.0  # seconds after a launch or termination the remote is polled at the busy rate
BUSY_MAX = 2.0  # longest wait between polls while instances are starting or going
HOT_FOR = 1.5  # seconds after a launch or termination the remote is polled at the fast rate without backing off
# (most guests change state within this time; a backoff from the first poll would see the change late).
UNENDED = ["pending", "running", "shutting-down", "stopping", "stopped"]  # the remote states the full sync lists
PROBE_BATCH = 200  # starting instances asked about in one DescribeInstances (by id)
SYNC_HOLD_MAX = 2.0  # longest the full sync waits for the launches' RunInstances at the remote to be answered


class RemoteZone:
    def __init__(
        self,
        config: ClusterControllerConfig,
        ec2: Ec2Client,
        store: RemoteStore,
        notifier: Notifier,
        prefix: str,
        remote_images: RemoteImages,
    ):
        self.config, self.ec2, self.store, self.notifier = config, ec2, store, notifier
        self.zone = config.KOALA_ZONE
        self.prefix = prefix
        self.images = config.image_map()
        self.remote_images = remote_images  # the map, and the uploads of unmapped images (uploads.py)
        self.types = config.vmtype_map()
        self.resources = RemoteResources(ec2, prefix)
        self.instances: dict[str, RemoteInstance] = {}
        self.node_id = f"remote:{urlsplit(config.KOALA_REMOTE_ENDPOINT).netloc}"  # the zone's one "node"
        self.reachable = False
        self.last_error = "not polled yet"
        self.polls = 0
        self._failures = 0
        self._tasks = TaskSet(log)
        self._wake = asyncio.Event()
        self._started = asyncio.Event()  # a remote RunInstances answered: the start watch polls from the fast rate
        self._busy_until = self._hot_until = 0.0
        self._sweep_due = 0.0
        self._unsynced: set[str] = set()  # networks whose rules changed since their remote group was last set
        self._sweep_lock = asyncio.Lock()
        self._in_flight = 0
        self._runs_sent = 0  # RunInstances at the remote, not answered yet
        self._no_runs_sent = asyncio.Event()
        self._no_runs_sent.set()

    # --- lifecycle ------------------------------------------------------------------------------------
    async def check(self) -> None:
        """At start-up: wrong credentials or an image map naming images the remote does not have are a
        ConfigError; a remote that does not answer is only logged (it is polled until it does)."""
        try:
            await self.ec2.call("DescribeAvailabilityZones", {})
            wanted = sorted(set(self.images.values()))
            if wanted:
                answer = await self.ec2.call("DescribeImages", {"ImageIds": wanted})
                found = {image.get("ImageId") for image in answer.get("Images") or []}
                missing = [local for local, remote in self.images.items() if remote not in found]
                if missing:
                    raise ConfigError(
                        "KOALA_REMOTE_IMAGE_MAP: the remote has no image "
                        + ", ".join(f"{self.images[m]} (for {m})" for m in missing)
                    )
        except RemoteRefused as err:
            if err.credentials:
                raise ConfigError(
                    f"KOALA_REMOTE_CREDENTIALS: {self.config.KOALA_REMOTE_ENDPOINT} refused the credentials "
                    f"({err.code}: {err.message})"
                ) from None
            if err.code.startswith("InvalidAMIID"):
                raise ConfigError(f"KOALA_REMOTE_IMAGE_MAP: {err.code}: {err.message}") from None
            raise ConfigError(f"KOALA_REMOTE_ENDPOINT: the remote refused DescribeAvailabilityZones: {err}") from None
        except RemoteUnavailable as err:
            log.warning("remote %s does not answer at start (%s); polling it", self.config.KOALA_REMOTE_ENDPOINT, err)
            return
        self.reachable, self.last_error = True, ""
        await self.remote_images.check()

    async def start(self) -> None:
        for instance in await self.store.load():
            self.instances[instance.instance_id] = instance
        self.resources.rules = await self.store.load_networks()
        for instance in self.instances.values():  # the first poll checks the groups of live instances
            spec = await self.store.reservations.spec(instance.reservation_id) if instance.live else None
            for network in self.networks_of(spec) if spec is not None else []:
                if network in self.resources.rules:
                    self._unsynced.add(network)
        # Launches in flight when the CC stopped are sent again: their ClientToken makes the remote answer with the
        # instance it may have started already, so none starts twice (and one asked to go meanwhile ends).
        unfinished = [i for i in self.instances.values() if i.launching]
        log.info(
            "remote zone %s on %s: %d live instances, %d launches to finish",
            self.zone,
            self.config.KOALA_REMOTE_ENDPOINT,
            self.live_count(),
            len(unfinished),
        )
        self.notifier.start()
        self.remote_images.start()  # uploads a crash interrupted resume before the launches that wait on them
        for instance in unfinished:
            self._spawn(self._dispatch(instance), f"redispatch {instance.instance_id}")
        self._spawn(self._poll_loop(), "remote poll")
        self._spawn(self._watch_starts(), "remote start watch")
        self._started.set()  # instances that were starting when the CC stopped
        self._spawn(
            purge_ended(self.instances, self.config.KOALA_TEARDOWN_RETENTION, self.store.reservations), "remote purge"
        )

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.remote_images.stop()
        await self.notifier.stop()
        await self.ec2.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    def _watch(self, instance: RemoteInstance) -> None:
        """A remote RunInstances answered: the start watch polls from the fast rate (the full sync is not woken:
        the instance's state is the watch's while it starts, and the remote would answer the sync first)."""
        now = time.monotonic()
        self._busy_until, self._hot_until = now + FAST_WHILE, now + HOT_FOR
        if instance.live and instance.state == "Pending":
            self._started.set()

    def _poke(self) -> None:
        """Something changed here: poll the remote at the fast rate for a while."""
        now = time.monotonic()
        self._busy_until, self._hot_until = now + FAST_WHILE, now + HOT_FOR
        self._wake.set()

    # --- state ------------------------------------------------------------------------------------------
    def _changed(self, instance: RemoteInstance) -> None:
        self.notifier.changed(instance.report(self.reachable, self.node_id))

    def _end(self, instance: RemoteInstance, reason: str) -> None:
        if instance.live:
            log.info("%s (remote %s): Teardown (%s)", instance.instance_id, instance.remote_id or "-", reason)
            # Its key pair and groups go once no instance has used them for KOALA_REMOTE_KEEP_UNUSED seconds.
            self._sweep_due = min(self._sweep_due, time.monotonic() + self.config.KOALA_REMOTE_KEEP_UNUSED)
        instance.state, instance.reason = "Teardown", reason
        instance.ended_at = instance.ended_at or time.time()
        self._changed(instance)

    def _apply_remote(self, instance: RemoteInstance, remote: dict[str, Any]) -> bool:
        """Take the remote's view of the instance; True if anything the CLC sees changed."""
        remote_state = (remote.get("State") or {}).get("Name", "")
        before = (instance.state, instance.net.public_ip, instance.remote_state, instance.detail)
        instance.remote_state = remote_state
        # The public address is the remote's. The private one stays in the detail only: the CLC finds local guests
        # by private address (metadata), and the remote's private network may reuse the local addresses.
        instance.net = instance.net.model_copy(
            update={"public_ip": remote.get("PublicIpAddress") or instance.net.public_ip}
        )
        private = remote.get("PrivateIpAddress")
        instance.detail = f"remote {instance.remote_id}" + (f" (private address {private})" if private else "")
        state = REMOTE_STATES.get(remote_state)
        if state == "Teardown":
            self._end(instance, "terminated" if instance.terminating else "terminated in the remote cloud")
        elif state is not None and instance.live and not (state == "Pending" and instance.state == "Extant"):
            instance.state = state
        after = (instance.state, instance.net.public_ip, instance.remote_state, instance.detail)
        # Pushed when the CLC would show something new: not while the instance is still starting and only its
        # remote id or address came (the RunInstances answer). That push reached the CLC just before the remote's
        # `running` most of the time, and held it behind its own answer; the address comes with `running`.
        starting = before[0] == after[0] == "Pending"
        if after != before and instance.live and not starting:
            self._changed(instance)
        return after != before

    # --- queries ----------------------------------------------------------------------------------------
    def describe_instances(self, ids: Iterable[str]) -> list[ClusterInstance]:
        wanted = [i.lower() for i in ids]
        chosen = [self.instances[i] for i in wanted if i in self.instances] if wanted else self.instances.values()
        return [i.report(self.reachable, self.node_id) for i in chosen]

    def live_count(self) -> int:
        return sum(1 for i in self.instances.values() if i.live)

    def describe_resources(self, vm_types: list[VmType]) -> DescribeResourcesResponse:
        """Capacity is the admin's cap on live remote instances, for the mapped VM types, while the remote
        answers: a remote that fails is not offered to new launches."""
        room = max(self.config.KOALA_REMOTE_MAX_INSTANCES - self.live_count(), 0)
        resources = [
            ResourceAvailability(
                vm_type=vm.name,
                available=room if self.reachable and vm.name in self.types else 0,
                max=self.config.KOALA_REMOTE_MAX_INSTANCES if vm.name in self.types else 0,
            )
            for vm in vm_types
        ]
        return DescribeResourcesResponse(
            zone=self.zone, resources=resources, nodes_up=int(self.reachable), nodes_total=1, remote=True
        )

    def describe_nodes(self) -> DescribeNodesResponse:
        endpoint = self.config.KOALA_REMOTE_ENDPOINT
        node = NodeInfo(
            url=endpoint,
            node_id=self.node_id,
            state="UP" if self.reachable else "DOWN",
            source="config",
            instances=self.live_count(),
        )
        return DescribeNodesResponse(zone=self.zone, policy="REMOTE", nodes=[node])

    # --- launch -------------------------------------------------------------------------------------------
    async def run_instances(self, request: RunInstancesRequest) -> RunInstancesResponse:
        ids = [launch.instance_id.lower() for launch in request.instances]
        bad = next((i for i in ids if not is_id(i, "i")), None)
        if bad is not None:
            raise RpcError(400, "InvalidInstanceID.Malformed", f"{bad[:40]!r} is not an instance id")
        if not is_id(request.reservation_id, "r"):
            raise RpcError(400, "InvalidRequest", f"{request.reservation_id[:40]!r} is not a reservation id")
        if len(set(ids)) != len(ids) or request.min_count > len(ids):
            raise RpcError(400, "InvalidRequest", "duplicate instance ids, or min_count above the instance count")
        known = [self.instances[i] for i in ids if i in self.instances]
        if known:
            if any(i.reservation_id != request.reservation_id for i in known):
                raise RpcError(409, "InvalidInstanceID.Duplicate", f"instance {known[0].instance_id} already exists")
            return RunInstancesResponse(instances=[self._placement(i) for i in ids])
        refusal = self._refusal(request, len(ids))
        if refusal:
            log.warning("reservation %s: %s", request.reservation_id, refusal)
            return RunInstancesResponse(instances=[InstancePlacement(instance_id=i, error=refusal) for i in ids])
        spec = LaunchSpec.of(request)
        chosen = [
            RemoteInstance(
                instance_id=launch.instance_id.lower(),
                reservation_id=request.reservation_id,
                owner_id=request.owner_id,
                vm=request.vm_type,
                launch_index=launch.launch_index,
                net=launch.net,
            )
            for launch in request.instances
        ]
        for instance in chosen:
            self.instances[instance.instance_id] = instance
        try:  # written before the remote hears of it
            await self.store.add_reservation(request.reservation_id, spec, chosen)
        except Exception:
            for instance in chosen:
                del self.instances[instance.instance_id]
            raise
        # No poll now: the full sync leaves launches in flight alone (their RunInstances answer brings their ids),
        # and its DescribeInstances would only queue at the remote ahead of theirs.
        for instance in chosen:
            self._spawn(self._dispatch(instance, spec), f"dispatch {instance.instance_id}")
        # One turn of the loop before the answer: each dispatch sends its RunInstances now (when its image, key pair
        # and groups are there, as most of the time) and the remote starts while the CLC reads this answer.
        await asyncio.sleep(0)
        log.info(
            "reservation %s: %d instances of %s on their way to %s",
            request.reservation_id,
            len(ids),
            request.vm_type.name,
            self.config.KOALA_REMOTE_ENDPOINT,
        )
        return RunInstancesResponse(instances=[self._placement(i) for i in ids])

    def _refusal(self, request: RunInstancesRequest, count: int) -> str:
        images = self.remote_images.refusal(request)
        if images:
            return images
        if request.vm_type.name not in self.types:
            return f"Unsupported: VM type {request.vm_type.name} is not offered in zone {self.zone}"
        room = self.config.KOALA_REMOTE_MAX_INSTANCES - self.live_count()
        if room < request.min_count:
            return f"InsufficientInstanceCapacity: zone {self.zone} may run {room} more instances, not {count}"
        if not self.reachable:
            why = self.last_error
            return f"InsufficientInstanceCapacity: the remote cloud of zone {self.zone} does not answer: {why}"
        return ""

    def _placement(self, instance_id: str) -> InstancePlacement:
        instance = self.instances[instance_id]
        failed = instance.reason if instance.reason.startswith("failed") else ""
        return InstancePlacement(instance_id=instance_id, node_id=self.node_id, error=failed)

    def networks_of(self, spec: LaunchSpec) -> list[str]:
        """The local networks (security group `<account>-<group>`) of every group the instance is in: each has its
        remote group, and the remote instance is in all of them."""
        return [f"{spec.owner_id}-{group}" for group in dict.fromkeys(spec.group_names or ["default"])]

    async def _dispatch(self, instance: RemoteInstance, known: LaunchSpec | None = None) -> None:
        """Start the instance remotely, trying again with backoff (and the same ClientToken, so never twice) while
        the remote does not answer, for KOALA_REMOTE_LAUNCH_DEADLINE seconds after the launch."""
        async with self._sweep_lock:  # no sweep deletes its key pair or group between their check and its launch
            self._in_flight += 1
        try:
            backoff = Backoff(initial=1.0, maximum=self.config.KOALA_REMOTE_POLL_MAX)
            while instance.launching:
                if instance.terminating:
                    self._end(instance, "terminated before it started")
                    await self.store.save([instance])
                    return
                # The launch's own spec as the CLC sent it (written already), or after a restart the stored one.
                spec = known or await self.store.reservations.spec(instance.reservation_id)
                if spec is None:
                    self._end(instance, "failed: its launch specification was lost")
                    await self.store.save([instance])
                    return
                try:
                    await self._launch(instance, spec)
                except RemoteRefused as err:
                    reason = f"failed: the remote cloud refused it: {err.code}: {err.message}"[:500]
                    log.warning("%s: %s", instance.instance_id, reason)
                    self._end(instance, reason)
                    await self.store.save([instance])
                    return
                except RemoteUnavailable as err:
                    self._note_failure(err)
                    if time.time() - instance.launch_time > self.config.KOALA_REMOTE_LAUNCH_DEADLINE:
                        # Ended; if the remote started it after all, the poll loop finds it by its tags and ends it.
                        self._end(
                            instance, f"failed: the remote cloud does not answer: {err.code}: {err.message}"[:500]
                        )
                        await self.store.save([instance])
                        return
                    delay = backoff.next_delay()
                    log.warning("%s: RunInstances: %s (trying again in %.0f s)", instance.instance_id, err, delay)
                    await asyncio.sleep(delay)
        finally:
            self._in_flight -= 1

    async def _launch(self, instance: RemoteInstance, spec: LaunchSpec) -> None:
        """RunInstances for one instance, its remote id written once known."""
        images = await self.remote_images.launch_params(spec)  # uploads the image first if it must
        if instance.terminating:
            return  # asked to go while its image was uploaded: the caller ends it
        params: dict[str, Any] = {
            **images,
            "InstanceType": self.types[spec.vm_type.name],
            "MinCount": 1,
            "MaxCount": 1,
            # The same token for the same local instance: a retry can never start a second remote instance.
            "ClientToken": f"{self.prefix}-{instance.instance_id}",
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": TAG_CLOUD, "Value": self.prefix},
                        {"Key": TAG_INSTANCE, "Value": instance.instance_id},
                        {"Key": TAG_RESERVATION, "Value": instance.reservation_id},
                        {"Key": TAG_OWNER, "Value": instance.owner_id},
                    ],
                }
            ],
        }
        if spec.user_data:
            params["UserData"] = spec.user_data
        if self.config.KOALA_REMOTE_ZONE:
            params["Placement"] = {"AvailabilityZone": self.config.KOALA_REMOTE_ZONE}
        networks = self.networks_of(spec)
        known = self.resources.ready(spec.ssh_public_key, networks)
        if known is not None:
            key, names = known
        elif spec.ssh_public_key:
            groups = [self.resources.ensure_group(n) for n in networks]
            key, *names = await asyncio.gather(self.resources.ensure_key(spec.ssh_public_key), *groups)
        else:
            key, names = "", list(await asyncio.gather(*(self.resources.ensure_group(n) for n in networks)))
        if key:
            params["KeyName"] = key
        params["SecurityGroups"] = names
        self._runs_sent += 1
        self._no_runs_sent.clear()
        try:
            answer = await self.ec2.call("RunInstances", params)
        except RemoteRefused as err:
            if err.code.startswith(("InvalidAMIID", "InvalidKernelId", "InvalidRamdiskId", "InvalidRamdiskID")):
                await self.remote_images.lost(images)  # deregistered remotely: the next launch uploads it again
            raise
        finally:
            self._runs_sent -= 1
            if not self._runs_sent:
                self._no_runs_sent.set()
        remote = (answer.get("Instances") or [{}])[0]
        if not remote.get("InstanceId"):
            raise RemoteRefused("NoInstance", "the remote answered RunInstances without an instance")
        instance.remote_id = remote["InstanceId"]
        self._apply_remote(instance, remote)
        self._watch(instance)  # the start watch counts from the answer, not from the write below
        await self.store.save([instance])
        log.info("%s: remote instance %s (%s)", instance.instance_id, instance.remote_id, instance.remote_state)
        if instance.terminating:  # asked to go while the launch was in flight
            await self._terminate_remote([instance])

    # --- terminate, reboot, console ------------------------------------------------------------------
    async def terminate(self, ids: list[str]) -> list[str]:
        known = [self.instances[i.lower()] for i in ids if i.lower() in self.instances]
        acting = [i for i in known if i.live and not i.terminating]
        for instance in acting:
            instance.terminating = True
        await self.store.save(acting)  # written before the remote hears of it
        ready = [i for i in acting if i.remote_id]
        if ready:
            self._spawn(self._terminate_remote(ready), "terminate remote")
        self._poke()
        return [i.instance_id for i in known]

    async def _terminate_remote(self, instances: list[RemoteInstance]) -> None:
        """One TerminateInstances; on failure the poll loop sends it again."""
        ids = [i.remote_id for i in instances if i.remote_id]
        if not ids:
            return
        try:
            answer = await self.ec2.call("TerminateInstances", {"InstanceIds": ids})
        except RemoteRefused as err:
            if err.code != "InvalidInstanceID.NotFound":
                log.warning("TerminateInstances %s refused: %s", ids, err)
                return
            for instance in instances:  # the remote has none of them: nothing runs
                self._end(instance, "terminated")
            await self.store.save(instances)
            return
        except RemoteUnavailable as err:
            log.warning("TerminateInstances %s: %s (will retry)", ids, err)
            return
        by_remote = {i.remote_id: i for i in instances}
        ended = []
        for item in answer.get("TerminatingInstances") or []:
            gone = by_remote.get(item.get("InstanceId", ""))
            if gone is not None and (item.get("CurrentState") or {}).get("Name") == "terminated":
                self._end(gone, "terminated")
                ended.append(gone)
        await self.store.save(ended)
        self._poke()

    async def reboot(self, ids: list[str]) -> list[str]:
        chosen = [self.instances[i.lower()] for i in ids if i.lower() in self.instances]
        chosen = [i for i in chosen if i.live and i.remote_id and not i.terminating]
        if chosen:

            async def send() -> None:
                try:
                    await self.ec2.call("RebootInstances", {"InstanceIds": [i.remote_id for i in chosen]})
                except RemoteError as err:
                    log.warning("RebootInstances %s: %s", [i.instance_id for i in chosen], err)

            self._spawn(send(), "reboot remote")  # the CLC does not wait on the remote
        return [i.instance_id for i in chosen]

    async def console_output(self, instance_id: str) -> str:
        instance = self.instances.get(instance_id.lower())
        if instance is None:
            raise RpcError(404, "InvalidInstanceID.NotFound", f"no instance {instance_id} in zone {self.zone}")
        if not instance.remote_id:
            raise RpcError(503, "NodeUnavailable", f"{instance_id} has not started remotely")
        try:
            answer = await self.ec2.call(
                "GetConsoleOutput", {"InstanceId": instance.remote_id}, timeout=min(self.ec2.timeout, 10.0)
            )
        except RemoteRefused as err:
            raise RpcError(404 if "NotFound" in err.code else 502, err.code, f"remote: {err.message}") from None
        except RemoteUnavailable as err:
            raise RpcError(503, "NodeUnavailable", f"the remote cloud does not answer: {err.message}") from None
        return answer.get("Output") or ""

    # --- networks (the CLC's ConfigureNetwork) ----------------------------------------------------------
    async def configure_network(self, name: str, rules: list[NetworkRule]) -> None:
        """Keep the rule set (written first); the poll loop brings the remote group in line (until it has), so
        the CLC's call does not wait on the remote. A launch applies the set itself before its RunInstances."""
        if self.resources.rules.get(name) == rules:
            return  # sent before every launch: unchanged most of the time
        await self.store.save_network(name, rules)
        self.resources.rules[name] = rules
        self._unsynced.add(name)
        self._wake.set()

    # --- the poll loop: state, reconciliation, clean-up -----------------------------------------------------
    def _note_failure(self, err: RemoteError) -> None:
        self._failures += 1
        self.last_error = str(err)
        if self._failures >= 2 and self.reachable:
            log.warning("remote %s unavailable: %s", self.config.KOALA_REMOTE_ENDPOINT, err)
            self.reachable = False
            for instance in self.instances.values():
                if instance.live:
                    self._changed(instance)

    def _note_success(self) -> None:
        """The remote answered a poll (the full sync or the start watch's): it is offered to launches again."""
        if not self.reachable:
            log.info("remote %s answers again", self.config.KOALA_REMOTE_ENDPOINT)
            self.reachable = True
            for instance in self.instances.values():
                if instance.live:
                    self._changed(instance)
        self._failures, self.last_error = 0, ""

    async def _poll_loop(self) -> None:
        """Poll at KOALA_REMOTE_POLL_SECONDS after a change, backing off while nothing changes: by half again up to
        BUSY_MAX while instances are on their way (starting or going), doubling up to KOALA_REMOTE_POLL_MAX when
        all is still, and while the remote fails."""
        fast, slow = self.config.KOALA_REMOTE_POLL_SECONDS, self.config.KOALA_REMOTE_POLL_MAX
        delay = fast
        failing = Backoff(initial=1.0, maximum=slow)
        while True:
            self._wake.clear()
            # Not while a launch's RunInstances is at the remote: the sync's DescribeInstances would be served with it
            # (the remote's CPU shared, often with the local cloud's on one machine) and hold up the guest's start.
            if not self._no_runs_sent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._no_runs_sent.wait(), SYNC_HOLD_MAX)
            try:
                changed = await self.sync()
            except RemoteError as err:
                self._note_failure(err)
                delay = failing.next_delay()
            else:
                self._note_success()
                failing.reset()
                # Starting instances are the start watch's, launches in flight their dispatch's (the sync skips
                # them): this loop hurries for terminations only.
                busy = time.monotonic() < self._busy_until and any(
                    i.live and i.terminating for i in self.instances.values()
                )
                if changed or (busy and time.monotonic() < self._hot_until):
                    delay = fast
                elif busy:
                    delay = min(delay * 1.5, max(BUSY_MAX, fast))
                else:
                    delay = min(delay * 2, slow)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            if self._wake.is_set():
                delay = fast

    def _starting(self) -> list[RemoteInstance]:
        return [
            i for i in self.instances.values() if i.live and i.state == "Pending" and i.remote_id and not i.terminating
        ]

    async def _watch_starts(self) -> None:
        """While instances are starting remotely, one DescribeInstances of just those (by id) sent every
        KOALA_REMOTE_POLL_SECONDS for HOT_FOR after the latest remote launch, then backing off by half again up to
        BUSY_MAX until FAST_WHILE: a guest's change to running reaches the CLC within one short wait, without a
        full sync (which goes on at its own pace: reconciliation, terminations, groups, and the instances still
        starting after FAST_WHILE)."""
        fast = self.config.KOALA_REMOTE_POLL_SECONDS
        while True:
            await self._started.wait()
            self._started.clear()
            delay = fast
            sent = time.monotonic()  # the first probe one wait after the RunInstances answer
            while time.monotonic() < self._busy_until and (starting := self._starting()):
                # The wait runs from one probe's sending to the next, not from its answer: a probe's round trip
                # (a few ms) no longer lengthens the time a change waits to be seen by a third or more.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._started.wait(), max(sent + delay - time.monotonic(), 0))
                if self._started.is_set():
                    self._started.clear()
                    delay = fast
                sent = time.monotonic()
                try:
                    changed = await self._probe(starting[:PROBE_BATCH])
                except RemoteRefused:
                    changed = []  # one of them unknown remotely: the full sync asks each and ends the lost one
                    delay, sent = max(delay, BUSY_MAX), time.monotonic()
                except RemoteUnavailable:
                    changed = []  # the poll loop counts the failures and backs off; so does this watch
                    delay, sent = max(delay, BUSY_MAX), time.monotonic()  # from the failure (a timeout is long)
                else:
                    self._note_success()
                    hot = time.monotonic() < self._hot_until
                    delay = fast if hot else min(delay * 1.5, max(BUSY_MAX, fast))
                if changed:
                    await self.store.save(changed)

    async def _probe(self, instances: list[RemoteInstance]) -> list[RemoteInstance]:
        """The remote's view of these instances, applied; the ones whose reported state changed."""
        by_remote = {i.remote_id: i for i in instances}
        answer = await self.ec2.call("DescribeInstances", {"InstanceIds": list(by_remote)})
        changed = []
        for reservation in answer.get("Reservations") or []:
            for item in reservation.get("Instances") or []:
                instance = by_remote.get(item.get("InstanceId", ""))
                if instance is not None and instance.live and self._apply_remote(instance, item):
                    changed.append(instance)
        return changed

    async def sync(self) -> bool:
        """One pass: the remote's instances tagged with this cloud against the local records; True if anything
        changed."""
        self.polls += 1
        # Not the terminated ones: a remote keeps them listed for a while (EC2 an hour), and each sync parsed them
        # all. A live local instance whose remote one ended is asked for by id below.
        remote = await self.ec2.pages(
            "DescribeInstances",
            {
                "Filters": [
                    {"Name": f"tag:{TAG_CLOUD}", "Values": [self.prefix]},
                    {"Name": "instance-state-name", "Values": UNENDED},
                ]
            },
            "Reservations",
        )
        seen: dict[str, dict[str, Any]] = {}
        strays: list[str] = []
        changed: list[RemoteInstance] = []
        for reservation in remote:
            for item in reservation.get("Instances") or []:
                remote_id = item.get("InstanceId", "")
                tags = {t.get("Key"): t.get("Value") for t in item.get("Tags") or []}
                instance = self.instances.get(tags.get(TAG_INSTANCE) or "")
                state = (item.get("State") or {}).get("Name", "")
                if instance is not None and instance.remote_id == remote_id:
                    seen[remote_id] = item
                    if instance.live and self._apply_remote(instance, item):
                        changed.append(instance)
                    continue
                if instance is not None and instance.launching:
                    continue  # its RunInstances is in flight: the answer brings its id
                if state not in ("terminated", "shutting-down"):
                    strays.append(remote_id)
        # Live instances the tag query did not show (tags lost, or the remote forgot them): asked by id.
        for instance in [i for i in self.instances.values() if i.live and i.remote_id and i.remote_id not in seen]:
            try:
                answer = await self.ec2.call("DescribeInstances", {"InstanceIds": [instance.remote_id]})
                items = [x for r in answer.get("Reservations") or [] for x in r.get("Instances") or []]
            except RemoteRefused as err:
                if "NotFound" not in err.code:
                    raise
                items = []
            if items:
                seen[instance.remote_id] = items[0]
                if self._apply_remote(instance, items[0]):
                    changed.append(instance)
            else:
                self._end(instance, "terminated" if instance.terminating else "lost by the remote cloud")
                changed.append(instance)
        if strays:
            log.warning("terminating %d remote instances with no live local instance: %s", len(strays), strays)
            await self.ec2.call("TerminateInstances", {"InstanceIds": strays})
        again = [i for i in self.instances.values() if i.live and i.terminating and i.remote_id]
        again = [i for i in again if (seen.get(i.remote_id, {}).get("State") or {}).get("Name") != "shutting-down"]
        if again:
            await self._terminate_remote(again)
        if changed:
            await self.store.save(changed)
        for name in sorted(self._unsynced):
            await self.resources.ensure_group(name)
            self._unsynced.discard(name)
        if time.monotonic() >= self._sweep_due:
            await self._sweep()
        return bool(changed or strays)

    async def _sweep(self) -> None:
        async with self._sweep_lock:
            if self._in_flight:
                return
            now, keep = time.time(), self.config.KOALA_REMOTE_KEEP_UNUSED
            # Live instances' key pairs and groups stay, and those of instances that ended less than `keep` ago
            # (the next launch of the same kind finds them there: no remote calls to make them again).
            recent = [
                i.ended_at + keep - now for i in self.instances.values() if not i.live and i.ended_at + keep > now
            ]
            live = [i for i in self.instances.values() if i.live or i.ended_at + keep > now]
            keys, groups = set(), set()
            for instance in live:
                spec = await self.store.reservations.spec(instance.reservation_id)
                if spec is None:
                    continue
                if spec.ssh_public_key:
                    keys.add(self.resources.key_name(spec.ssh_public_key))
                for network in self.networks_of(spec):
                    groups.add(self.resources.group_name(network))
                    for rule in self.resources.rules.get(network, []):
                        groups.update(self.resources.group_name(s) for s in rule.source_networks)
            done = await self.resources.sweep(keys, groups)
            self._sweep_due = time.monotonic() + min([SWEEP_EVERY if done else SWEEP_RETRY, *recent])

    # --- what only zones of local nodes do ------------------------------------------------------------------
    async def register_node(self, entry: str, mac: str) -> NodeInfo:
        raise RpcError(409, "RemoteZone", f"zone {self.zone} runs its instances in a remote cloud: it has no nodes")

    async def deregister_node(self, entry: str) -> None:
        raise RpcError(409, "RemoteZone", f"zone {self.zone} runs its instances in a remote cloud: it has no nodes")

    def node_notify(self, node_id: str, instances: list[InstanceInfo], full: bool) -> None:
        raise RpcError(403, "RemoteZone", f"zone {self.zone} has no node controllers")
