"""Debian's tgt (userspace iSCSI target) driven with tgtadm through the CC's command runner.

One tgtd serves the zone's exports on KOALA_EBS_PORTAL; its control socket is selected by a port number (tgtadm
-C), so several clouds on one machine keep apart. A target per attached volume (tid from the volume record), LUN 1
backed by the volume file, and an ACL naming the attachment's initiator only: a node that does not know that name
cannot log in. tgtd keeps targets in memory: the storage manager re-creates them from its records after tgtd
restarts, and removes targets of ours that no record explains.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from common.daemon import PidFile
from common.hostcmd import CommandFailed, Runner

log = logging.getLogger("koala.cc.storage")
# Negotiated at login: tgt's defaults (8 KiB data segments, 256 KiB bursts, R2T before every write) cut a 1 MiB
# write into many round trips; these took QEMU's sequential 1 MiB writes from 5.6 s to 1.3 s per 256 MiB here.
# QEMU's initiator (libiscsi) itself offers 256 KiB bursts and one outstanding R2T, so larger values here change
# nothing (its login log shows 256 KiB and 1 negotiated); the NC keeps the guest's requests within those 256 KiB
# instead (node_controller/domain.py ISCSI_QUEUE_SIZE). The backing store stays tgtd's default (rdwr): `aio` does
# not sync on SYNCHRONIZE_CACHE, so a guest's fsync would not reach the disk.
SESSION_PARAMS = (
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxXmitDataSegmentLength", "262144"),
    ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"),
    ("InitialR2T", "No"),
)


class TgtError(Exception):
    pass


@dataclass
class Target:
    tid: int
    iqn: str
    backing: dict[int, str] = field(default_factory=dict)  # lun -> backing file
    acl: list[str] = field(default_factory=list)  # initiator names (or addresses)


def parse_show(text: str) -> dict[int, Target]:
    """`tgtadm --op show --mode target` -> targets by tid."""
    targets: dict[int, Target] = {}
    current: Target | None = None
    lun: int | None = None
    in_acl = False
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith("Target ") and ":" in raw:
            number, _, iqn = raw[len("Target ") :].partition(":")
            current = targets.setdefault(int(number), Target(int(number), iqn.strip()))
            lun, in_acl = None, False
        elif current is None:
            continue
        elif line.startswith("LUN:"):
            lun = int(line.split(":", 1)[1])
        elif line.startswith("Backing store path:") and lun is not None:
            path = line.split(":", 1)[1].strip()
            if path and path != "None":
                current.backing[lun] = path
        elif line == "ACL information:":
            in_acl = True
        elif in_acl and raw.startswith("        ") and line:
            current.acl.append(line)
        elif not raw.startswith("        "):
            in_acl = False
    return targets


class Tgt:
    def __init__(self, runner: Runner, portal: str, control: int, spawn: bool, log_dir: Path):
        self.runner, self.portal, self.control, self.spawn = runner, portal, control, spawn
        self.log_dir = log_dir
        self.pid_file = PidFile(log_dir / "tgtd.pid", f"portal={portal}")  # the tgtd started here, for the admin
        self._lock = asyncio.Lock()

    def _adm(self, *args: str) -> list[str]:
        return ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]

    async def _run(self, *args: str) -> str:
        try:
            return (await self.runner.run(self._adm(*args))).stdout
        except CommandFailed as err:
            raise TgtError(str(err)) from None
        except OSError as err:
            raise TgtError(f"tgtadm: {err.strerror or err}") from None

    async def running(self) -> bool:
        try:
            result = await self.runner.run(self._adm("--op", "show", "--mode", "target"), check=False)
        except OSError:
            return False
        return result.code == 0

    async def ensure_running(self) -> None:
        """tgtd answers on our control port, started (detached: exports outlive a CC restart) if need be."""
        async with self._lock:
            if await self.running():
                return
            if not self.spawn:
                raise TgtError(f"tgtd does not answer on control port {self.control} (KOALA_EBS_TGTD=external)")
            await asyncio.to_thread(self.log_dir.mkdir, parents=True, exist_ok=True)
            log_file = await asyncio.to_thread(open, self.log_dir / "tgtd.log", "ab")
            try:
                process = await asyncio.create_subprocess_exec(
                    "tgtd", "-f", "--iscsi", f"portal={self.portal}", "-C", str(self.control),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
                )  # fmt: skip
            except OSError as err:
                raise TgtError(f"cannot start tgtd: {err.strerror or err}") from None
            finally:
                log_file.close()
            await asyncio.to_thread(self.pid_file.write, process.pid)
            for _ in range(100):
                if process.returncode is not None:
                    break
                if await self.running():
                    log.info("tgtd started (pid %d) on %s, control port %d", process.pid, self.portal, self.control)
                    return
                await asyncio.sleep(0.05)
            raise TgtError(f"tgtd did not come up on {self.portal}; see {self.log_dir / 'tgtd.log'}")

    async def targets(self) -> dict[int, Target]:
        return parse_show(await self._run("--op", "show", "--mode", "target"))

    async def add(self, tid: int, iqn: str, backing: Path) -> None:
        await self._run("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        try:
            for name, value in SESSION_PARAMS:
                await self._run(
                    "--op", "update", "--mode", "target", "--tid", str(tid), "--name", name, "--value", value
                )
            await self._run(
                "--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1", "-b", str(backing)
            )  # fmt: skip
        except TgtError:
            await self.remove(tid)
            raise

    async def bind(self, tid: int, initiator: str) -> None:
        await self._run("--op", "bind", "--mode", "target", "--tid", str(tid), "--initiator-name", initiator)

    async def unbind(self, tid: int, initiator: str) -> None:
        await self._run("--op", "unbind", "--mode", "target", "--tid", str(tid), "--initiator-name", initiator)

    async def remove(self, tid: int) -> None:
        """Delete the target, closing any session still open on it."""
        await self._run("--op", "delete", "--mode", "target", "--tid", str(tid), "--force")

    async def stop_daemon(self) -> None:
        """Ask tgtd to exit (it refuses while targets exist)."""
        try:
            await self.runner.run(["tgtadm", "-C", str(self.control), "--op", "delete", "--mode", "system"])
        except (CommandFailed, OSError) as err:
            log.info("tgtd left running: %s", err)
            return
        await asyncio.to_thread(self.pid_file.path.unlink, missing_ok=True)
