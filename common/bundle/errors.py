"""One error type for every bundle failure, with a distinct code per cause (shown to users and callers)."""

from __future__ import annotations


class BundleError(Exception):
    """`code` names the failure (e.g. PartDigestMismatch); `status` is the HTTP status Walrus answers with."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status
