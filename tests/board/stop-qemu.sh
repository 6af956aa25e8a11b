#!/usr/bin/env bash
# Powers off a board started by run-qemu.sh (hard power-off: kills QEMU).
#
#   tests/board/stop-qemu.sh OUTDIR
#
# Uses RUNDIR=${LABWIRE_BOARD_RUNDIR:-OUTDIR/run}/qemu.pid. Sends SIGTERM,
# then SIGKILL after 5 s. Exits 0 when no board is left running, also when
# none was (for example after a panic made QEMU exit by itself).
set -euo pipefail

if [ $# -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
	sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	[ $# -eq 1 ] && exit 0 || exit 2
fi
RUNDIR=${LABWIRE_BOARD_RUNDIR:-$1/run}
PIDFILE=$RUNDIR/qemu.pid

is_qemu() { grep -qa qemu-system "/proc/$1/cmdline" 2>/dev/null; }

if [ -s "$PIDFILE" ]; then
	pid=$(cat "$PIDFILE")
	if is_qemu "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			is_qemu "$pid" || break
			sleep 0.1
		done
		if is_qemu "$pid"; then
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
		fi
	fi
fi
rm -f "$PIDFILE" "$RUNDIR/console"
