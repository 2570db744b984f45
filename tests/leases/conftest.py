"""Fixtures the lease tests share; each module provides its own `cloud`."""

import pytest

from tests.clc.ec2_helpers import admin_creds, new_account


@pytest.fixture(scope="module")
def alice(cloud):
    """The cloud admin's account (the first account)."""
    return admin_creds(cloud)


@pytest.fixture(scope="module")
def bob(cloud):
    """A second, ordinary account."""
    return new_account(cloud, "bob")
