"""TLS files for a node's libvirtd and QEMU, issued by the cloud's CA: how NCs migrate guests to each other over an
authenticated channel (libvirt's qemu+tls transport between the two libvirtds, and QEMU's own TLS for the memory
and disk streams), with no unauthenticated libvirt TCP port open.

One certificate per node (CN = the NC's id, OU = nc, the node's migration address as subjectAltName, server and
client use), laid out in the three places the tools look:

    DIR/server/{cacert,servercert,serverkey}.pem   libvirtd.conf ca_file / cert_file / key_file (listen_tls)
    DIR/client/{cacert,clientcert,clientkey}.pem   the `pkipath` of the peer URI (this libvirtd as a client)
    DIR/qemu/{ca-cert,server-cert,server-key,client-cert,client-key}.pem   qemu.conf migrate_tls_x509_cert_dir

QEMU runs as libvirt's unprivileged user, so the qemu/ directory is readable by that user's group only.
"""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass
from pathlib import Path

from common import pki

QEMU_GROUP = "libvirt-qemu"


@dataclass(frozen=True)
class TlsLayout:
    root: Path

    @property
    def server(self) -> Path:
        return self.root / "server"

    @property
    def client(self) -> Path:
        return self.root / "client"

    @property
    def qemu(self) -> Path:
        return self.root / "qemu"

    def libvirtd_conf(self, listen_addr: str, port: int = 16514, allowed: str = "*OU=nc*") -> str:
        """libvirtd.conf lines: TLS only, on `listen_addr`, peers must hold a node certificate of this cloud."""
        return (
            "listen_tls = 1\nlisten_tcp = 0\n"
            f'listen_addr = "{listen_addr}"\ntls_port = "{port}"\n'
            f'ca_file = "{self.server}/cacert.pem"\ncert_file = "{self.server}/servercert.pem"\n'
            f'key_file = "{self.server}/serverkey.pem"\n'
            f'tls_allowed_dn_list = ["{allowed}"]\n'
        )

    def qemu_conf(self) -> str:
        """qemu.conf lines: QEMU's migration streams (memory and NBD disks) over TLS with verified peers."""
        return f'migrate_tls_x509_cert_dir = "{self.qemu}"\nmigrate_tls_x509_verify = 1\nmigrate_tls_force = 1\n'


def install(pki_dir: pki.PkiDir, node_id: str, addresses: list[str], dest: Path) -> TlsLayout:
    """Issue `node_id`'s TLS certificate for `addresses` and write the three layouts under `dest`."""
    ca_cert, ca_key = pki_dir.ca()
    cert, key = pki.issue(ca_cert, ca_key, node_id, "nc", addresses=addresses)
    ca_pem, cert_pem, key_pem = pki.cert_pem(ca_cert), pki.cert_pem(cert), pki.key_pem(key)
    layout = TlsLayout(dest)
    for directory in (layout.server, layout.client, layout.qemu):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    files = {
        layout.server: {"cacert.pem": ca_pem, "servercert.pem": cert_pem, "serverkey.pem": key_pem},
        layout.client: {"cacert.pem": ca_pem, "clientcert.pem": cert_pem, "clientkey.pem": key_pem},
        layout.qemu: {"ca-cert.pem": ca_pem, "server-cert.pem": cert_pem, "server-key.pem": key_pem,
                      "client-cert.pem": cert_pem, "client-key.pem": key_pem},
    }  # fmt: skip
    for directory, contents in files.items():
        for name, data in contents.items():
            pki.write_private(directory / name, data)
    try:
        gid = grp.getgrnam(QEMU_GROUP).gr_gid
    except KeyError:
        gid = -1
    if gid >= 0 and os.geteuid() == 0:  # QEMU reads its TLS files itself, as libvirt's unprivileged user
        os.chown(dest, -1, gid)
        os.chmod(dest, 0o750)
        os.chown(layout.qemu, -1, gid)
        os.chmod(layout.qemu, 0o750)
        for name in files[layout.qemu]:
            os.chown(layout.qemu / name, -1, gid)
            os.chmod(layout.qemu / name, 0o640)
    return layout
