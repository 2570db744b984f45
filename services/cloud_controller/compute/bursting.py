"""The bursting policy: a launch that names no zone goes to the local zones; when none has room, it goes to a
remote zone (a CC whose instances run in another cloud) if the admin allowed bursting for the account or for the
VM type (KOALA_BURST_ACCOUNTS, KOALA_BURST_VMTYPES). A launch that names a remote zone goes there."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common.messages.cc_nc import VmType
from services.cloud_controller.compute.admission import Admission, Token
from services.cloud_controller.compute.errors import ComputeError

log = logging.getLogger("koala.clc.bursting")


@dataclass(frozen=True)
class BurstPolicy:
    accounts: frozenset[str] = frozenset()  # account ids, or "*" for every account
    vm_types: frozenset[str] = frozenset()  # VM type names, or "*"

    @classmethod
    def parse(cls, accounts: str, vm_types: str) -> BurstPolicy:
        return cls(frozenset(accounts.replace(",", " ").split()), frozenset(vm_types.replace(",", " ").split()))

    def allows(self, account_id: str, vm_type: str) -> bool:
        return bool({"*", account_id} & self.accounts or {"*", vm_type} & self.vm_types)


def reserve(
    admission: Admission, policy: BurstPolicy, owner_id: str, vm: VmType, min_count: int, max_count: int
) -> Token:
    """A reservation for a launch that names no zone: in a local zone, else (if allowed) in a remote one."""
    remote = sorted(zone for zone, capacity in admission.zones.items() if capacity.remote)
    local = [zone for zone in admission.zones if zone not in remote]
    try:
        return admission.reserve(owner_id, vm, min_count, max_count, among=local)
    except ComputeError as err:
        if err.code != "InsufficientInstanceCapacity" or not remote or not policy.allows(owner_id, vm.name):
            raise
        try:
            token = admission.reserve(owner_id, vm, min_count, max_count, among=remote)
        except ComputeError:
            raise err from None  # the local refusal says more than "the remote zones are full too"
    log.info("bursting %d x %s of account %s into %s", token.count, vm.name, owner_id, token.zone)
    return token
