#!/usr/bin/env bash
# Builds the labwire U-Boot test board: an arm64 QEMU `virt` machine that starts Debian's
# U-Boot (u-boot-qemu, qemu_arm64), which fetches a Debian arm64 kernel and a busybox
# initramfs over TFTP. See README.md.
#
#   tests/uboot/build.sh [OUTDIR]
#
# OUTDIR defaults to ${LABWIRE_UBOOT_BOARD_DIR:-$HOME/.cache/labwire/uboot-board}. Produces
#   OUTDIR/u-boot.bin         /usr/lib/u-boot/qemu_arm64/u-boot.bin of u-boot-qemu
#   OUTDIR/Image              the arm64 kernel of linux-image-arm64 (vmlinuz: an uncompressed Image)
#   OUTDIR/initramfs.cpio.gz  busybox-static:arm64 + ../board/rootfs (login on ttyAMA0)
#   OUTDIR/board.stamp        written last: its presence means the board is complete
#
# The packages come with `apt-get download` and `dpkg -x` through apt with its own lists
# (OUTDIR/apt, APT::Architectures=arm64): the machine's dpkg architectures are not changed and
# nothing is installed. Idempotent: a complete board from the same inputs is kept.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUTDIR=${1:-${LABWIRE_UBOOT_BOARD_DIR:-$HOME/.cache/labwire/uboot-board}}
log() { echo "uboot-board: $*"; }
die() { echo "uboot-board: error: $*" >&2; exit 1; }

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
exec 9>"$OUTDIR/.build.lock"
flock 9

inputs_hash() {
    (
        cd "$HERE/.."
        sha256sum uboot/build.sh
        find board/rootfs -type f | LC_ALL=C sort | while read -r f; do
            printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
        done
    ) | sha256sum | cut -d' ' -f1
}
INPUTS=$(inputs_hash)
if [ -f "$OUTDIR/board.stamp" ] && grep -qx "inputs=$INPUTS" "$OUTDIR/board.stamp"; then
    log "up to date in $OUTDIR ($(sed -n 's/^kernel_package=//p' "$OUTDIR/board.stamp"))"
    exit 0
fi

# apt for arm64 with private state: lists, cache and an empty dpkg status of its own.
APT=$OUTDIR/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
[ -f "$APT/status" ] || : >"$APT/status"
apt_opts=(-q -o APT::Architecture=arm64 -o APT::Architectures=arm64
    -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "Dir::State::status=$APT/status"
    -o APT::Sandbox::User=root -o Debug::NoLocking=1)
log "apt-get update (arm64, private lists in $APT)"
apt-get "${apt_opts[@]}" update >/dev/null
KPKG=$(apt-cache "${apt_opts[@]}" depends linux-image-arm64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
[ -n "$KPKG" ] || die "apt-cache depends linux-image-arm64 names no kernel package"

find "$OUTDIR" -maxdepth 1 -type d -name '.build.*' -exec rm -rf {} +
WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/deb" "$WORK/x"
log "downloading $KPKG busybox-static u-boot-qemu (arm64)"
(cd "$WORK/deb" && apt-get "${apt_opts[@]}" download "$KPKG" busybox-static u-boot-qemu >/dev/null)
for deb in "$WORK"/deb/*.deb; do dpkg -x "$deb" "$WORK/x"; done

vmlinuz=("$WORK"/x/boot/vmlinuz-*)
[ -f "${vmlinuz[0]}" ] || die "$KPKG holds no boot/vmlinuz-*"
mv "${vmlinuz[0]}" "$WORK/Image"
cp "$WORK/x/usr/lib/u-boot/qemu_arm64/u-boot.bin" "$WORK/u-boot.bin"
BUSYBOX=$WORK/x/bin/busybox
[ -f "$BUSYBOX" ] || die "busybox-static:arm64 holds no bin/busybox"
KVER=$(dpkg-deb -f "$WORK"/deb/linux-image-*.deb Version)

# The initramfs: the x86 board's rootfs, its console ttyS0 renamed ttyAMA0 (the virt
# machine's PL011). busybox is an arm64 binary, so the applet list comes from its --list-full
# of the x86 busybox-static of the host when present, else from the rootfs' needs.
ROOT=$WORK/root
mkdir -p "$ROOT"
cp -a "$HERE/../board/rootfs/." "$ROOT/"
sed -i 's/ttyS0/ttyAMA0/g' "$ROOT/init" "$ROOT/etc/issue"
echo ttyAMA0 >>"$ROOT/etc/securetty"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,var/log}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
ln -s ../run "$ROOT/var/run"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
# The applet list of the same busybox version built for the host (the arm64 binary cannot
# run here); the applets the board uses are all in it.
HOST_BUSYBOX=/bin/busybox
[ -x "$HOST_BUSYBOX" ] || die "$HOST_BUSYBOX missing: apt-get install busybox-static"
"$HOST_BUSYBOX" --list-full | while read -r applet; do
    case "$applet" in linuxrc | "") continue ;; esac
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done
HASH=$("$HOST_BUSYBOX" mkpasswd -m sha512 -S labwireboard01 labwire)
printf 'root:%s:19000:0:99999:7:::\n' "$HASH" >"$ROOT/etc/shadow"
chmod 0600 "$ROOT/etc/shadow"
chmod 0755 "$ROOT/init" "$ROOT"/usr/bin/labwire-*
newc_entry() { # NAME MODE RDEVMAJOR RDEVMINOR
    local name=$1 n=$((${#1} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0 "$2" 0 0 1 0 0 0 0 "$3" "$4" "$n" 0
    printf '%s\0' "$name"
    local pad=$(((4 - (110 + n) % 4) % 4))
    [ "$pad" = 0 ] || head -c "$pad" /dev/zero
}
find "$ROOT" -mindepth 1 -exec touch -h -d @0 {} +
(
    cd "$ROOT"
    find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort |
        cpio -o -H newc --owner=0:0 --reproducible --quiet
    newc_entry dev/console $((0020600)) 5 1
    newc_entry TRAILER!!! 0 0 0
) | gzip -9 -n >"$WORK/initramfs.cpio.gz"

rm -f "$OUTDIR/board.stamp"
mv -f "$WORK/u-boot.bin" "$WORK/Image" "$WORK/initramfs.cpio.gz" "$OUTDIR/"
printf 'inputs=%s\nkernel_package=%s\nkernel_version=%s\n' "$INPUTS" "$KPKG" "$KVER" >"$OUTDIR/board.stamp"
log "board ready in $OUTDIR ($KPKG $KVER; Image $(du -k "$OUTDIR/Image" | cut -f1) KiB)"
