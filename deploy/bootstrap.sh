#!/usr/bin/env bash
# Make this Debian 12 machine ready to run and test Koala, as root: Debian packages, libvirtd (with the
# users, groups and directories Debian's libvirt-daemon-system would create), and .venv with the project.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config        # the venv and libvirt-python's build
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev libxml2-utils
  qemu-system-x86 qemu-utils                             # guests under software emulation
  iproute2 iptables dnsmasq-base                         # cluster networking
  tgt qemu-block-extra                                   # EBS: the CC's iSCSI target, QEMU's iSCSI initiator
  xfsprogs                                               # EBS tests: volumes on XFS with reflinks (frozen copies)
  openssl s3cmd                                          # baselines and a stock S3 client for tests
  wrk                                                    # Walrus GET benchmark
  busybox-static dropbear-bin e2fsprogs cpio kmod zstd   # the guest test image
  openssh-client                                         # SSH into test guests
  chromium                                               # admin page and Walrus browser (POST upload, CORS) tests
  systemd                                                # systemd-analyze verify of the units
  ceph-mon ceph-mgr ceph-osd radosgw python3-rados python3-rbd  # Walrus on RADOS, EBS on RBD (issue 23)
  postgresql                                             # the CLC on PostgreSQL: tests start their own cluster
  haproxy                                                # koala up --scale-out: the door in front of two CLCs
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd for qemu:///system, started by hand where there is no systemd.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt
# As Debian's udev rule would: /dev/kvm for the kvm group. Otherwise libvirt's qemu capabilities (probed with KVM)
# are judged stale at every call and re-probed, and each domain start takes ~50 s. Guests still use domain type
# qemu (software emulation): nested KVM hangs here.
# Only when needed: a chgrp or chmod changes the device's ctime, and libvirt then judges every cached QEMU
# capabilities file stale and probes QEMU again at its next start (seconds for every libvirtd on the machine).
if [ -c /dev/kvm ] && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then chgrp kvm /dev/kvm && chmod 660 /dev/kvm; fi
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
  for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
  virsh -c qemu:///system version >/dev/null || { echo "bootstrap: libvirtd did not start" >&2; exit 1; }
fi
# The system libvirtd must live in the host's network namespace: one started from inside `ip netns exec` puts
# every guest's tap there, and host guests then fail with "Cannot get interface MTU". Say so rather than run on.
# The host's namespace cannot be read from init here (/proc/1 may be out of reach), so: libvirtd in another one than
# this shell's is wrong when it is a named one (`ip netns exec`) or when this shell is in no named one (the host's,
# an `unshare`); the koala up tests run the README's block (this script) in a named namespace of their own.
system_libvirtd=$(cat /run/libvirtd.pid 2>/dev/null || true)
if [ -n "$system_libvirtd" ] && [ -e "/proc/$system_libvirtd/ns/net" ] \
  && [ "$(readlink "/proc/$system_libvirtd/ns/net")" != "$(readlink /proc/$$/ns/net)" ] \
  && { [ -n "$(ip netns identify "$system_libvirtd" 2>/dev/null)" ] || [ -z "$(ip netns identify $$ 2>/dev/null)" ]; }
then
  echo "bootstrap: the system libvirtd (pid $system_libvirtd) runs in another network namespace than the host's;" \
    "it belongs in the host's (stop a libvirtd started inside a namespace, then run bootstrap again)" >&2
  exit 1
fi

# The project in its virtual environment; reinstalled only when pyproject.toml changes.
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.koala-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

# Debian's librados/librbd bindings (built for its python3) seen by the venv: only those two modules, not the
# whole of dist-packages.
ceph_dir=.venv/lib/debian-ceph
mkdir -p "$ceph_dir"
for module in rados rbd; do
  for so in /usr/lib/python3/dist-packages/"$module".cpython-*.so; do
    if [ -e "$so" ]; then ln -sf "$so" "$ceph_dir/"; fi
  done
done
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$(pwd)/$ceph_dir" > "$site/koala-debian-ceph.pth"
