#!/usr/bin/env bash
# Powers on the labwire test board: starts QEMU in the background with the
# board's serial port (ttyS0) on a fresh pseudo-terminal. See README.md.
#
#   tests/board/run-qemu.sh [--kernel FILE] [--initrd FILE] OUTDIR [extra kernel args...]
#
# OUTDIR is a board made by build.sh. --kernel/--initrd boot other files than
# OUTDIR's vmlinuz and initramfs.cpio.gz (e.g. a job's downloaded artifacts). Run state goes to
# RUNDIR=${LABWIRE_BOARD_RUNDIR:-OUTDIR/run}:
#   RUNDIR/console      symlink to the pty (/dev/pts/N): open it to talk to ttyS0
#   RUNDIR/qemu.pid     QEMU's pid (QEMU's own -pidfile)
#   RUNDIR/console.log  everything the board wrote to ttyS0, even unread parts
#   RUNDIR/qemu.log     QEMU's own messages from start-up
# Prints the pty path (only that) on stdout and exits 0 once QEMU runs and
# the pty exists; QEMU goes on as a daemon. stop-qemu.sh powers it off.
# Extra args are appended to the kernel command line, e.g. labwire.panic=1.
# LABWIRE_QEMU_ACCEL (default tcg) selects the accelerator, e.g. kvm.
set -euo pipefail

KERNEL="" INITRD=""
while [ $# -gt 0 ]; do
	case "$1" in
	--kernel) KERNEL=$2; shift 2 ;;
	--initrd) INITRD=$2; shift 2 ;;
	*) break ;;
	esac
done
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
	sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	[ $# -ge 1 ] && exit 0 || exit 2
fi
[ -d "$1" ] || { echo "run-qemu.sh: no such board directory: $1" >&2; exit 1; }
OUTDIR=$(cd "$1" && pwd)
shift
for f in vmlinuz initramfs.cpio.gz board.stamp; do
	[ -f "$OUTDIR/$f" ] || { echo "run-qemu.sh: $OUTDIR/$f missing: run tests/board/build.sh $OUTDIR" >&2; exit 1; }
done

RUNDIR=${LABWIRE_BOARD_RUNDIR:-$OUTDIR/run}
mkdir -p "$RUNDIR"
RUNDIR=$(cd "$RUNDIR" && pwd)

PIDFILE=$RUNDIR/qemu.pid
if [ -s "$PIDFILE" ]; then
	pid=$(cat "$PIDFILE")
	if grep -qa qemu-system "/proc/$pid/cmdline" 2>/dev/null; then
		echo "run-qemu.sh: board already running (pid $pid, $PIDFILE); stop it with stop-qemu.sh" >&2
		exit 1
	fi
fi
rm -f "$PIDFILE" "$RUNDIR/console" "$RUNDIR/console.log" "$RUNDIR/qemu.log"

# panic=5: after a kernel panic the kernel waits 5 s and reboots, and
# -no-reboot turns that reboot into QEMU exiting. A later panic=0 in the
# extra args keeps a panicked board hanging instead (it then spins a CPU).
APPEND="console=ttyS0,115200 panic=5${*:+ $*}"

# -daemonize: QEMU forks once the machine is set up; the parent exits only
# after "char device redirected to /dev/pts/N (label c0)" went to stderr.
if ! qemu-system-x86_64 \
	-name labwire-board \
	-nodefaults -no-user-config \
	-machine pc -accel "${LABWIRE_QEMU_ACCEL:-tcg}" -smp 1 -m 256 \
	-display none -monitor none \
	-chardev "pty,id=c0,logfile=$RUNDIR/console.log" \
	-serial chardev:c0 \
	-kernel "${KERNEL:-$OUTDIR/vmlinuz}" \
	-initrd "${INITRD:-$OUTDIR/initramfs.cpio.gz}" \
	-append "$APPEND" \
	-no-reboot \
	-pidfile "$PIDFILE" \
	-daemonize \
	>"$RUNDIR/qemu.log" 2>&1; then
	cat "$RUNDIR/qemu.log" >&2
	echo "run-qemu.sh: QEMU failed to start" >&2
	exit 1
fi

PTY=$(sed -n 's/^char device redirected to \(\/dev\/[^ ]*\) (label c0).*/\1/p' "$RUNDIR/qemu.log" | head -n1)
if [ -z "$PTY" ] || [ ! -c "$PTY" ]; then
	cat "$RUNDIR/qemu.log" >&2
	echo "run-qemu.sh: could not find QEMU's pty" >&2
	exit 1
fi
ln -sfn "$PTY" "$RUNDIR/console"
echo "$PTY"
