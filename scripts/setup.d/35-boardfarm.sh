#!/usr/bin/env bash
# Set-up for the board-farm test (tests/e2e/uboot.rs): the real programs of a board farm and an
# arm64 board for them.
#
# - apt packages: qemu-system-arm (qemu-system-aarch64), socat (the board's serial cable), pdudaemon (its HTTP API and its
#   `localcmdline` driver power the board), ser2net 4 (exports the board's console).
# - the arm64 board in ~/.cache/labwire/uboot-board (or $LABWIRE_UBOOT_BOARD_DIR):
#   u-boot.bin of Debian's u-boot-qemu (qemu_arm64), the Image of Debian's arm64 kernel and a
#   busybox initramfs built from busybox-static:arm64 and tests/board/rootfs/ (login on
#   ttyAMA0), by tests/uboot/build.sh.
# - grub-pc-bin, xorriso and mtools: grub-mkrescue's GRUB images for tests/e2e/grub.rs
#   (tests/grub/mkiso.sh).
#
# The arm64 packages are fetched without touching the machine's dpkg architecture list: apt runs
# with APT::Architectures=arm64 and its own lists and cache under the board folder, and only
# `apt-get download` + `dpkg -x` are used, so nothing is installed for arm64. Idempotent: a
# complete board (its stamp) is kept.
set -euo pipefail
cd "$(dirname "$0")/../.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_get() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }

missing=()
for p in qemu-system-arm pdudaemon ser2net socat busybox-static cpio grub-pc-bin xorriso mtools; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "35-boardfarm: installing ${missing[*]}"
    apt_get update -q
    apt_get install -y -q --no-install-recommends "${missing[@]}"
    # The tests start pdudaemon and ser2net themselves, on their own ports.
    for unit in pdudaemon ser2net; do
        $sudo systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
else
    echo "35-boardfarm: qemu-system-arm, pdudaemon, ser2net, socat and GRUB's tools are installed"
fi

exec bash tests/uboot/build.sh
