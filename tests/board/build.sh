#!/usr/bin/env bash
# Builds the labwire test board: a Debian x86_64 kernel plus a busybox
# initramfs, booted under QEMU by run-qemu.sh. See README.md.
#
#   tests/board/build.sh [--refresh-kernel] [OUTDIR]
#
# OUTDIR defaults to ${LABWIRE_BOARD_DIR:-$HOME/.cache/labwire/board}. Produces
#   OUTDIR/vmlinuz            the kernel of Debian's linux-image-amd64
#   OUTDIR/initramfs.cpio.gz  busybox-static + rootfs/ from this directory
#   OUTDIR/board.stamp        written last: its presence means the board is complete
#
# Idempotent and cached: when OUTDIR holds a complete board built from the
# same inputs (this script, rootfs/, the busybox binary) it exits at once.
# The kernel is fetched once and kept; --refresh-kernel (or
# LABWIRE_BOARD_REFRESH_KERNEL=1) fetches the current one again.
# Installs qemu-system-x86, busybox-static and cpio when missing (needs root).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REFRESH_KERNEL=${LABWIRE_BOARD_REFRESH_KERNEL:-0}

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

OUTDIR=
while [ $# -gt 0 ]; do
	case "$1" in
	--refresh-kernel) REFRESH_KERNEL=1 ;;
	-h | --help) usage; exit 0 ;;
	-*) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
	*)
		[ -z "$OUTDIR" ] || { echo "build.sh: one OUTDIR only" >&2; exit 2; }
		OUTDIR=$1
		;;
	esac
	shift
done
OUTDIR=${OUTDIR:-${LABWIRE_BOARD_DIR:-$HOME/.cache/labwire/board}}

log() { echo "board: $*"; }
die() { echo "board: error: $*" >&2; exit 1; }

PACKAGES=(qemu-system-x86 busybox-static cpio)
BUSYBOX=/bin/busybox

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

APT_UPDATED=0
apt_update() {
	[ "$APT_UPDATED" = 1 ] && return 0
	log "apt-get update"
	apt-get update -qq
	APT_UPDATED=1
}

ensure_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		pkg_installed "$p" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; run as root or: apt-get install -y --no-install-recommends ${missing[*]}"
	apt_update
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Hash of everything the initramfs is made from.
inputs_hash() {
	(
		cd "$HERE"
		sha256sum build.sh
		find rootfs -type f | LC_ALL=C sort | while read -r f; do
			printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
		done
		sha256sum "$BUSYBOX" | sed 's| .*||'
	) | sha256sum | cut -d' ' -f1
}

stamp_get() { # KEY: value of KEY= in OUTDIR/board.stamp, or nothing
	if [ -f "$OUTDIR/board.stamp" ]; then
		sed -n "s/^$1=//p" "$OUTDIR/board.stamp" | head -n1
	fi
}

ensure_packages
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing although busybox-static is installed"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# One build at a time per OUTDIR.
exec 9>"$OUTDIR/.build.lock"
flock 9

INPUTS=$(inputs_hash)
if [ "$REFRESH_KERNEL" != 1 ] && [ -f "$OUTDIR/vmlinuz" ] && [ -f "$OUTDIR/initramfs.cpio.gz" ] &&
	[ "$(stamp_get inputs)" = "$INPUTS" ]; then
	log "up to date in $OUTDIR (kernel $(stamp_get kernel_package) $(stamp_get kernel_version))"
	exit 0
fi

# Leftovers of a build that was killed outright (we hold the lock).
find "$OUTDIR" -maxdepth 1 -type d -name '.build.*' -exec rm -rf {} +
WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP

# --- kernel -----------------------------------------------------------------
KPKG=$(stamp_get kernel_package)
KVER=$(stamp_get kernel_version)
NEW_KERNEL=0
if [ "$REFRESH_KERNEL" = 1 ] || [ ! -f "$OUTDIR/vmlinuz" ] || [ -z "$KPKG" ]; then
	find_kernel_pkg() {
		apt-cache depends linux-image-amd64 2>/dev/null |
			sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1
	}
	KPKG=$(find_kernel_pkg)
	if [ -z "$KPKG" ] || [ "$REFRESH_KERNEL" = 1 ]; then
		apt_update
		KPKG=$(find_kernel_pkg)
	fi
	[ -n "$KPKG" ] || die "apt-cache depends linux-image-amd64 names no kernel package"
	log "downloading $KPKG"
	mkdir "$WORK/deb"
	download() { (cd "$WORK/deb" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG"); }
	if ! download; then
		apt_update
		download || die "apt-get download $KPKG failed"
	fi
	debs=("$WORK"/deb/*.deb)
	DEB=${debs[0]}
	KVER=$(dpkg-deb -f "$DEB" Version)
	log "extracting vmlinuz from $KPKG $KVER"
	mkdir "$WORK/kernel"
	dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK/kernel" --wildcards './boot/vmlinuz-*'
	vmlinuz=("$WORK"/kernel/boot/vmlinuz-*)
	[ -f "${vmlinuz[0]}" ] || die "$KPKG holds no boot/vmlinuz-*"
	mv "${vmlinuz[0]}" "$WORK/vmlinuz"
	rm -rf "$WORK/deb" "$WORK/kernel"
	NEW_KERNEL=1
else
	log "reusing kernel $KPKG $KVER"
fi

# --- initramfs --------------------------------------------------------------
log "building initramfs from $(dpkg-query -W -f='busybox-static ${Version}' busybox-static)"
ROOT=$WORK/root
mkdir -p "$ROOT"
cp -a "$HERE/rootfs/." "$ROOT/"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,var/log}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
ln -s ../run "$ROOT/var/run"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
# One symlink per applet at the path busybox itself names (bin/sh, sbin/getty, ...).
"$BUSYBOX" --list-full | while read -r applet; do
	case "$applet" in linuxrc | "") continue ;; esac
	[ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done
# root's password is "labwire"; fixed salt so the image is reproducible.
HASH=$("$BUSYBOX" mkpasswd -m sha512 -S labwireboard01 labwire)
printf 'root:%s:19000:0:99999:7:::\n' "$HASH" >"$ROOT/etc/shadow"
chmod 0600 "$ROOT/etc/shadow"
chmod 0755 "$ROOT/init" "$ROOT"/usr/bin/labwire-*

# newc entry for /dev/console (char 5:1) plus trailer, appended as a second
# archive so the kernel gives /init a console without mknod (no root needed).
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
log "initramfs: $(du -k "$WORK/initramfs.cpio.gz" | cut -f1) KiB"

cat >"$WORK/board.stamp" <<EOF
inputs=$INPUTS
kernel_package=$KPKG
kernel_version=$KVER
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
EOF

# --- install atomically -----------------------------------------------------
# Each rename is atomic; the stamp goes first and comes back last, so an
# interrupted build leaves no stamp and the next run rebuilds.
rm -f "$OUTDIR/board.stamp"
[ "$NEW_KERNEL" = 0 ] || mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
sync -f "$OUTDIR" 2>/dev/null || true
mv -f "$WORK/board.stamp" "$OUTDIR/board.stamp"
log "board ready in $OUTDIR (kernel $KPKG $KVER)"
