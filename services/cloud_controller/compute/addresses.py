"""Public (elastic) addresses: the pool, allocations to accounts, and associations with instances.

The pool comes from the CCs' DescribePublicAddresses once they offer it, and from KOALA_PUBLIC_IPS until then
(singles, ranges `a-b` and CIDR blocks, as VNET_PUBLICIPS). Allocation is synchronous in memory (so admission can
take addresses and give them back atomically) and written through to SQLite.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common import ids
from common.database import upsert
from services.cloud_controller.compute.errors import ComputeError

if TYPE_CHECKING:
    from services.cloud_controller.database import Database

_ADDRESS_COLUMNS = ["public_ip", "allocation_id", "owner_id", "allocated_at", "instance_id", "association_id", "auto"]

MAX_POOL = 65536


def parse_pool(text: str) -> list[str]:
    """Addresses named by 'a b c-d e/f' (order kept, duplicates dropped)."""
    found: dict[str, None] = {}
    for item in text.replace(",", " ").split():
        try:
            if "/" in item:
                network = ipaddress.IPv4Network(item, strict=False)
                hosts = list(network.hosts()) if network.num_addresses > 2 else list(network)
                found.update((str(a), None) for a in hosts[:MAX_POOL])
            elif "-" in item:
                first, last = (ipaddress.IPv4Address(p) for p in item.split("-", 1))
                if int(last) - int(first) > MAX_POOL:
                    raise ValueError("range too large")
                found.update((str(ipaddress.IPv4Address(n)), None) for n in range(int(first), int(last) + 1))
            else:
                found[str(ipaddress.IPv4Address(item))] = None
        except ValueError as err:
            raise ValueError(f"bad public address {item!r}: {err}") from None
        if len(found) > MAX_POOL:
            raise ValueError(f"more than {MAX_POOL} public addresses")
    return list(found)


@dataclass(slots=True)
class Address:
    public_ip: str
    allocation_id: str
    owner_id: str
    allocated_at: float
    instance_id: str = ""
    association_id: str = ""
    auto: bool = False  # given to an instance at launch; goes back to the pool with it


class Addresses:
    def __init__(self, db: Database, pool: list[str]):
        self.db = db
        self.pool = list(pool)
        self.allocated: dict[str, Address] = {}

    async def load(self) -> None:
        for row in await self.db.fetchall(
            "SELECT public_ip, allocation_id, owner_id, allocated_at, instance_id, association_id, auto FROM addresses"
        ):
            values = dict(row)
            values["auto"] = bool(values["auto"])
            self.allocated[values["public_ip"]] = Address(**values)

    def set_pool(self, pool: list[str]) -> None:
        self.pool = list(dict.fromkeys(pool))

    def free_count(self) -> int:
        return sum(1 for ip in self.pool if ip not in self.allocated)

    def owned(self, owner_id: str, auto: bool | None = None) -> list[Address]:
        return [a for a in self.allocated.values() if a.owner_id == owner_id and (auto is None or a.auto == auto)]

    def take(self, owner_id: str, auto: bool = False) -> Address:
        """Allocate a free address in memory (call `save` after)."""
        for ip in self.pool:
            if ip not in self.allocated:
                address = Address(ip, ids.new_id("eipalloc"), owner_id, time.time(), auto=auto)
                self.allocated[ip] = address
                return address
        raise ComputeError("AddressLimitExceeded", "There are no more public addresses available", 400)

    def give_back(self, address: Address) -> None:
        if self.allocated.get(address.public_ip) is address:
            del self.allocated[address.public_ip]

    def find(self, owner_id: str, public_ip: str = "", allocation_id: str = "") -> Address:
        for address in self.allocated.values():
            if (public_ip and address.public_ip == public_ip) or (
                allocation_id and address.allocation_id == allocation_id
            ):
                if address.owner_id == owner_id and not address.auto:
                    return address
                break
        if allocation_id:
            raise ComputeError("InvalidAllocationID.NotFound", f"The allocation ID '{allocation_id}' does not exist")
        raise ComputeError("AuthFailure", f"The address '{public_ip}' does not belong to you.")

    async def save(self, *addresses: Address) -> None:
        if not addresses:  # (a launch without public addresses): no empty transaction, a round trip on PostgreSQL
            return
        async with self.db.transaction() as conn:
            for address in addresses:
                if self.allocated.get(address.public_ip) is address:
                    await conn.execute(
                        upsert("addresses", _ADDRESS_COLUMNS, ["public_ip"]),
                        (
                            address.public_ip,
                            address.allocation_id,
                            address.owner_id,
                            address.allocated_at,
                            address.instance_id,
                            address.association_id,
                            int(address.auto),
                        ),
                    )
                else:
                    await conn.execute("DELETE FROM addresses WHERE public_ip = ?", (address.public_ip,))
