"""User credentials as Eucalyptus handed them out: a `eucarc` and PEM files, loose or in a zip (DESIGN section 4).

The eucarc exports EC2_URL, S3_URL, EC2_ACCESS_KEY, EC2_SECRET_KEY, EC2_CERT, EC2_PRIVATE_KEY,
EUCALYPTUS_CERT and EC2_USER_ID (the 12-digit account id), plus AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_DEFAULT_REGION / AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL_S3 for awscli and boto3. Written to a directory,
file paths are absolute and every line is `export KEY='value'` (readable by `common.config.parse_conf` and
`parse_eucarc`); in the zip they are relative to the eucarc's own directory (`${EUCA_KEY_DIR}`), as in
Eucalyptus's credentials zip.
"""

from __future__ import annotations

import io
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common import pki

EUCARC = "eucarc"
CLOUD_CERT = "cloud-cert.pem"


@dataclass(frozen=True)
class Credentials:
    ec2_url: str
    s3_url: str
    access_key: str
    secret_key: str
    account_id: str
    user_name: str
    cert_pem: str
    key_pem: str
    cloud_cert_pem: str
    region: str = "eucalyptus"

    @property
    def prefix(self) -> str:
        return f"euca2-{self.user_name}-{self.access_key[-8:].lower()}"

    def files(self) -> dict[str, str]:
        return {
            f"{self.prefix}-cert.pem": self.cert_pem,
            f"{self.prefix}-pk.pem": self.key_pem,
            CLOUD_CERT: self.cloud_cert_pem,
        }

    def eucarc(self, key_dir: str | None) -> str:
        """`key_dir` None: paths relative to the eucarc (zip); else absolute paths under `key_dir`."""
        base = "${EUCA_KEY_DIR}" if key_dir is None else key_dir.rstrip("/")

        def path(name: str) -> str:
            full = f"{base}/{name}"
            return f'"{full}"' if key_dir is None else shlex.quote(full)

        lines = [f"# Koala credentials of user {self.user_name} in account {self.account_id}"]
        if key_dir is None:
            lines.append("EUCA_KEY_DIR=$(cd $(dirname ${BASH_SOURCE:-$0}); pwd -P)")
        values = {
            "EC2_URL": shlex.quote(self.ec2_url),
            "S3_URL": shlex.quote(self.s3_url),
            "EC2_PRIVATE_KEY": path(f"{self.prefix}-pk.pem"),
            "EC2_CERT": path(f"{self.prefix}-cert.pem"),
            "EUCALYPTUS_CERT": path(CLOUD_CERT),
            "EC2_ACCESS_KEY": shlex.quote(self.access_key),
            "EC2_SECRET_KEY": shlex.quote(self.secret_key),
            "EC2_USER_ID": shlex.quote(self.account_id),
            "AWS_ACCESS_KEY_ID": shlex.quote(self.access_key),
            "AWS_SECRET_ACCESS_KEY": shlex.quote(self.secret_key),
            "AWS_DEFAULT_REGION": shlex.quote(self.region),
            # awscli and boto3 (botocore >= 1.31) take the endpoints from these: plain `aws ec2 ...` works.
            "AWS_ENDPOINT_URL_EC2": shlex.quote(self.ec2_url),
            "AWS_ENDPOINT_URL_S3": shlex.quote(self.s3_url),
        }
        lines += [f"export {key}={value}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> Path:
        """Write the eucarc (absolute paths) and PEM files into `directory`, private; return the eucarc."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        for name, text in self.files().items():
            pki.write_private(directory / name, text.encode())
        target = directory / EUCARC
        pki.write_private(target, self.eucarc(str(directory.resolve())).encode())
        return target

    def zip(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(EUCARC, self.eucarc(None))
            for name, text in self.files().items():
                archive.writestr(name, text)
        return buffer.getvalue()


def parse_eucarc(path: Path) -> dict[str, str]:
    """The exported values of a eucarc this module wrote, `${EUCA_KEY_DIR}` resolved to its directory."""
    values: dict[str, str] = {}
    key_dir = str(path.resolve().parent)
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        tokens = shlex.split(line[len("export ") :], posix=True)
        if len(tokens) == 1 and "=" in tokens[0]:
            key, value = tokens[0].split("=", 1)
            values[key] = value.replace("${EUCA_KEY_DIR}", key_dir)
    return values
