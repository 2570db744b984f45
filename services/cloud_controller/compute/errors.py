"""Errors the compute layer raises; the EC2 front end turns them into EC2 error responses."""

from __future__ import annotations


class ComputeError(Exception):
    """An EC2 error: its code (as EC2 names it), a message and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


def invalid(parameter: str, message: str) -> ComputeError:
    return ComputeError("InvalidParameterValue", f"{parameter}: {message}")


# The `<Kind>.Malformed` code EC2 answers for an id of each prefix that is not well formed (`i-zz`), where a
# well-formed unknown id is `<Kind>.NotFound`.
MALFORMED_CODES = {
    "i": "InvalidInstanceID.Malformed",
    "emi": "InvalidAMIID.Malformed",
    "sg": "InvalidGroupId.Malformed",
    "eipalloc": "InvalidAllocationID.Malformed",
    "eipassoc": "InvalidAssociationID.Malformed",
    "bun": "InvalidBundleID.Malformed",
}


def check_id(value: str, prefix: str) -> str:
    """`value` if it is a well-formed `prefix-` id (lowercased), else EC2's Malformed error for that kind."""
    from common import ids

    if not ids.is_id(value, prefix):
        raise ComputeError(MALFORMED_CODES[prefix], f'Invalid id: "{str(value)[:64]}"')
    return ids.normalize(value)
