"""VM types: the reference defaults, editable by the admin, always kept component-wise ordered.

The rules live here and only here (the admin pages and the CLI call these functions): a type has a short name and
positive cores, memory (MiB) and disk (GiB); ordered by (cores, memory, disk), each type must be at least its
predecessor in every component, so "a bigger type" means bigger in every way, as Eucalyptus required.
"""

from __future__ import annotations

import builtins
import itertools
import re
from typing import TYPE_CHECKING

from common.messages.cc_nc import VmType
from services.cloud_controller.compute.errors import ComputeError

if TYPE_CHECKING:
    from services.cloud_controller.database import Database

DEFAULTS = (
    VmType(name="m1.small", cores=1, memory_mb=128, disk_gb=2),
    VmType(name="c1.medium", cores=1, memory_mb=256, disk_gb=5),
    VmType(name="m1.large", cores=2, memory_mb=512, disk_gb=10),
    VmType(name="m1.xlarge", cores=2, memory_mb=1024, disk_gb=20),
    VmType(name="c1.xlarge", cores=4, memory_mb=2048, disk_gb=20),
)
DEFAULT_TYPE = "m1.small"
_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}\.[a-z0-9]{1,16}$")
LIMITS = {"cores": 1024, "memory_mb": 16 * 1024 * 1024, "disk_gb": 1024 * 1024}


class VmTypeError(ComputeError):
    def __init__(self, message: str):
        super().__init__("InvalidParameterValue", message)


def ordered(types: list[VmType]) -> list[VmType]:
    return sorted(types, key=lambda t: (t.cores, t.memory_mb, t.disk_gb, t.name))


def check(types: list[VmType]) -> list[VmType]:
    """Validate a whole set of types; return it ordered, or raise VmTypeError naming the first problem."""
    if not types:
        raise VmTypeError("at least one VM type must exist")
    seen = set()
    for vm in types:
        if not _NAME.match(vm.name):
            raise VmTypeError(f"VM type name {vm.name!r} must look like 'm1.small'")
        if vm.name in seen:
            raise VmTypeError(f"VM type {vm.name} given twice")
        seen.add(vm.name)
        for field, limit in LIMITS.items():
            value = getattr(vm, field)
            if not 1 <= value <= limit:
                raise VmTypeError(f"{vm.name}: {field} must be between 1 and {limit}")
    result = ordered(types)
    for smaller, bigger in itertools.pairwise(result):
        for field in LIMITS:
            if getattr(smaller, field) > getattr(bigger, field):
                raise VmTypeError(
                    f"VM types must stay component-wise ordered: {smaller.name} has more {field} "
                    f"({getattr(smaller, field)}) than {bigger.name} ({getattr(bigger, field)})"
                )
    return result


class VmTypes:
    """The current VM types, held in memory and persisted in `vm_types`."""

    def __init__(self, db: Database):
        self.db = db
        self._types: list[VmType] = list(DEFAULTS)

    async def load(self) -> None:
        rows = await self.db.fetchall("SELECT name, cores, memory_mb, disk_gb FROM vm_types")
        if not rows:
            await self._save(list(DEFAULTS))
        else:
            self._types = ordered([VmType(**dict(row)) for row in rows])

    def list(self) -> list[VmType]:
        return list(self._types)

    def get(self, name: str) -> VmType | None:
        for vm in self._types:
            if vm.name == name:
                return vm
        return None

    async def set(self, name: str, cores: int, memory_mb: int, disk_gb: int) -> VmType:
        """Change a type's numbers (or add a new type); refused if the set would lose its order."""
        try:
            new = VmType(name=name, cores=cores, memory_mb=memory_mb, disk_gb=disk_gb)
        except ValueError as err:
            raise VmTypeError(f"bad VM type {name!r}: {err}") from None
        await self._save([vm for vm in self._types if vm.name != name] + [new])
        return new

    async def delete(self, name: str) -> None:
        if self.get(name) is None:
            raise VmTypeError(f"no VM type {name}")
        if name == DEFAULT_TYPE:
            raise VmTypeError(f"{DEFAULT_TYPE} is the default type and cannot be deleted")
        await self._save([vm for vm in self._types if vm.name != name])

    async def reset(self) -> None:
        await self._save(list(DEFAULTS))

    async def _save(self, types: builtins.list[VmType]) -> None:
        checked = check(types)
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM vm_types")
            await conn.executemany(
                "INSERT INTO vm_types(name, cores, memory_mb, disk_gb) VALUES (?, ?, ?, ?)",
                [(t.name, t.cores, t.memory_mb, t.disk_gb) for t in checked],
            )
        self._types = checked
