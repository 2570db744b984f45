"""Errors the compute layer raises; the EC2 front end turns them into EC2 error responses."""

from __future__ import annotations


class ComputeError(Exception):
    """An EC2 error: its code (as EC2 names it), a message and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


def invalid(parameter: str, message: str) -> ComputeError:
    return ComputeError("InvalidParameterValue", f"{parameter}: {message}")
