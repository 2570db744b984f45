"""A remote zone refuses to start on a bad configuration, saying what is wrong (and never the secret): credentials
the remote refuses, a credentials file others can read, an image map naming an image the remote does not have."""

from __future__ import annotations

import os

import pytest

from tests.bursting.support import RemoteZoneCC
from tests.clc.ec2_helpers import Creds

SECRET = "not-the-secret-0123456789abcdef"


def _settings(world, **extra) -> dict:
    return {
        "KOALA_REMOTE_ENDPOINT": world.remote.admin_credentials()["EC2_URL"],
        "KOALA_REMOTE_IMAGE_MAP": f"{world.local_image}={world.remote_image}",
        "KOALA_REMOTE_VMTYPE_MAP": "m1.small",
        **extra,
    }


def _exit(cc: RemoteZoneCC) -> tuple[int, str]:
    process = cc.spawn()
    return process.wait(60), cc.log()


def test_credentials_the_remote_refuses(world):
    cc = RemoteZoneCC(world.local, "badkey", _settings(world), Creds(world.remote_creds.access_key, SECRET))
    status, log = _exit(cc)
    assert status == 2
    assert "KOALA_REMOTE_CREDENTIALS" in log and "refused the credentials" in log
    assert SECRET not in log


def test_a_credentials_file_others_can_read(world):
    cc = RemoteZoneCC(world.local, "readable", _settings(world), world.remote_creds)
    os.chmod(cc.credentials_path, 0o644)
    status, log = _exit(cc)
    assert status == 2 and "readable by others" in log
    assert world.remote_creds.secret_key not in log


def test_no_credentials_file(world):
    cc = RemoteZoneCC(world.local, "nokey", _settings(world))
    status, log = _exit(cc)
    assert status == 2 and "cannot open" in log


@pytest.mark.parametrize("remote_image", ["emi-0badc0de"])
def test_an_image_map_naming_an_image_the_remote_does_not_have(world, remote_image):
    settings = _settings(world, KOALA_REMOTE_IMAGE_MAP=f"{world.local_image}={remote_image}")
    cc = RemoteZoneCC(world.local, "badmap", settings, world.remote_creds)
    status, log = _exit(cc)
    assert status == 2 and "KOALA_REMOTE_IMAGE_MAP" in log and remote_image in log


def test_a_malformed_map_entry(world):
    cc = RemoteZoneCC(
        world.local, "badsyntax", _settings(world, KOALA_REMOTE_VMTYPE_MAP="m1.small=no spaces=x=y"), world.remote_creds
    )
    status, log = _exit(cc)
    assert status == 2 and "KOALA_REMOTE_VMTYPE_MAP" in log
