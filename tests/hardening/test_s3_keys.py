"""Object keys and XML 1.0: a key with a character XML cannot carry is refused when the object is created (a listing
could never name it), and a key with a CR is listed with a character reference, so parsers read it back intact."""

from __future__ import annotations

import urllib.request
from xml.etree import ElementTree

import boto3
import botocore.handlers
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.harness import Cloud

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _s3(cloud: Cloud):
    rc = cloud.admin_credentials()
    return boto3.client(
        "s3",
        endpoint_url=cloud.url("walrus"),
        aws_access_key_id=rc["EC2_ACCESS_KEY"],
        aws_secret_access_key=rc["EC2_SECRET_KEY"],
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def test_keys_xml_cannot_carry_are_refused_and_listings_stay_well_formed(module_cloud: Cloud) -> None:
    s3 = _s3(module_cloud)
    s3.create_bucket(Bucket="xmlkeys")
    for key in ("bell\x01", "esc\x1b[0m", "nonchar\ufffe"):
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket="xmlkeys", Key=key, Body=b"x")
        assert refused.value.response["Error"]["Code"] == "InvalidArgument"
        with pytest.raises(ClientError) as refused:
            s3.create_multipart_upload(Bucket="xmlkeys", Key=key)
        assert refused.value.response["Error"]["Code"] == "InvalidArgument"
    s3.put_object(Bucket="xmlkeys", Key="plain", Body=b"p")
    with pytest.raises(ClientError) as refused:
        s3.copy_object(Bucket="xmlkeys", Key="copy\x02", CopySource={"Bucket": "xmlkeys", "Key": "plain"})
    assert refused.value.response["Error"]["Code"] == "InvalidArgument"
    for key in ("line\r\nbreak", "tab\there", "caf\u00e9 \U0001f600"):
        s3.put_object(Bucket="xmlkeys", Key=key, Body=key.encode())

    # A listing as a client without encoding-type=url reads it: well-formed, every key exactly as stored.
    s3.meta.events.unregister(
        "before-parameter-build.s3.ListObjectsV2", botocore.handlers.set_list_objects_encoding_type_url
    )
    url = s3.generate_presigned_url("list_objects_v2", Params={"Bucket": "xmlkeys"})
    assert "encoding-type" not in url
    with urllib.request.urlopen(url, timeout=10) as response:
        listing = ElementTree.fromstring(response.read())
    keys = {node.text for node in listing.iter(f"{NS}Key")}
    assert keys == {"plain", "line\r\nbreak", "tab\there", "caf\u00e9 \U0001f600"}
    assert s3.get_object(Bucket="xmlkeys", Key="line\r\nbreak")["Body"].read() == b"line\r\nbreak"
    for key in keys:
        s3.delete_object(Bucket="xmlkeys", Key=key)
    s3.delete_bucket(Bucket="xmlkeys")
