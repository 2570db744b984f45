"""botocore's EC2 service model, loaded once: the exact parameters and response shapes of every EC2 action."""

from __future__ import annotations

from functools import cache, lru_cache

import botocore.session
from botocore.model import OperationModel, ServiceModel

API_VERSION = "2016-11-15"


@lru_cache(maxsize=1)
def service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("ec2", api_version=API_VERSION)


@lru_cache(maxsize=1)
def operation_names() -> frozenset[str]:
    return frozenset(service_model().operation_names)


@cache
def operation(name: str) -> OperationModel | None:
    """The operation model for an action name as EC2 spells it, or None."""
    if name not in operation_names():
        return None
    return service_model().operation_model(name)
