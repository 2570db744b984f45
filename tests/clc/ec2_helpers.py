"""Helpers for the EC2 API tests: a real CLC process, boto3 and awscli clients, hand-signed requests (SigV2 as
ec2-api-tools sends them, SigV4 through botocore's signer), and accounts made through the admin RPC."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from defusedxml import ElementTree

from common.messages import identity_admin as msg
from tests.harness import Cloud

REGION = "eucalyptus"
AWS = str(Path(sys.executable).parent / "aws")


@dataclass(frozen=True)
class Creds:
    access_key: str
    secret_key: str
    account_id: str = ""


def start_clc(directory: Path, database_url: str = "") -> Cloud:
    """A CLC alone, on SQLite or on the PostgreSQL database at `database_url` (the `clc_database` fixture)."""
    cloud = Cloud(directory, roles=("clc",), extra={"clc": {"KOALA_DATABASE_URL": database_url}})
    cloud.start("clc")
    return cloud


def stop_clean(cloud: Cloud) -> None:
    """Stop the cloud; the CLC must not have logged an unexpected exception (an InternalError answer)."""
    log = cloud.log("clc")
    cloud.stop()
    assert "Traceback" not in log, log[-4000:]


def admin_creds(cloud: Cloud) -> Creds:
    rc = cloud.admin_credentials()
    return Creds(rc["EC2_ACCESS_KEY"], rc["EC2_SECRET_KEY"], rc["EC2_USER_ID"])


def ec2_url(cloud: Cloud) -> str:
    return cloud.admin_credentials()["EC2_URL"]


def client(cloud: Cloud, creds: Creds):
    return boto3.client(
        "ec2",
        endpoint_url=ec2_url(cloud),
        region_name=REGION,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=Config(retries={"max_attempts": 1}),
    )


def admin_call(cloud: Cloud, operation: str, message, answer):
    async def run():
        rpc = cloud.admin_client()
        try:
            return await rpc.call(cloud.url("clc"), operation, message, answer, expect_role="clc")
        finally:
            await rpc.close()

    return asyncio.run(run())


def new_account(cloud: Cloud, name: str) -> Creds:
    answer = admin_call(cloud, "CreateAccount", msg.CreateAccountRequest(name=name), msg.NewAccessKey)
    return Creds(answer.access_key_id, answer.secret_access_key, answer.principal.account_id)


@dataclass
class Reply:
    status: int
    body: bytes

    @property
    def xml(self):
        return ElementTree.fromstring(self.body)

    @property
    def code(self) -> str | None:
        node = self.xml.find("./Errors/Error/Code")
        return node.text if node is not None else None


def send(url: str, data: bytes | None, headers: dict[str, str], method: str = "POST") -> Reply:
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read())


def form(params: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(str(v), safe='-_.~')}" for k, v in params.items())


def sigv2(
    url: str,
    params: dict[str, str],
    creds: Creds,
    method: str = "POST",
    signature_method: str = "HmacSHA256",
    timestamp: dt.datetime | None = None,
    expires: dt.datetime | None = None,
    tamper: bool = False,
    signed_path: str | None = None,
) -> Reply:
    """A SigV2 request built by hand the way ec2-api-tools builds it; `signed_path` signs another path than the
    URL's (the tools sign `-U`'s path and send it with a trailing slash)."""
    parts = urlsplit(url)
    values = dict(params)
    values.update(
        {
            "AWSAccessKeyId": creds.access_key,
            "SignatureVersion": "2",
            "SignatureMethod": signature_method,
        }
    )
    if expires is not None:
        values["Expires"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    else:
        values["Timestamp"] = (timestamp or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    canonical = "&".join(f"{quote(k, safe='-_.~')}={quote(str(v), safe='-_.~')}" for k, v in sorted(values.items()))
    path = signed_path if signed_path is not None else parts.path or "/"
    to_sign = f"{method}\n{parts.netloc.lower()}\n{path}\n{canonical}"
    digest = hashlib.sha256 if signature_method == "HmacSHA256" else hashlib.sha1
    signature = base64.b64encode(hmac.new(creds.secret_key.encode(), to_sign.encode(), digest).digest()).decode()
    if tamper:
        signature = signature[:-4] + ("AAA=" if not signature.endswith("AAA=") else "BBB=")
    values["Signature"] = signature
    body = form(values)
    if method == "GET":
        return send(f"{url}?{body}", None, {}, "GET")
    return send(url, body.encode(), {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})


def sigv4(
    url: str, params: dict[str, str] | str, creds: Creds, when: dt.datetime | None = None, service: str = "ec2"
) -> Reply:
    """A SigV4-signed POST through botocore's own signer (any parameters, even ones boto3 would refuse)."""
    body = params if isinstance(params, str) else form(params)
    request = AWSRequest(
        method="POST",
        url=url,
        data=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    signer = SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key), service, REGION)
    if when is not None:
        # botocore stamps the current time; sign "as of" another time to test expiry.
        original = signer._modify_request_before_signing

        def stamped(req):
            req.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
            original(req)

        signer._modify_request_before_signing = stamped  # type: ignore[method-assign]
    signer.add_auth(request)
    prepared = request.prepare()
    return send(prepared.url, prepared.body, dict(prepared.headers))


def aws(cloud: Cloud, creds: Creds, *args: str) -> dict:
    """`aws ec2 ...` (awscli) against the CLC; the parsed JSON output."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = subprocess.run(
        [AWS, "--endpoint-url", ec2_url(cloud), "--output", "json", "ec2", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"aws ec2 {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return json.loads(result.stdout) if result.stdout.strip() else {}


def aws_error(cloud: Cloud, creds: Creds, *args: str) -> str:
    """Run `aws ec2 ...` expecting failure; its stderr."""
    try:
        aws(cloud, creds, *args)
    except AssertionError as err:
        return str(err)
    raise AssertionError(f"aws ec2 {' '.join(args)} succeeded")


def code(err) -> str:
    """The EC2 error code a boto3 call failed with."""
    return err.value.response["Error"]["Code"]
