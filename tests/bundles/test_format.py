"""The bundle format library and the koala bundling commands, against Amazon's reference bundles."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest

from cli.main import main as koala
from common.bundle import keys
from common.bundle import manifest as mf
from common.bundle.errors import BundleError
from common.bundle.pipeline import DirectoryParts, bundle_image, decrypt_bundle
from tests.bundles.conftest import DATA, KEYS, REFERENCE, copy_reference, original_sha1s

ENV = {
    "EC2_PRIVATE_KEY": str(KEYS / "user-pk.pem"),
    "EC2_CERT": str(KEYS / "user-cert.pem"),
    "EC2_USER_ID": "123456789012",
    "EUCALYPTUS_CERT": str(KEYS / "cloud-cert.pem"),
}


@pytest.fixture
def eucarc(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def _decrypt(manifest_path: Path, key: object, key_for: str = "cloud") -> bytes:
    manifest = mf.parse(manifest_path.read_bytes())
    out = io.BytesIO()
    decrypt_bundle(manifest, key, DirectoryParts(manifest_path.parent), out, key_for=key_for)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(("folder", "name"), REFERENCE)
def test_reference_bundles_decrypt_to_the_original_images(folder: str, name: str, ref_keys) -> None:
    path = DATA / folder / f"{name}.manifest.xml"
    raw = path.read_bytes()
    manifest = mf.parse(raw)
    assert mf.render(manifest) == raw  # the renderer writes exactly what ec2-ami-tools writes
    assert mf.signature_valid(raw, manifest.signature, ref_keys.user_cert)
    assert not mf.signature_valid(raw, manifest.signature, ref_keys.cloud_cert)
    for key, key_for in ((ref_keys.cloud_key, "cloud"), (ref_keys.user_key, "user")):
        image = _decrypt(path, key, key_for)
        assert hashlib.sha1(image).hexdigest() == original_sha1s()[name]
    assert manifest.image_kind == ("kernel" if folder == "kernel" else "machine")


@pytest.mark.parametrize(("folder", "name"), REFERENCE)
def test_koala_unbundle_accepts_the_reference_bundles(folder: str, name: str, tmp_path: Path, eucarc) -> None:
    manifest = DATA / folder / f"{name}.manifest.xml"
    assert koala(["unbundle", "-m", str(manifest), "-d", str(tmp_path)]) == 0
    assert hashlib.sha1((tmp_path / name).read_bytes()).hexdigest() == original_sha1s()[name]


def _image(path: Path, random_mib: int = 3, text_mib: int = 2) -> Path:
    path.write_bytes(os.urandom(random_mib << 20) + b"koala bundles text\n" * ((text_mib << 20) // 19))
    return path


def test_bundle_image_round_trips_and_matches_the_format(tmp_path: Path, eucarc, ref_keys) -> None:
    image = _image(tmp_path / "disk.img")
    dest = tmp_path / "bundle"
    args = ["bundle-image", "-i", str(image), "-d", str(dest), "-r", "x86_64", "--part-size", "1M"]
    args += ["--kernel", "eki-12345678", "--ramdisk", "eri-87654321", "-B", "ami=sda1,root=/dev/sda1,swap=sda3"]
    assert koala(args) == 0
    raw = (dest / "disk.img.manifest.xml").read_bytes()
    manifest = mf.parse(raw)
    count = len(manifest.parts)
    assert count >= 4
    width = len(str(count))  # ec2-ami-tools naming: digits of the number of parts
    assert [p.filename for p in manifest.parts] == [f"disk.img.part.{i:0{width}d}" for i in range(count)]
    expected = sorted([*(p.filename for p in manifest.parts), "disk.img.manifest.xml"])
    assert sorted(p.name for p in dest.iterdir()) == expected  # no temporary files left behind
    assert all((dest / p.filename).stat().st_size == 1 << 20 for p in manifest.parts[:-1])
    assert sum((dest / p.filename).stat().st_size for p in manifest.parts) == manifest.bundled_size
    for part in manifest.parts:
        assert hashlib.sha1((dest / part.filename).read_bytes()).hexdigest() == part.digest
    # Element order, quoting and signature as ec2-ami-tools writes them.
    assert raw.startswith(b"<?xml version='1.0'?><manifest><version>2007-10-10</version><bundler>")
    assert re.search(
        rb"<machine_configuration><architecture>x86_64</architecture><block_device_mapping><mapping><virtual>ami"
        rb"</virtual><device>sda1</device></mapping>.*</block_device_mapping><kernel_id>eki-12345678</kernel_id>"
        rb"<ramdisk_id>eri-87654321</ramdisk_id></machine_configuration><image><name>disk.img</name><user>"
        rb"123456789012</user><type>machine</type><digest algorithm='SHA1'>",
        raw,
    )
    assert mf.render(manifest) == raw
    assert mf.signature_valid(raw, manifest.signature, ref_keys.user_cert)
    assert manifest.size == image.stat().st_size
    # The cloud can decrypt it, and so can the user with `koala unbundle`.
    assert _decrypt(dest / "disk.img.manifest.xml", ref_keys.cloud_key) == image.read_bytes()
    out = tmp_path / "out"
    assert koala(["unbundle", "-m", str(dest / "disk.img.manifest.xml"), "-d", str(out)]) == 0
    assert (out / "disk.img").read_bytes() == image.read_bytes()


def test_bundle_is_readable_by_the_standard_shell_pipeline(tmp_path: Path, ref_keys) -> None:
    """Multi-member gzip from the parallel compressor is standard: openssl | gunzip | tar read it."""
    image = _image(tmp_path / "std.img", 2, 3)
    result = bundle_image(
        image,
        tmp_path / "b",
        user_key=ref_keys.user_key,
        user_cert=ref_keys.user_cert,
        cloud_cert=ref_keys.cloud_cert,
        account="123456789012",
    )
    m = result.manifest
    key = keys.unwrap(m.ec2_encrypted_key, ref_keys.cloud_key, "key").hex()
    iv = keys.unwrap(m.ec2_encrypted_iv, ref_keys.cloud_key, "iv").hex()
    parts = " ".join(str(p) for p in result.part_paths)
    script = f"cat {parts} | openssl enc -d -aes-128-cbc -K {key} -iv {iv} | tee {tmp_path}/tar | gunzip | tar -xO"
    plain = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    assert plain == image.read_bytes()
    tar_stream = subprocess.run(["sh", "-c", f"gunzip < {tmp_path}/tar"], capture_output=True, check=True).stdout
    assert hashlib.sha1(tar_stream).hexdigest() == m.digest


# ------------------------------------------------------------------ failures, each with its own clear error


def _resign(manifest_path: Path, user_key: object, edit) -> None:
    m = mf.parse(manifest_path.read_bytes())
    edit(m)
    manifest_path.write_bytes(mf.sign_manifest(m, user_key))  # type: ignore[arg-type]


def test_wrong_cloud_key(ref_keys) -> None:
    with pytest.raises(BundleError) as err:
        _decrypt(DATA / "small" / "small.img.manifest.xml", ref_keys.user_key, "cloud")
    assert err.value.code == "CannotDecryptKey"


def test_tampered_part(tmp_path: Path, ref_keys) -> None:
    folder = copy_reference("multipart", tmp_path)
    part = folder / "multipart.img.part.0"
    data = bytearray(part.read_bytes())
    data[5_000_000] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        _decrypt(folder / "multipart.img.manifest.xml", ref_keys.cloud_key)
    assert err.value.code == "PartDigestMismatch"
    assert "part 0" in err.value.message


def test_missing_and_truncated_parts(tmp_path: Path, ref_keys) -> None:
    folder = copy_reference("multipart", tmp_path)
    part = folder / "multipart.img.part.1"
    part.write_bytes(part.read_bytes()[:-16])
    with pytest.raises(BundleError) as err:
        _decrypt(folder / "multipart.img.manifest.xml", ref_keys.cloud_key)
    assert err.value.code == "PartSizeMismatch"
    part.unlink()
    with pytest.raises(BundleError) as err:
        _decrypt(folder / "multipart.img.manifest.xml", ref_keys.cloud_key)
    assert err.value.code == "MissingPart"


def test_tampered_manifest_and_foreign_certificate(tmp_path: Path, eucarc, ref_keys, capsys) -> None:
    folder = copy_reference("small", tmp_path)
    path = folder / "small.img.manifest.xml"
    path.write_bytes(path.read_bytes().replace(b"<architecture>x86_64<", b"<architecture>i386<"))
    assert koala(["unbundle", "-m", str(path), "-d", str(tmp_path / "out")]) == 1
    assert "SignatureMismatch" in capsys.readouterr().err
    assert not (tmp_path / "out" / "small.img").exists()
    # The untouched manifest, checked against someone else's certificate.
    original = DATA / "small" / "small.img.manifest.xml"
    assert koala(["unbundle", "-m", str(original), "-c", str(KEYS / "cloud-cert.pem"), "-d", str(tmp_path)]) == 1
    assert "SignatureMismatch" in capsys.readouterr().err


def test_parts_out_of_index_order(tmp_path: Path, ref_keys) -> None:
    folder = copy_reference("multipart", tmp_path)
    path = folder / "multipart.img.manifest.xml"
    _resign(path, ref_keys.user_key, lambda m: m.parts.reverse())
    with pytest.raises(BundleError) as err:
        mf.parse(path.read_bytes())
    assert err.value.code == "PartsOutOfOrder"


def test_image_digest_checked(tmp_path: Path, ref_keys) -> None:
    folder = copy_reference("small", tmp_path)
    path = folder / "small.img.manifest.xml"
    _resign(path, ref_keys.user_key, lambda m: setattr(m, "digest", "0" * 40))
    with pytest.raises(BundleError) as err:
        _decrypt(path, ref_keys.cloud_key)
    assert err.value.code == "ImageDigestMismatch"


XML_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<manifest><version>&lol3;</version></manifest>"""


def test_xml_bomb_and_garbage_are_refused() -> None:
    with pytest.raises(BundleError) as err:
        mf.parse(XML_BOMB)
    assert err.value.code == "ForbiddenXml"
    with pytest.raises(BundleError) as err:
        mf.parse(b"<manifest><version>2007-10-10</version>")
    assert err.value.code == "MalformedManifest"
    with pytest.raises(BundleError) as err:
        mf.parse(b" " * (mf.MAX_MANIFEST_BYTES + 1))
    assert err.value.code == "ManifestTooLarge"
    raw = (DATA / "small" / "small.img.manifest.xml").read_bytes()
    with pytest.raises(BundleError) as err:
        mf.parse(raw.replace(b"<filename>small.img.part.0<", b"<filename>../../etc/passwd<"))
    assert err.value.code == "BadPartName"


def test_progress_bar_only_on_a_terminal() -> None:
    from cli.bundle_cmd import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, tty = io.StringIO(), Terminal()
    for stream in (quiet, tty):
        bar = ProgressBar("bundling", 100, stream)
        bar(50)
        bar(50)
        bar.close()
    assert quiet.getvalue() == ""
    assert "100.0%" in tty.getvalue() and tty.getvalue().endswith("\n")


def test_kernel_and_ramdisk_bundles_and_bad_options(tmp_path: Path, eucarc, capsys) -> None:
    image = tmp_path / "vmlinuz-6.1"
    image.write_bytes(b"\x7fELF" + os.urandom(4000))
    for flag, kind in (("--kernel", "kernel"), ("--ramdisk", "ramdisk")):
        dest = tmp_path / kind
        assert koala(["bundle-image", "-i", str(image), "-d", str(dest), "-p", kind, flag, "true"]) == 0
        raw = (dest / f"{kind}.manifest.xml").read_bytes()
        assert f"<{flag[2:]}_id>true</{flag[2:]}_id>".encode() in raw
        assert mf.parse(raw).image_kind == kind  # the explicit flag wins over the name (vmlinuz...)
    with pytest.raises(SystemExit):
        koala(["bundle-image", "-i", str(image), "--kernel", "not-an-id"])
    assert koala(["bundle-image", "-i", str(tmp_path / "missing.img")]) == 1
    assert "is not a file" in capsys.readouterr().err


def _bundle_tar_stream(tar_stream: bytes, name: str, size: int, dest: Path, ref_keys) -> Path:
    """A bundle around a given tar stream (e.g. GNU tar's sparse format, as ec2-ami-tools runs `tar -S`)."""
    import gzip

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = keys.new_key_iv()
    padder = padding.PKCS7(128).padder()
    plain = padder.update(gzip.compress(tar_stream)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = encryptor.update(plain) + encryptor.finalize()
    dest.mkdir()
    (dest / f"{name}.part.0").write_bytes(data)
    manifest = mf.Manifest(
        name=name,
        user="123456789012",
        digest=hashlib.sha1(tar_stream).hexdigest(),
        size=size,
        bundled_size=len(data),
        ec2_encrypted_key=keys.wrap(key, ref_keys.cloud_cert),
        user_encrypted_key=keys.wrap(key, ref_keys.user_cert),
        ec2_encrypted_iv=keys.wrap(iv, ref_keys.cloud_cert),
        user_encrypted_iv=keys.wrap(iv, ref_keys.user_cert),
        parts=[mf.Part(0, f"{name}.part.0", hashlib.sha1(data).hexdigest())],
    )
    path = dest / f"{name}.manifest.xml"
    path.write_bytes(mf.sign_manifest(manifest, ref_keys.user_key))
    return path


def test_gnu_sparse_and_long_name_members(tmp_path: Path, ref_keys) -> None:
    """Members the zero-copy path leaves to tarfile: GNU sparse (tar -S) and names over 100 characters."""
    sparse = tmp_path / "sparse.img"
    with sparse.open("wb") as handle:
        handle.seek(3 << 20)
        handle.write(b"data in the middle")
        handle.truncate(8 << 20)
    tar_stream = subprocess.run(
        ["tar", "-c", "-S", "--format=gnu", "-C", str(tmp_path), "sparse.img"], capture_output=True, check=True
    ).stdout
    manifest = _bundle_tar_stream(tar_stream, "sparse.img", 8 << 20, tmp_path / "sparse-bundle", ref_keys)
    assert _decrypt(manifest, ref_keys.cloud_key) == sparse.read_bytes()
    long_name = "disk-" + "x" * 150 + ".img"
    (tmp_path / long_name).write_bytes(b"long " * 1000)
    tar_stream = subprocess.run(
        ["tar", "-c", "--format=gnu", "-C", str(tmp_path), long_name], capture_output=True, check=True
    ).stdout
    manifest = _bundle_tar_stream(tar_stream, "long.img", 5000, tmp_path / "long-bundle", ref_keys)
    assert _decrypt(manifest, ref_keys.cloud_key) == b"long " * 1000
    # Two files in the archive: refused.
    (tmp_path / "second").write_bytes(b"2")
    tar_stream = subprocess.run(
        ["tar", "-c", "-C", str(tmp_path), "sparse.img", "second"], capture_output=True, check=True
    ).stdout
    manifest = _bundle_tar_stream(tar_stream, "two.img", 8 << 20, tmp_path / "two-bundle", ref_keys)
    with pytest.raises(BundleError) as err:
        _decrypt(manifest, ref_keys.cloud_key)
    assert err.value.code == "BadImageArchive"
