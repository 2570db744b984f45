"""The migration world, shared by the migration tests and bench/migration_bench.py: the cloud of the acceptance world
(the CC's router, MANAGED-NOVLAN, SSH from the `pub` namespace into guests' public addresses) without its own NC,
and two nodes, each an NC process on a host namespace with its own libvirtd (hosts.py), registered with the CC."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from pydantic import BaseModel

from cli.guest_image import ensure_registered
from common.messages.clc_cc import (
    DescribeInstancesResponse,
    DescribeNodesResponse,
    InstanceIdsRequest,
    NodeInfo,
    RegisterNodeRequest,
)
from tests.acceptance import ssh_probe
from tests.acceptance.world import acceptance_world
from tests.harness import Cloud, ExtraNode, free_port
from tests.migration.hosts import TwoHosts
from tests.network.topology import Topology
from tests.waiting import wait_for

SSH_STREAM = Path(__file__).with_name("ssh_stream.py")
M = TypeVar("M", bound=BaseModel)


@dataclass
class MigrationWorld:
    cloud: Cloud
    topology: Topology
    hosts: TwoHosts
    nodes: dict[str, ExtraNode]  # "a", "b"
    ec2: Any
    images: dict[str, str]
    key_file: Path

    def cc(self, op: str, body: BaseModel | None, model: type[M], timeout: float = 30.0) -> M:
        """A signed call to the CC as the cloud administrator."""

        async def call() -> M:
            client = self.cloud.admin_client()
            try:
                return await client.call(self.cloud.url("cc"), op, body, model, timeout=timeout)
            finally:
                await client.close()

        # In a thread of its own: the caller may run an event loop already (Playwright's sync API does).
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            return thread.submit(asyncio.run, call()).result()

    def node_of(self, instance_id: str) -> str:
        answer = self.cc("DescribeInstances", InstanceIdsRequest(instance_ids=[instance_id]), DescribeInstancesResponse)
        return answer.instances[0].node_id

    def launch(self, count: int = 1, vm_type: str = "c1.medium") -> list[str]:
        ids = []
        for _ in range(count):
            answer = self.ec2.run_instances(ImageId=self.images["machine"], MinCount=1, MaxCount=1, KeyName="mig",
                                            SecurityGroups=["mig"], InstanceType=vm_type)  # fmt: skip
            ids.append(answer["Instances"][0]["InstanceId"])
        for instance_id in ids:
            wait_for(lambda i=instance_id: f"KOALA-GUEST ready instance={i}" in self.console(i), 300, 1.0,
                     f"{instance_id} ready")  # fmt: skip
            # Without its key (no DHCP answer, or no metadata) no SSH would ever get in: say so now, not at the
            # first SSH probe, which may come long after (after a migration) and would only time out.
            assert "KOALA-GUEST ssh-key installed" in self.console(instance_id), self.whereabouts(instance_id)
        return ids

    def console(self, instance_id: str) -> str:
        return self.ec2.get_console_output(InstanceId=instance_id).get("Output", "") or ""

    def public_ip(self, instance_id: str) -> str:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return found["PublicIpAddress"]

    def ssh(self, instance_id: str, command: str, timeout: float = 60) -> str:
        done = ssh_probe.run_in(self.topology, "pub", self.public_ip(instance_id), self.key_file, command, timeout)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}\n{self.whereabouts(instance_id)}"
        return done.stdout

    def whereabouts(self, instance_id: str) -> str:
        """What tells why a guest does not answer: the end of its console, the CC's log lines about it."""
        cc = [line for line in self.cloud.log("cc").splitlines() if instance_id in line]
        console = self.console(instance_id).splitlines()
        return "console:\n" + "\n".join(console[-15:]) + "\nthe CC of it:\n" + "\n".join(cc[-25:])

    def terminate(self, ids: list[str]) -> None:
        if not ids:
            return
        self.ec2.terminate_instances(InstanceIds=ids)

        def gone() -> bool:
            reservations = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
            return all(i["State"]["Name"] == "terminated" for r in reservations for i in r["Instances"])

        wait_for(gone, 120, 1.0, "instances terminated")


def _ec2(cloud: Cloud) -> Any:
    creds = cloud.admin_credentials()
    return boto3.client(
        "ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus", aws_access_key_id=creds["EC2_ACCESS_KEY"],
        aws_secret_access_key=creds["EC2_SECRET_KEY"], config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip


@contextmanager
def migration_world(
    nets: tuple[str, str, str], extra: dict[str, dict] | None = None, nc: dict | None = None
) -> Iterator[MigrationWorld]:
    """Everything up (the guest image registered, a key pair and a security group `mig` open to SSH and ping);
    all taken down on the way out. `nets` as acceptance_world's, apart from other users'; `nc` adds settings to
    both nodes."""
    work = Path(f"/var/tmp/koala-mig-{secrets.token_hex(3)}")  # reachable by libvirt's qemu user
    work.mkdir(mode=0o755)
    storage = nets[2]  # the metadata link's .1 (root namespace) is the iSCSI portal; the hosts get links to it
    settings = {
        "cc": {"NODES": "", "KOALA_EBS_PORTAL": f"{storage}.1:{free_port()}", "KOALA_EBS_RECONCILE_SECONDS": 1},
        "clc": {"KOALA_EBS_POLL_SECONDS": 1},
    }
    for role, values in (extra or {}).items():
        settings[role] = {**settings.get(role, {}), **values}
    try:
        with acceptance_world(work / "world", work / "unused", prefix="km", nets=nets, extra=settings,
                              roles=("clc", "cc", "walrus")) as built:  # fmt: skip
            cloud = built.cloud
            hosts = TwoHosts(work / "hosts", cloud.aio.pki, bridge=built.bridge, uplink=built.bridge, storage=storage)
            try:
                hosts.build()
                nodes = {}
                for role in ("a", "b"):
                    node = cloud.add_node(role, extra={**hosts.nc_settings(role), **(nc or {})})
                    node.start()
                    nodes[role] = node
                world = MigrationWorld(cloud, built.topology, hosts, nodes, _ec2(cloud), {}, work / "mig.pem")
                for node in nodes.values():
                    world.cc("RegisterNode", RegisterNodeRequest(node=node.url), NodeInfo)

                def both_up() -> bool:
                    answer = world.cc("DescribeNodes", None, DescribeNodesResponse)
                    return sum(1 for n in answer.nodes if n.state == "UP") == 2

                wait_for(both_up, 60, 0.5, "both nodes up")
                world.images = ensure_registered(cloud.dir, cloud.aio.admin_eucarc_source(), log=lambda _: None)
                key = world.ec2.create_key_pair(KeyName="mig")
                world.key_file.write_text(key["KeyMaterial"])
                world.key_file.chmod(0o600)
                world.ec2.create_security_group(GroupName="mig", Description="migration tests")
                world.ec2.authorize_security_group_ingress(GroupName="mig", IpProtocol="tcp", FromPort=22, ToPort=22,
                                                           CidrIp="0.0.0.0/0")  # fmt: skip
                world.ec2.authorize_security_group_ingress(GroupName="mig", IpProtocol="icmp", FromPort=-1,
                                                           ToPort=-1, CidrIp="0.0.0.0/0")  # fmt: skip
                yield world
            finally:
                for node in cloud.extra_nodes:
                    node.stop()
                hosts.cleanup()
    finally:
        if os.environ.get("KOALA_KEEP_MIGRATION_WORLD"):  # logs, consoles and libvirt's QEMU logs, to read later
            print(f"migration world kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
