#!/usr/bin/env bash
# Build Koala's guest test image from Debian packages: a kernel (eki), an initrd (eri) and an ext4 root (emi).
#
#   deploy/guest-image/build.sh [--out DIR] [--bundle]       prints the directory holding kernel, initrd, root.img
#
# - kernel: vmlinuz from the package linux-image-cloud-amd64 depends on (`apt-get download`).
# - initrd: busybox-static and the modules for disks and NIC (virtio_pci, virtio_blk, virtio_net and their
#   dependencies; the Xen front-ends xen-blkfront and xen-netfront; isofs for the config drive). Its /init loads
#   them, mounts root= (ext4 is built in) and switches to it.
# - root.img: a small ext4 file system (mke2fs -d) with busybox and dropbear (dropbear-bin). Its init prints
#   "KOALA-GUEST booted instance=<id>" on the serial console (the id from the kernel command line), configures
#   the NIC by DHCP, reads its metadata from http://169.254.169.254/latest/ when the network offers it, else from
#   the NoCloud config drive (label cidata), installs the SSH key for root, runs dropbear, and prints
#   "KOALA-GUEST ready instance=<id> source=metadata|config-drive|none".
#
# Artifacts are cached outside the repository, in $KOALA_GUEST_CACHE (default /var/cache/koala/guest-image),
# under a key made of this script and the exact package versions, so tests do not rebuild every time.
# With --bundle, the three are bundled with `koala bundle-image` when that command exists.
set -euo pipefail

OUT_BASE=${KOALA_GUEST_CACHE:-/var/cache/koala/guest-image}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUNDLE=0
while (($#)); do
  case "$1" in
    --out) OUT_BASE=$2; shift 2 ;;
    --bundle) BUNDLE=1; shift ;;
    *) echo "usage: $0 [--out DIR] [--bundle]" >&2; exit 2 ;;
  esac
done

for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio mke2fs busybox dropbear; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "guest-image: $tool is missing (deploy/bootstrap.sh installs it)" >&2; exit 1; }
done
BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" 2>/dev/null | grep -q dynamically && { echo "guest-image: need busybox-static" >&2; exit 1; }

resolve_kernel() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
KPKG=$(resolve_kernel)
if [ -z "$KPKG" ]; then apt-get update -qq >/dev/null 2>&1 || true; KPKG=$(resolve_kernel); fi
[ -n "$KPKG" ] || { echo "guest-image: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
KPKG_VERSION=$(apt-cache policy "$KPKG" | awk '/Candidate:/ {print $2}')
version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }
KEY=$( { cat "$0"; echo "$KPKG $KPKG_VERSION busybox $(version busybox-static) dropbear $(version dropbear-bin)"; } \
  | sha256sum | cut -c1-16)
OUT="$OUT_BASE/$KEY"
if [ -s "$OUT/kernel" ] && [ -s "$OUT/initrd" ] && [ -s "$OUT/root.img" ] && { ((!BUNDLE)) || [ -e "$OUT/bundle/.done" ]; }; then
  echo "$OUT"
  exit 0
fi
if [ -s "$OUT/kernel" ] && [ -s "$OUT/initrd" ] && [ -s "$OUT/root.img" ]; then
  SKIP_BUILD=1
fi

if [ -z "${SKIP_BUILD:-}" ]; then  # (not indented: the here-documents below end at column 0)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# --- kernel and modules ------------------------------------------------------------------------------------
apt-get download -q "$KPKG=$KPKG_VERSION" >/dev/null 2>&1 || apt-get download "$KPKG=$KPKG_VERSION"
dpkg-deb -x "$KPKG"_*.deb pkg
KVER=$(basename "$(ls -d pkg/lib/modules/*)")
depmod -b pkg "$KVER"

mkdir -p initrd/{bin,dev,proc,sys,newroot,lib/modules}
cp "$BUSYBOX" initrd/bin/busybox
ln -s busybox initrd/bin/sh
MODULES=(virtio_pci virtio_blk virtio_net xen-blkfront xen-netfront isofs)
: > initrd/modules.list
for module in "${MODULES[@]}"; do
  modprobe -d pkg -S "$KVER" --show-depends "$module" | awk '$1 == "insmod" {print $2}' | while read -r path; do
    name=$(basename "$path")
    grep -qx "$name" initrd/modules.list || { cp "$path" initrd/lib/modules/; echo "$name" >> initrd/modules.list; }
  done
done

cat > initrd/init <<'EOF'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
while read -r module; do /bin/busybox insmod "/lib/modules/$module" 2>/dev/null; done < /modules.list
root=/dev/vda
for arg in $(/bin/busybox cat /proc/cmdline); do
  case "$arg" in root=*) root=${arg#root=} ;; esac
done
for _ in $(/bin/busybox seq 100); do [ -b "$root" ] && break; /bin/busybox usleep 50000; done
/bin/busybox mount -t ext4 "$root" /newroot || { echo "KOALA-GUEST cannot mount $root"; exec /bin/sh; }
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
EOF
chmod 755 initrd/init
(cd initrd && find . | cpio -o -H newc --quiet | gzip -9) > initrd.img

# --- root file system -------------------------------------------------------------------------------------
R=root
mkdir -p $R/{bin,sbin,etc/dropbear,dev,proc,sys,tmp,run,root/.ssh,var/log,usr/share/udhcpc,lib64,lib/x86_64-linux-gnu,mnt/cidata}
cp "$BUSYBOX" $R/bin/busybox
for applet in $("$BUSYBOX" --list); do
  [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done
for binary in /usr/sbin/dropbear /usr/bin/dropbearkey; do
  cp "$binary" "$R/bin/"
  ldd "$binary" | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}' | while read -r lib; do
    cp -L "$lib" "$R$lib" 2>/dev/null || { mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"; }
  done
done
echo 'root:x:0:0:root:/root:/bin/sh' > $R/etc/passwd
echo 'root:*:19000:0:99999:7:::' > $R/etc/shadow
echo 'root:x:0:' > $R/etc/group
echo '/bin/sh' > $R/etc/shells
chmod 700 $R/root/.ssh

cat > $R/usr/share/udhcpc/default.script <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for server in $dns; do echo "nameserver $server" >> /etc/resolv.conf; done ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
EOF
chmod 755 $R/usr/share/udhcpc/default.script

cat > $R/sbin/init <<'EOF'
#!/bin/sh
# Koala's test guest: say who we are, get the network and metadata, install the SSH key, serve SSH.
# Metadata comes from the metadata service when the network offers it, else from the NoCloud config drive.
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
id=""
for arg in $(cat /proc/cmdline); do case "$arg" in koala.instance=*) id=${arg#koala.instance=} ;; esac; done
echo "KOALA-GUEST booted instance=${id:-unknown}"
key=""
source=""
# The NoCloud config drive (ISO labelled cidata), if attached: read now, used when the network has no metadata.
cd_id=""
cd_key=""
for dev in /dev/vd? /dev/xvd? /dev/sd? /dev/sr?; do
  [ -b "$dev" ] || continue
  mount -t iso9660 -o ro "$dev" /mnt/cidata 2>/dev/null || continue
  if [ -f /mnt/cidata/meta-data ]; then
    cd_id=$(sed -n 's/^instance-id: *//p' /mnt/cidata/meta-data)
    cd_key=$(sed -n 's/^  - "\(.*\)"$/\1/p' /mnt/cidata/meta-data | head -1)
    break
  fi
  umount /mnt/cidata
done
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up
  if udhcpc -i eth0 -n -q -t 3 -T 2 -s /usr/share/udhcpc/default.script >/dev/null 2>&1; then
    echo "KOALA-GUEST dhcp $(ip -4 -o addr show eth0 | awk '{print $4}')"
    # busybox-static's wget crashes in glibc's NSS (getservbyname): plain HTTP/1.0 over nc instead.
    md_get() {
      printf 'GET /latest/meta-data/%s HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n' "$1" |
        nc -w 10 169.254.169.254 80 2>/dev/null > /tmp/md.http
      head -1 /tmp/md.http | grep -q ' 200 ' && sed '1,/^\r*$/d' /tmp/md.http
    }
    # The cloud may still be putting the redirect and the instance's record in place: retry for a while
    # (briefly when a config drive can stand in).
    tries="1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"
    [ -n "$cd_id" ] && tries="1 2 3"
    mdid=""
    for _ in $tries; do
      mdid=$(md_get instance-id) && [ -n "$mdid" ] && id=$mdid && break
      sleep 1
    done
    if [ -n "$mdid" ]; then
      for _ in 1 2 3 4 5; do
      [ -n "$mdid" ] || break
      key=$(md_get public-keys/0/openssh-key) && [ -n "$key" ] && break
      echo "KOALA-GUEST metadata key not yet: $(head -1 /tmp/md.http) $(wc -c < /tmp/md.http) bytes"
      sleep 1
    done
      source=metadata
      echo "KOALA-GUEST metadata instance=$id"
    fi
  fi
fi
if [ -z "$source" ] && [ -n "$cd_id" ]; then
  id=$cd_id
  key=$cd_key
  source=config-drive
  echo "KOALA-GUEST config-drive instance=$id"
fi
hostname "${id:-koala-guest}"
if [ -n "$key" ]; then
  echo "$key" > /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
  echo "KOALA-GUEST ssh-key installed"
fi
dropbear -R -E -p 22 2>/dev/null && echo "KOALA-GUEST dropbear listening"
echo "KOALA-GUEST ready instance=${id:-unknown} source=${source:-none}"
while :; do sleep 3600; done
EOF
chmod 755 $R/sbin/init
mke2fs -q -F -t ext4 -L koala-root -d $R -E root_owner=0:0 root.img 32M >/dev/null

mkdir -p "$OUT.tmp"
cp "pkg/boot/vmlinuz-$KVER" "$OUT.tmp/kernel"
cp initrd.img "$OUT.tmp/initrd"
cp root.img "$OUT.tmp/root.img"
echo "$KPKG $KPKG_VERSION" > "$OUT.tmp/VERSION"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
# Builds of earlier versions of this script or of the packages are not used any more.
find "$OUT_BASE" -mindepth 1 -maxdepth 1 -type d ! -name "$KEY" ! -name "$KEY.tmp" -mmin +60 -exec rm -rf {} + || true
fi

if ((BUNDLE)); then
  # Bundled for the eucarc user (EC2_PRIVATE_KEY, EC2_CERT, EC2_USER_ID, EUCALYPTUS_CERT in the environment):
  # OUT/bundle/{kernel,initrd,root}/<name>.manifest.xml, ready for `koala upload-bundle` and registration.
  KOALA=$(command -v koala || echo "$REPO/.venv/bin/koala")
  if "$KOALA" bundle-image --help >/dev/null 2>&1; then
    rm -rf "$OUT/bundle"
    mkdir -p "$OUT/bundle/kernel" "$OUT/bundle/initrd" "$OUT/bundle/root"
    "$KOALA" bundle-image -i "$OUT/kernel" -d "$OUT/bundle/kernel" -p koala-guest-kernel -r x86_64 --kernel true >&2
    "$KOALA" bundle-image -i "$OUT/initrd" -d "$OUT/bundle/initrd" -p koala-guest-initrd -r x86_64 --ramdisk true >&2
    "$KOALA" bundle-image -i "$OUT/root.img" -d "$OUT/bundle/root" -p koala-guest-root -r x86_64 \
      -B ami=sda1,root=/dev/sda1,ephemeral0=sda2,swap=sda3 >&2
    touch "$OUT/bundle/.done"
  else
    echo "guest-image: 'koala bundle-image' is not available; not bundled" >&2
  fi
fi
echo "$OUT"
