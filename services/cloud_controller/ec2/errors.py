"""EC2 errors: a code as EC2 names it, a message and the HTTP status. Raise `Ec2Error` from any action."""

from __future__ import annotations


class Ec2Error(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


def missing(name: str) -> Ec2Error:
    return Ec2Error("MissingParameter", f"The request must contain the parameter {name}")


def invalid(name: str, value: object, why: str = "") -> Ec2Error:
    text = str(value)
    if len(text) > 64:
        text = text[:64] + "..."
    return Ec2Error(
        "InvalidParameterValue", f"Value ({text}) for parameter {name} is invalid.{' ' + why if why else ''}"
    )


def not_found(code: str, message: str) -> Ec2Error:
    return Ec2Error(code, message, 400)


def auth_failure(message: str = "AWS was not able to validate the provided access credentials") -> Ec2Error:
    return Ec2Error("AuthFailure", message, 401)


def as_ec2_error(err: BaseException) -> Ec2Error | None:
    """Other layers (e.g. compute's ComputeError) raise errors with `code`, `message` and `status`: accept them."""
    if isinstance(err, Ec2Error):
        return err
    code, message, status = getattr(err, "code", None), getattr(err, "message", None), getattr(err, "status", None)
    if isinstance(code, str) and isinstance(message, str) and isinstance(status, int) and 400 <= status < 600:
        return Ec2Error(code, message, status)
    return None
