"""A real Walrus process shared by the tests of a module, with three users from a local credentials file
(alice, bob, and the cloud admin), and clients for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.ceph import unique, walrus_rados_settings
from tests.harness import Cloud
from tests.walrus.stores import STORES, StoreMaker

USERS = {
    "alice": ("AKIAALICE0000000001", "alice-secret-key-0000000000000000000001", "111111111111", False),
    "bob": ("AKIABOB00000000000002", "bob-secret-key-00000000000000000000002", "222222222222", False),
    "admin": ("AKIAADMIN00000000003", "admin-secret-key-000000000000000000003", "000000000001", True),
}


def write_credentials(path: Path) -> None:
    data = {
        access: {
            "secret_access_key": secret,
            "principal": {
                "account_id": account,
                "account_name": name,
                "user_id": f"AIDA{name.upper()}",
                "user_name": name,
                "is_admin": admin,
            },
        }
        for name, (access, secret, account, admin) in USERS.items()
    }
    path.write_text(json.dumps(data))


@dataclass
class Walrus:
    cloud: Cloud
    url: str
    credentials: Path
    storage: dict[str, str] = field(default_factory=dict)  # the data store's settings (walrus_storage)

    def client(self, user: str = "alice", addressing: str = "path", signature: str = "s3v4", **config):
        access, secret, _, _ = USERS[user]
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(
                signature_version=signature,
                s3={"addressing_style": addressing},
                retries={"max_attempts": 1},
                **config,
            ),
        )

    def anonymous(self):
        from botocore import UNSIGNED

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", config=Config(signature_version=UNSIGNED)
        )


def start_walrus(
    tmp: Path, extra: dict | None = None, with_clc: bool = False, storage: dict[str, str] | None = None
) -> Walrus:
    """Walrus alone, or with a real CLC (`with_clc`) that answers for accounts the credentials file lacks; on the
    data store `storage` says (a walrus_storage; local files without)."""
    credentials = tmp / "credentials.json"
    tmp.mkdir(parents=True, exist_ok=True)
    write_credentials(credentials)
    settings = {"KOALA_WALRUS_CREDENTIALS_FILE": str(credentials), **(storage or {}), **(extra or {})}
    roles = ("clc", "walrus") if with_clc else ("walrus",)
    cloud = Cloud(tmp / "cloud", roles=roles, extra={"walrus": settings})
    cloud.start()
    return Walrus(cloud, cloud.url("walrus"), credentials, dict(storage or {}))


@pytest.fixture(params=STORES)
def store_maker(request: pytest.FixtureRequest) -> StoreMaker:
    if request.param == "local":
        return StoreMaker("local")
    return StoreMaker("rados", request.getfixturevalue("ceph"), unique("unit"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`walrus_storage` runs a module on each data store; a module marked `shared_metadata` runs on the shared
    store too (metadata in PostgreSQL, as several front ends keep it: services/walrus/storage/shared.py)."""
    if "walrus_storage" in metafunc.fixturenames:
        shared = metafunc.definition.get_closest_marker("shared_metadata") is not None
        stores = (*STORES, "shared") if shared else STORES
        metafunc.parametrize("walrus_storage", stores, indirect=True, scope="module")


@pytest.fixture(scope="module")
def walrus_storage(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Settings of a Walrus process on each store (extra settings for start_walrus)."""
    if request.param == "local":
        yield {}
    elif request.param == "rados":
        yield walrus_rados_settings(request.getfixturevalue("ceph"))
    else:
        yield {
            **walrus_rados_settings(request.getfixturevalue("ceph")),
            "KOALA_WALRUS_DATABASE_URL": request.getfixturevalue("postgres").create_database("walrus"),
        }


@pytest.fixture(scope="module")
def walrus(tmp_path_factory: pytest.TempPathFactory, walrus_storage: dict[str, str]) -> Iterator[Walrus]:
    instance = start_walrus(tmp_path_factory.mktemp("walrus"), storage=walrus_storage)
    try:
        yield instance
    finally:
        instance.cloud.stop()
