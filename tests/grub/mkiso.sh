#!/usr/bin/env bash
# Makes a BIOS-bootable GRUB image (grub-mkrescue, i386-pc) holding a kernel and an initrd,
# with GRUB on the first serial port: the deploy step of the GRUB test board
# (tests/e2e/grub.rs). See README.md.
#
#   tests/grub/mkiso.sh KERNEL INITRD OUT.iso
#
# The image's grub.cfg shows a menu for 30 s on ttyS0 (115200 8N1); its entry would boot
# /boot/vmlinuz and /boot/initrd, but the agent opens GRUB's command line and types the boot.
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }
KERNEL=$1 INITRD=$2 OUT=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/tree
mkdir -p "$tree/boot/grub"
cp "$KERNEL" "$tree/boot/vmlinuz"
cp "$INITRD" "$tree/boot/initrd"
cat >"$tree/boot/grub/grub.cfg" <<'CFG'
serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
terminal_input serial
terminal_output serial
set timeout=30
menuentry 'labwire test board' {
    linux /boot/vmlinuz console=ttyS0,115200
    initrd /boot/initrd
}
CFG
grub-mkrescue -o "$OUT.tmp" "$tree" >"$work/mkrescue.log" 2>&1 || { cat "$work/mkrescue.log" >&2; exit 1; }
mv -f "$OUT.tmp" "$OUT"
