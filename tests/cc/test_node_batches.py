"""RunInstance calls to one node made at the same moment leave as one RunInstances call (node_batches.py, the
same for TerminateInstance); every caller gets its own answer or error as a lone call would have given it. The
end-to-end path (a real CC and real NCs) is exercised by every launch in tests/cc and tests/scale; here the
coalescing rules themselves."""

from __future__ import annotations

import asyncio

from common.messages import cc_nc
from common.rpc import RpcError
from services.cluster_controller.node_batches import MAX_BODY, NodeBatches


def _request(n: int, user_data: str = "") -> cc_nc.RunInstanceRequest:
    return cc_nc.RunInstanceRequest(
        instance_id=f"i-{n:08x}", reservation_id="r-00000001", owner_id="000000000001",
        image=cc_nc.ImageRef(id="emi-00000001", manifest="b/m.manifest.xml"),
        vm_type=cc_nc.VmType(name="m1.small", cores=1, memory_mb=128, disk_gb=2), user_data=user_data,
    )  # fmt: skip


class Node:
    """Answers like an NC: Pending for each request, InsufficientResources for ids in `full`."""

    def __init__(self, batches: bool = True, full: frozenset[str] = frozenset()):
        self.batches, self.full = batches, full
        self.calls: list[tuple[str, list[str]]] = []

    def _one(self, request: cc_nc.RunInstanceRequest) -> cc_nc.InstanceInfo:
        if request.instance_id in self.full:
            raise RpcError(409, "InsufficientResources", "no room")
        return cc_nc.InstanceInfo(instance_id=request.instance_id, state="Pending", detail="staging")

    async def send_one(self, url: str, request: cc_nc.RunInstanceRequest) -> cc_nc.InstanceInfo:
        self.calls.append(("RunInstance", [request.instance_id]))
        return self._one(request)

    async def send_many(self, url: str, batch: list[cc_nc.RunInstanceRequest]) -> list[cc_nc.InstanceResult]:
        if not self.batches:
            raise RpcError(404, "UnknownOperation", "no operation RunInstances")
        self.calls.append(("RunInstances", [r.instance_id for r in batch]))
        results = []
        for request in batch:
            try:
                results.append(cc_nc.InstanceResult(info=self._one(request)))
            except RpcError as err:
                results.append(cc_nc.InstanceResult(status=err.status, code=err.code, message=err.message))
        return results


def _batches(node: Node) -> NodeBatches[cc_nc.RunInstanceRequest]:
    return NodeBatches(node.send_one, node.send_many, lambda r: len(r.model_dump_json()), cc_nc.MAX_BATCH)


async def _launch(batches: NodeBatches[cc_nc.RunInstanceRequest], url: str, requests: list) -> list:
    return await asyncio.gather(*(batches.call(url, r) for r in requests), return_exceptions=True)


def test_same_moment_calls_share_one_call_and_keep_their_own_answers() -> None:
    node = Node(full=frozenset({"i-00000007"}))
    batches = _batches(node)
    answers = asyncio.run(_launch(batches, "http://n1", [_request(n) for n in range(250)]))
    # 250 requests: three calls of at most 100.
    assert [(op, len(ids)) for op, ids in node.calls] == [("RunInstances", 100), ("RunInstances", 100),
                                                           ("RunInstances", 50)]  # fmt: skip
    assert [ids for _, ids in node.calls] == [
        [f"i-{n:08x}" for n in range(s, min(s + 100, 250))] for s in (0, 100, 200)
    ]
    for n, answer in enumerate(answers):
        if n == 7:
            assert isinstance(answer, RpcError) and (answer.status, answer.code) == (409, "InsufficientResources")
        else:
            assert isinstance(answer, cc_nc.InstanceInfo) and answer.instance_id == f"i-{n:08x}"


def test_a_lone_call_large_bodies_and_an_older_node() -> None:
    node = Node()
    batches = _batches(node)

    async def scenario() -> None:
        assert (await batches.call("http://n1", _request(1))).state == "Pending"
        # Bodies of ~32 KB each: as many per call as fit in MAX_BODY, whatever the count.
        big = [_request(n, user_data="A" * 32_000) for n in range(10, 50)]
        await _launch(batches, "http://n1", big)

    asyncio.run(scenario())
    assert node.calls[0] == ("RunInstance", ["i-00000001"])
    per_call = MAX_BODY // len(_request(10, user_data="A" * 32_000).model_dump_json())
    assert 2 <= per_call < 20
    assert [len(ids) for _, ids in node.calls[1:]] == [per_call] * (40 // per_call) + [40 % per_call] * bool(
        40 % per_call
    )
    old = Node(batches=False)
    batches = _batches(old)
    answers = asyncio.run(_launch(batches, "http://n2", [_request(n) for n in range(5)]))
    assert all(isinstance(a, cc_nc.InstanceInfo) for a in answers)
    assert [op for op, _ in old.calls] == ["RunInstance"] * 5


def test_a_failed_call_fails_each_of_its_callers() -> None:
    async def unreachable(url: str, batch: list[cc_nc.RunInstanceRequest]) -> list[cc_nc.InstanceResult]:
        raise RpcError(503, "PeerUnreachable", f"{url}: connection refused")

    batches = NodeBatches(Node().send_one, unreachable, lambda r: 1, cc_nc.MAX_BATCH)
    answers = asyncio.run(_launch(batches, "http://n3", [_request(n) for n in range(3)]))
    assert all(isinstance(a, RpcError) and a.code == "PeerUnreachable" for a in answers)
