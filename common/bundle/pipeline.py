"""Streaming bundle and decrypt passes. Both are synchronous and CPU-bound: run them in a thread
(`asyncio.to_thread`) from async code. Memory stays constant: at most a few chunks are in flight.

Bundle: image -> tar stream (SHA-1) -> parallel gzip members -> AES-128-CBC -> parts of `part_size` (SHA-1 each).
Decrypt: parts in manifest order (SHA-1 each) -> AES-128-CBC -> gunzip (SHA-1 of the tar stream) -> untar ->
image file. The decrypt stages run on three threads joined by small bounded queues, like a shell pipeline.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tarfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.bundle import keys
from common.bundle.errors import BundleError
from common.bundle.manifest import Manifest, Part, sign_manifest
from common.bundle.pgzip import MultiMemberInflater, compress_member

DEFAULT_PART_SIZE = 10 << 20
CHUNK = 2 << 20  # one gzip member per chunk of tar stream
READ_BLOCK = 4 << 20
AES_SLICE = 1 << 20
RECORD = tarfile.RECORDSIZE  # GNU tar pads the archive to 20 blocks of 512
Progress = Callable[[int], None]


# ================================================================== bundle


@dataclass
class BundleResult:
    manifest: Manifest
    manifest_path: Path
    part_paths: list[Path]


def tar_stream(image: Path, name: str, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The GNU tar archive of one file, as ec2-ami-tools makes it (owner 0), in chunks of `chunk` bytes."""
    stat = image.stat()
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(stat.st_mtime), stat.st_mode & 0o7777
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    header = info.tobuf(tarfile.GNU_FORMAT)
    total = len(header) + size
    tail = (-size) % 512 + 1024  # pad the data to a block, then two zero blocks
    tail += (-(total + tail)) % RECORD
    buffer = bytearray(header)
    remaining = size
    with image.open("rb") as source:
        while remaining:
            want = min(chunk - len(buffer), remaining)
            data = source.read(want)
            if not data:
                raise BundleError("ImageChanged", f"{image} shrank while it was being bundled")
            buffer += data
            remaining -= len(data)
            if len(buffer) >= chunk:
                yield bytes(buffer)
                buffer = bytearray()
    buffer += bytes(tail)
    while buffer:
        yield bytes(buffer[:chunk])
        del buffer[:chunk]


class _PartWriter:
    """Writes encrypted bytes into numbered part files, hashing each; renamed to final names at the end."""

    def __init__(self, dest: Path, prefix: str, part_size: int):
        self.dest, self.prefix, self.part_size = dest, prefix, part_size
        self.temp_paths: list[Path] = []
        self.digests: list[str] = []
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha1()
        self._filled = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._file is None:
                path = self.dest / f".{self.prefix}.part.tmp{len(self.temp_paths)}"
                self.temp_paths.append(path)
                self._file = path.open("wb")
                self._hash, self._filled = hashlib.sha1(), 0
            room = self.part_size - self._filled
            piece = view[:room]
            self._file.write(piece)
            self._hash.update(piece)
            self._filled += len(piece)
            self.total += len(piece)
            view = view[len(piece) :]
            if self._filled == self.part_size:
                self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.digests.append(self._hash.hexdigest())

    def finish(self) -> list[Path]:
        self._close()
        width = len(str(len(self.temp_paths)))  # ec2-ami-tools: digits of the number of parts
        finals = []
        for index, temp in enumerate(self.temp_paths):
            final = self.dest / f"{self.prefix}.part.{index:0{width}d}"
            os.replace(temp, final)
            finals.append(final)
        return finals

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        for temp in self.temp_paths:
            temp.unlink(missing_ok=True)


def bundle_image(
    image: Path,
    dest: Path,
    *,
    user_key: rsa.RSAPrivateKey,
    user_cert: x509.Certificate,
    cloud_cert: x509.Certificate,
    account: str,
    prefix: str | None = None,
    **options: Any,
) -> BundleResult:
    """Bundle `image` into `dest`: parts plus a signed `<prefix>.manifest.xml`, byte-compatible with ec2-ami-tools."""
    if not keys.key_matches_cert(user_key, user_cert):
        raise BundleError("KeyCertMismatch", "the private key does not belong to the user certificate")
    prefix = prefix or image.name
    manifest, part_paths = bundle_parts(
        image, dest, user_cert=user_cert, cloud_cert=cloud_cert, account=account, prefix=prefix, **options
    )
    manifest_path = dest / f"{prefix}.manifest.xml"
    temp = manifest_path.with_name(f".{manifest_path.name}.tmp")
    temp.write_bytes(sign_manifest(manifest, user_key))
    os.replace(temp, manifest_path)
    return BundleResult(manifest, manifest_path, part_paths)


def bundle_parts(
    image: Path,
    dest: Path,
    *,
    user_cert: x509.Certificate,
    cloud_cert: x509.Certificate,
    account: str,
    prefix: str | None = None,
    architecture: str = "x86_64",
    kernel_id: str | None = None,
    ramdisk_id: str | None = None,
    block_device_mappings: list[tuple[str, str]] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    level: int = 6,
    workers: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Manifest, list[Path]]:
    """The parts of `image` in `dest` and their manifest, unsigned: the signer may be elsewhere (BundleInstance:
    the node bundles, the CLC signs with the cloud's key). Setting `cancel` stops it (BundleError Cancelled),
    its part files removed."""
    if part_size < 1024:
        raise BundleError("BadPartSize", "part size must be at least 1024 bytes")
    name = image.name
    prefix = prefix or name
    if "/" in prefix or prefix in {"", ".", ".."}:
        raise BundleError("BadPrefix", f"prefix {prefix!r} must be a plain file name")
    size = image.stat().st_size
    dest.mkdir(parents=True, exist_ok=True)
    aes_key, iv = keys.new_key_iv()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    padder = sym_padding.PKCS7(128).padder()
    tar_hash = hashlib.sha1()
    writer = _PartWriter(dest, prefix, part_size)
    # Two compressors per core: a worker also waits for the GIL between deflate calls and for the ordered
    # writer, and on a shared host more runnable threads keep the cores' share (bench/bundle_bench.py).
    workers = workers or 2 * (os.cpu_count() or 1)
    pending: deque[Future[bytes]] = deque()

    def emit(member: bytes) -> None:
        writer.write(encryptor.update(padder.update(member)))

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="gzip") as pool:
            for chunk in tar_stream(image, name, size):
                if cancel is not None and cancel.is_set():
                    raise BundleError("Cancelled", "the bundling was stopped", 503)
                tar_hash.update(chunk)
                pending.append(pool.submit(compress_member, chunk, level))
                if progress:
                    progress(len(chunk))
                while len(pending) > 2 * workers:  # bounded in flight: constant memory
                    emit(pending.popleft().result())
            while pending:
                emit(pending.popleft().result())
        writer.write(encryptor.update(padder.finalize()) + encryptor.finalize())
        part_paths = writer.finish()
    except BaseException:
        writer.abort()
        raise
    manifest = Manifest(
        name=name,
        user=account,
        digest=tar_hash.hexdigest(),
        size=size,
        bundled_size=writer.total,
        ec2_encrypted_key=keys.wrap(aes_key, cloud_cert),
        user_encrypted_key=keys.wrap(aes_key, user_cert),
        ec2_encrypted_iv=keys.wrap(iv, cloud_cert),
        user_encrypted_iv=keys.wrap(iv, user_cert),
        parts=[Part(i, p.name, d) for i, (p, d) in enumerate(zip(part_paths, writer.digests, strict=True))],
        architecture=architecture,
        block_device_mappings=list(block_device_mappings or []),
        kernel_id=kernel_id,
        ramdisk_id=ramdisk_id,
    )
    return manifest, part_paths


# ================================================================== decrypt


class PartSource(Protocol):
    """Where a bundle's parts are read from: a directory, or Walrus's object store."""

    def size(self, part: Part) -> int | None:
        """The stored size of the part, or None if it does not exist."""

    def open(self, part: Part) -> BinaryIO:
        """A binary stream of the part (read in large blocks from a worker thread)."""


class DirectoryParts:
    """Parts as files in one directory; the manifest's file names are checked plain names."""

    def __init__(self, directory: Path):
        self.directory = directory

    def size(self, part: Part) -> int | None:
        try:
            return (self.directory / part.filename).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, part: Part) -> BinaryIO:
        return (self.directory / part.filename).open("rb")


@dataclass
class DecryptResult:
    size: int
    sha256: str  # of the image file, so a downloader can check what it received
    member_name: str


class _Aborted(Exception):
    pass


class _Channel:
    """A bounded hand-over between two stages that gives up when the pipeline aborts."""

    def __init__(self, abort: threading.Event, depth: int = 4):
        self.q: queue.Queue[bytes | memoryview | None] = queue.Queue(depth)
        self.abort = abort

    def put(self, item: bytes | memoryview | None) -> None:
        while True:
            if self.abort.is_set():
                raise _Aborted
            try:
                self.q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self) -> bytes | memoryview | None:
        while True:
            if self.abort.is_set():
                raise _Aborted
            try:
                return self.q.get(timeout=0.05)
            except queue.Empty:
                continue


class _ChannelReader:
    """A file-like `read` over a channel (for tarfile's stream mode), plus zero-copy `view` reads."""

    def __init__(self, channel: _Channel):
        self.channel = channel
        self.buf = memoryview(b"")
        self.eof = False

    def view(self, n: int) -> memoryview:
        """Up to `n` bytes (fewer at a chunk boundary; empty at the end), without copying."""
        while not self.buf and not self.eof:
            item = self.channel.get()
            if item is None:
                self.eof = True
            else:
                self.buf = memoryview(item)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_exact(self, n: int) -> bytes:
        pieces, size = [], 0
        while size < n and (piece := self.view(n - size)):
            pieces.append(piece.tobytes())
            size += len(piece)
        return b"".join(pieces)

    def unread(self, data: bytes) -> None:
        self.buf = memoryview(data + self.buf.tobytes())

    def read(self, n: int = -1) -> bytes:
        return self.view(n if n >= 0 else 1 << 62).tobytes()

    def drain(self) -> bool:
        """Consume the rest; True if it was all zero bytes (tar padding and end blocks)."""
        zero = True
        while piece := self.view(1 << 22):
            zero = zero and not piece.tobytes().strip(b"\x00")
        return zero


def _plain_member(header: bytes) -> tarfile.TarInfo | None:
    """The member described by a lone ustar/GNU header of a regular file, or None when tarfile must do it
    (sparse files, long names, pax headers)."""
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return info if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else None


def check_part_sizes(manifest: Manifest, parts: PartSource) -> None:
    """Every part present and the sizes consistent with the manifest, before any decryption."""
    total = 0
    for part in manifest.parts:
        size = parts.size(part)
        if size is None:
            raise BundleError("MissingPart", f"part {part.index} ({part.filename}) is missing", 404)
        total += size
    if total != manifest.bundled_size:
        raise BundleError(
            "PartSizeMismatch",
            f"the parts hold {total} bytes but the manifest's bundled_size is {manifest.bundled_size} "
            "(a part is truncated or extended)",
        )
    if total == 0 or total % 16:
        raise BundleError("PartSizeMismatch", f"{total} bytes is not a whole number of AES blocks")


def _untar_with_tarfile(reader: _ChannelReader, size: int, emit: Callable[[bytes], None]) -> tarfile.TarInfo:
    """The general case (GNU sparse members as ec2-ami-tools makes them, long names, pax)."""
    try:
        with tarfile.open(fileobj=reader, mode="r|", bufsize=1 << 20) as archive:  # type: ignore[call-overload]
            member: tarfile.TarInfo | None = archive.next()
            if member is None or not member.isreg():
                raise BundleError("BadImageArchive", "the bundle's tar archive does not start with a regular file")
            if member.size != size:
                raise BundleError("ImageSizeMismatch", f"the image holds {member.size} bytes; the manifest says {size}")
            source = archive.extractfile(member)
            assert source is not None
            done = 0
            while chunk := source.read(READ_BLOCK):
                emit(chunk)
                done += len(chunk)
            if done != member.size:
                raise BundleError("BadImageArchive", "the tar archive ends inside the image")
            if archive.next() is not None:
                raise BundleError("BadImageArchive", "the bundle's tar archive holds more than one file")
            return member
    except tarfile.TarError as err:
        raise BundleError("BadImageArchive", f"the bundle's tar archive is unreadable: {err}") from None


def decrypt_bundle(
    manifest: Manifest,
    private_key: rsa.RSAPrivateKey,
    parts: PartSource,
    out: BinaryIO,
    *,
    key_for: str = "cloud",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> DecryptResult:
    """Decrypt a bundle into `out` in one streaming pass, checking every part digest and the tar-stream digest.

    `key_for` picks the wrapped key: `cloud` (ec2_encrypted_*) or `user` (user_encrypted_*). Raises BundleError;
    `out` then holds a partial image that the caller must discard. Setting `cancel` stops it (BundleError
    Cancelled) at the next block.
    """
    wrapped_key, wrapped_iv = (
        (manifest.ec2_encrypted_key, manifest.ec2_encrypted_iv)
        if key_for == "cloud"
        else (manifest.user_encrypted_key, manifest.user_encrypted_iv)
    )
    aes_key = keys.unwrap(wrapped_key, private_key, "key")
    iv = keys.unwrap(wrapped_iv, private_key, "IV")
    check_part_sizes(manifest, parts)
    # A tar stream is the image plus headers and padding; more than this is a decompression bomb.
    tar_limit = manifest.size + (manifest.size >> 6) + (1 << 20)
    abort = threading.Event()
    decrypted, inflated = _Channel(abort), _Channel(abort)
    errors: list[BaseException | None] = [None, None, None]
    result: list[DecryptResult] = []

    def read_stage() -> None:
        decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
        held = b""  # the last plaintext block, which may be PKCS#7 padding: passed on only when more follows
        for part in manifest.parts:
            digest = hashlib.sha1()
            with parts.open(part) as stream:
                while block := stream.read(READ_BLOCK):
                    if cancel is not None and cancel.is_set():
                        raise BundleError("Cancelled", "the decryption was stopped", 503)
                    digest.update(block)
                    if progress:
                        progress(len(block))
                    if abort.is_set():  # after a downstream failure, only finish this part's digest
                        continue
                    view = memoryview(block)
                    try:
                        # AES holds the GIL: small slices keep the other stages flowing.
                        for start in range(0, len(view), AES_SLICE):
                            plain = decryptor.update(view[start : start + AES_SLICE])
                            if len(plain) >= 16:
                                if held:
                                    decrypted.put(held)
                                decrypted.put(memoryview(plain)[:-16])
                                held = plain[-16:]
                    except _Aborted:
                        pass
            if digest.hexdigest() != part.digest:
                raise BundleError(
                    "PartDigestMismatch", f"part {part.index} ({part.filename}) does not match its SHA-1 digest"
                )
            if abort.is_set():
                raise _Aborted
        last = held + decryptor.finalize()
        pad = last[-1] if last else 0
        if not 1 <= pad <= 16 or last[-pad:] != bytes([pad]) * pad:
            raise BundleError("DecryptionFailed", "AES padding is wrong: the key does not fit or the data is corrupt")
        decrypted.put(last[:-pad])
        decrypted.put(None)

    def inflate_stage() -> None:
        inflater = MultiMemberInflater()
        tar_hash = hashlib.sha1()
        total = 0
        try:
            while (block := decrypted.get()) is not None:
                for piece in inflater.feed(block):
                    total += len(piece)
                    if total > tar_limit:
                        raise BundleError("ImageTooLarge", f"the image unpacks to more than {tar_limit} bytes")
                    tar_hash.update(piece)
                    inflated.put(piece)
            inflater.finish()
        except zlib.error as err:
            raise BundleError("CorruptImage", f"the decrypted bundle is not valid gzip: {err}") from None
        if tar_hash.hexdigest() != manifest.digest:
            raise BundleError("ImageDigestMismatch", "the unpacked tar stream does not match the image digest")
        inflated.put(None)

    def untar_stage() -> None:
        reader = _ChannelReader(inflated)
        image_hash = hashlib.sha256()
        written = 0

        def emit(data: memoryview | bytes) -> None:
            nonlocal written
            out.write(data)
            image_hash.update(data)
            written += len(data)

        header = reader.read_exact(512)
        member = _plain_member(header)
        if member is not None:  # the usual case: copy the image straight from the stream (no tarfile buffers)
            if member.size != manifest.size:
                raise BundleError(
                    "ImageSizeMismatch", f"the image holds {member.size} bytes; the manifest says {manifest.size}"
                )
            while written < member.size and (piece := reader.view(min(READ_BLOCK, member.size - written))):
                emit(piece)
            if written != member.size:
                raise BundleError("BadImageArchive", "the tar archive ends inside the image")
            if not reader.drain():  # after the image only padding and the end-of-archive blocks may follow
                raise BundleError("BadImageArchive", "the bundle's tar archive holds more than one file")
        else:
            reader.unread(header)
            member = _untar_with_tarfile(reader, manifest.size, emit)
            reader.drain()  # the rest of the stream still counts for the digest
        result.append(DecryptResult(written, image_hash.hexdigest(), member.name))

    def run(index: int, stage: Callable[[], None]) -> None:
        try:
            stage()
        except _Aborted:
            pass
        except BaseException as err:
            errors[index] = err
            abort.set()

    threads = [
        threading.Thread(target=run, args=(i, stage), name=f"unbundle-{i}", daemon=True)
        for i, stage in enumerate((read_stage, inflate_stage, untar_stage))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:  # the most upstream failure is the cause of the others
        if error is not None:
            if isinstance(error, BundleError):
                raise error
            if isinstance(error, OSError):
                raise BundleError("ReadError", f"reading or writing the image failed: {error}", 500) from error
            raise error
    if not result:
        raise BundleError("BadImageArchive", "the bundle did not yield an image")
    return result[0]
