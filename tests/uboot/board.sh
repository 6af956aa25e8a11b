#!/usr/bin/env bash
# The U-Boot test board's power and serial cable (tests/e2e/uboot.rs). See README.md.
#
#   tests/uboot/board.sh cable RUNDIR          start the board's serial cable (once)
#   tests/uboot/board.sh on RUNDIR TFTPROOT    power on: QEMU aarch64 virt runs U-Boot
#   tests/uboot/board.sh off RUNDIR            power off: QEMU is killed
#   tests/uboot/board.sh on-pc RUNDIR ISO      power on the GRUB board instead: an x86_64 PC
#                                              that boots ISO (tests/grub/mkiso.sh), UART on
#                                              the same cable
#
# The cable stands for a USB-serial adapter: RUNDIR/ttyBOARD is a pty that exists while the
# board is off (ser2net exports it), relayed by socat to RUNDIR/uart.sock, where the board's
# UART (QEMU's PL011 on a socket chardev) connects at power-on. Each power cycle gets a fresh
# pty at the same path. The board's network is QEMU's user network; its built-in TFTP server
# (10.0.2.2) serves TFTPROOT. The board is OUTDIR=${LABWIRE_UBOOT_BOARD_DIR:-$HOME/.cache/labwire/uboot-board}
# made by build.sh. pdudaemon's localcmdline driver runs `on` and `off`.
set -euo pipefail

OUTDIR=${LABWIRE_UBOOT_BOARD_DIR:-$HOME/.cache/labwire/uboot-board}
[ $# -ge 2 ] || { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }
what=$1
RUNDIR=$2
mkdir -p "$RUNDIR"

is_pid() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "$what" in
cable)
    is_pid "$RUNDIR/cable.pid" && exit 0
    # One socat per power cycle: it ends when the board's UART disconnects.
    setsid bash -c '
        echo $$ >"$1/cable.pid"
        while :; do
            rm -f "$1/uart.sock"
            socat "PTY,link=$1/ttyBOARD,rawer" "UNIX-LISTEN:$1/uart.sock" || sleep 0.2
        done' cable "$RUNDIR" </dev/null >>"$RUNDIR/cable.log" 2>&1 &
    for _ in $(seq 100); do
        [ -S "$RUNDIR/uart.sock" ] && [ -e "$RUNDIR/ttyBOARD" ] && exit 0
        sleep 0.05
    done
    echo "board.sh: the serial cable did not come up" >&2
    exit 1
    ;;
on)
    TFTPROOT=${3:?board.sh on RUNDIR TFTPROOT}
    [ -f "$OUTDIR/board.stamp" ] || { echo "board.sh: no board in $OUTDIR: run tests/uboot/build.sh" >&2; exit 1; }
    if is_pid "$RUNDIR/qemu.pid"; then
        echo "board.sh: already on" >&2
        exit 0
    fi
    for _ in $(seq 100); do
        [ -S "$RUNDIR/uart.sock" ] && break
        sleep 0.05
    done
    setsid qemu-system-aarch64 -name labwire-uboot-board -nodefaults -no-user-config \
        -machine virt -cpu cortex-a57 -m 512 -smp 1 -accel tcg \
        -display none -monitor none \
        -bios "$OUTDIR/u-boot.bin" \
        -chardev "socket,id=c0,path=$RUNDIR/uart.sock" -serial chardev:c0 \
        -netdev "user,id=n0,tftp=$TFTPROOT" -device virtio-net-pci,netdev=n0,romfile= \
        -no-reboot -pidfile "$RUNDIR/qemu.pid" \
        </dev/null >"$RUNDIR/qemu.log" 2>&1 &
    ;;
on-pc)
    ISO=${3:?board.sh on-pc RUNDIR ISO}
    if is_pid "$RUNDIR/qemu.pid"; then
        echo "board.sh: already on" >&2
        exit 0
    fi
    for _ in $(seq 100); do
        [ -S "$RUNDIR/uart.sock" ] && break
        sleep 0.05
    done
    setsid qemu-system-x86_64 -name labwire-grub-board -nodefaults -no-user-config \
        -machine pc -accel tcg -m 256 -smp 1 \
        -display none -monitor none \
        -chardev "socket,id=c0,path=$RUNDIR/uart.sock" -serial chardev:c0 \
        -drive "file=$ISO,media=cdrom,readonly=on" -boot d \
        -no-reboot -pidfile "$RUNDIR/qemu.pid" \
        </dev/null >"$RUNDIR/qemu.log" 2>&1 &
    ;;
off)
    if is_pid "$RUNDIR/qemu.pid"; then
        pid=$(cat "$RUNDIR/qemu.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUNDIR/qemu.pid"
    ;;
*)
    echo "board.sh: unknown action $what" >&2
    exit 2
    ;;
esac
