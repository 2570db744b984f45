"""What the parts of the cluster engine share: its state, and the few operations each part uses of the
others. `Cluster` (cluster.py) puts the parts together: NodeHealth (health.py) and PowerSave (powersave.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from pydantic import BaseModel, ConfigDict

from common.rpc import RpcClient
from services.cluster_controller.config import ClusterControllerConfig
from services.cluster_controller.model import Instance, Node
from services.cluster_controller.notifier import Notifier
from services.cluster_controller.store import Store


class NcAnswer(BaseModel):
    """What the CC reads of an NC's answer to RunInstance/TerminateInstance/RebootInstance/PowerDown: the
    instance's state if the NC gives it (an InstanceInfo), nothing otherwise (an Ack)."""

    model_config = ConfigDict(extra="ignore")
    state: str | None = None
    detail: str = ""
    reason: str = ""


class ClusterBase:
    config: ClusterControllerConfig
    client: RpcClient
    store: Store
    notifier: Notifier
    nodes: dict[str, Node]
    instances: dict[str, Instance]
    lock: asyncio.Lock
    _node_tasks: dict[str, asyncio.Task]

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        raise NotImplementedError

    def _changed(self, instance: Instance) -> None:
        raise NotImplementedError

    def _end(self, instance: Instance, reason: str, detail: str = "") -> None:
        raise NotImplementedError

    async def _terminate_one(self, instance: Instance) -> None:
        raise NotImplementedError
