#!/usr/bin/env python3
"""End-to-end check of the labwire test board (stdlib only).

    python3 tests/board/check.py [--verbose] [OUTDIR]

OUTDIR defaults to ${LABWIRE_BOARD_DIR:-~/.cache/labwire/board} and must hold
a board made by build.sh. Boots the board three times, one QEMU at a time,
through run-qemu.sh, talking to ttyS0 over the pty like an agent would:

  1. default boot: login prompt, wrong password refused, root/labwire
     accepted, shell prompt, labwire-ktap-demo output and exit status,
     logout gives a fresh login prompt, labwire-panic crashes the kernel and
     QEMU exits by itself (panic=5 + -no-reboot);
  2. labwire.panic=1: "Kernel panic - not syncing: Attempted to kill init!";
  3. labwire.nologin=1: no "login:" within 20 s.

Prints one line per check, the timings, and "N passed, N failed" last.
Exit status 0 only if every check passed. --verbose echoes the serial traffic.
"""

import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import termios
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_QEMU = os.path.join(HERE, "run-qemu.sh")
STOP_QEMU = os.path.join(HERE, "stop-qemu.sh")

LOGIN_PROMPT = b"labwire-board login: "
PASSWORD_PROMPT = b"Password: "
SHELL_PROMPT = b"root@labwire-board:~# "
USER, PASSWORD = "root", "labwire"

KTAP_DEMO = """\
KTAP version 1
1..2
    KTAP version 1
    # Subtest: labwire_demo
    # module: labwire_demo
    1..3
    ok 1 test_a
    # test_b: EXPECTATION FAILED at lib/labwire_demo.c:42
    Expected 1 + 1 == 3, but
        1 + 1 == 2 (0x2)
    not ok 2 test_b
    ok 3 test_c # SKIP needs real hardware
# labwire_demo: pass:1 fail:1 skip:1 total:3
not ok 1 labwire_demo
    # Subtest: labwire_math
    KTAP version 1
    1..2
    ok 1 test_add
    ok 2 test_mul
# labwire_math: pass:2 fail:0 skip:0 total:2
ok 2 labwire_math
# Totals: pass:3 fail:1 skip:1 total:5
"""

VERBOSE = False


class Timeout(Exception):
    pass


class Console:
    """The board's ttyS0, seen through QEMU's pty, in raw mode at 115200."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        attrs = termios.tcgetattr(self.fd)
        attrs[4] = attrs[5] = termios.B115200  # ispeed, ospeed
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        self.buf = b""  # everything read so far
        self.pos = 0  # expect() searches from here
        self.eof = False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _read(self, timeout):
        if self.eof:
            time.sleep(max(0.0, min(timeout, 0.2)))
            return
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: QEMU closed the pty's other side (it exited)
            data = b""
        if not data:
            self.eof = True
            return
        if VERBOSE:
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()
        self.buf += data

    def expect(self, pattern, timeout):
        """Waits for pattern (bytes or compiled regex) after self.pos; returns
        the match and moves self.pos past it."""
        deadline = time.monotonic() + timeout
        while True:
            if isinstance(pattern, bytes):
                i = self.buf.find(pattern, self.pos)
                m = None if i < 0 else re.compile(re.escape(pattern)).match(self.buf, i)
            else:
                m = pattern.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                tail = self.buf[-600:].decode("utf-8", "replace")
                why = "console closed" if self.eof else f"{timeout:.0f} s"
                raise Timeout(f"no {pattern!r} after {why}; last output:\n{tail}")
            self._read(min(left, 0.5))

    def drain(self, seconds):
        """Reads for the given time; returns what arrived."""
        start = len(self.buf)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        return self.buf[start:]

    def send(self, text):
        data = text.encode()
        while data:
            try:
                n = os.write(self.fd, data)
                data = data[n:]
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)


class Board:
    """One power cycle: run-qemu.sh on start, stop-qemu.sh on stop."""

    def __init__(self, outdir, rundir, kernel_args=()):
        self.outdir, self.rundir = outdir, rundir
        self.env = dict(os.environ, LABWIRE_BOARD_RUNDIR=rundir)
        self.t0 = time.monotonic()
        out = subprocess.run(
            [RUN_QEMU, outdir, *kernel_args],
            env=self.env, check=True, stdout=subprocess.PIPE, text=True,
        ).stdout
        self.pty = out.strip()
        self.t_started = time.monotonic() - self.t0
        self.console = Console(self.pty)
        with open(os.path.join(rundir, "qemu.pid")) as f:
            self.pid = int(f.read().strip())

    def elapsed(self):
        return time.monotonic() - self.t0

    def running(self):
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return b"qemu-system" in f.read()
        except OSError:
            return False

    def stop(self):
        self.console.close()
        subprocess.run([STOP_QEMU, self.outdir], env=self.env, check=False)


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def ok(self, cond, what, detail=""):
        if VERBOSE:
            print()
        if cond:
            self.passed += 1
            print(f"PASS {what}")
        else:
            self.failed += 1
            print(f"FAIL {what}{': ' + detail if detail else ''}")
        return cond


def kernel_time(rundir, needle):
    """The [seconds] printk stamp of the first console.log line with needle."""
    try:
        with open(os.path.join(rundir, "console.log"), "rb") as f:
            for line in f:
                if needle in line:
                    m = re.search(rb"\[\s*(\d+\.\d+)\]", line)
                    return float(m.group(1)) if m else None
    except OSError:
        pass
    return None


def login(con, password, timeout=30, enter="\n"):
    con.send(USER + enter)
    con.expect(PASSWORD_PROMPT, timeout)
    con.send(password + enter)


def boot_default(outdir, rundir, checks, timings):
    board = Board(outdir, rundir)
    con = board.console
    try:
        checks.ok(os.path.realpath(os.path.join(rundir, "console")) == board.pty,
                  f"RUNDIR/console points to the pty {board.pty}")
        con.expect(LOGIN_PROMPT, 120)
        timings["power-on to login prompt"] = board.elapsed()
        checks.ok(True, f"login prompt {LOGIN_PROMPT.decode()!r}")

        # Wrong password first: refused, then a new login prompt.
        t = time.monotonic()
        login(con, "not-the-password")
        con.expect(b"Login incorrect", 30)
        con.expect(LOGIN_PROMPT, 30)
        timings["wrong password to next login prompt"] = time.monotonic() - t
        checks.ok(True, "wrong password gives 'Login incorrect' and a new login prompt")

        t = time.monotonic()
        login(con, PASSWORD)
        con.expect(SHELL_PROMPT, 30)
        timings["password to shell prompt"] = time.monotonic() - t
        checks.ok(True, f"root/{PASSWORD} gives the shell prompt {SHELL_PROMPT.decode()!r}")

        cmd = 'labwire-ktap-demo; echo "rc=$?"'
        con.send(cmd + "\n")
        echo = con.expect(re.compile(re.escape(cmd.encode()) + rb"\r?\n"), 10)
        checks.ok(bool(echo), "command line echoed back")
        start = con.pos
        rc = con.expect(re.compile(rb"(?:^|\n)rc=(\d+)\r?\n"), 30)
        output = con.buf[start:rc.start()].replace(b"\r\n", b"\n").decode()
        output = output.strip("\r\n") + "\n"
        checks.ok(output == KTAP_DEMO, "labwire-ktap-demo prints the expected KTAP",
                  f"got:\n{output}")
        checks.ok(rc.group(1) == b"0", "labwire-ktap-demo exits 0", f"rc={rc.group(1)!r}")
        con.expect(SHELL_PROMPT, 10)

        start = con.pos
        con.send('labwire-ktap-pass; echo "rc=$?"\n')
        rc = con.expect(re.compile(rb"\nrc=(\d+)\r?\n"), 10)
        output = con.buf[start:rc.start()]
        checks.ok(rc.group(1) == b"0" and b"not ok" not in output
                  and b"\nok 1 labwire_pass\r\n# Totals: pass:3 fail:0 skip:0 total:3" in output,
                  "labwire-ktap-pass passes and exits 0", repr(output))
        con.expect(SHELL_PROMPT, 10)

        con.send("labwire-hang\n")
        con.expect(b"labwire-hang: sleeping forever", 10)
        quiet = con.drain(2)
        checks.ok(SHELL_PROMPT not in quiet, "labwire-hang does not return")
        con.send("\x03")  # Ctrl-C
        con.expect(SHELL_PROMPT, 10)
        checks.ok(True, "Ctrl-C interrupts labwire-hang and gives the prompt back")

        con.send("exit\n")
        con.expect(LOGIN_PROMPT, 30)
        checks.ok(True, "logout gives a fresh login prompt")

        # This time end lines with CR, as a terminal's Enter key does.
        login(con, PASSWORD, enter="\r")
        con.expect(SHELL_PROMPT, 30)
        con.send("echo $((6 * 7))\r")
        m = con.expect(re.compile(rb"\n(\d+)\r?\n"), 10)
        checks.ok(m.group(1) == b"42", "login and commands ending in CR (Enter key) work")
        con.expect(SHELL_PROMPT, 10)
        t = time.monotonic()
        con.send("labwire-panic\r")
        con.expect(b"Kernel panic - not syncing: sysrq triggered crash", 30)
        timings["labwire-panic to panic message"] = time.monotonic() - t
        checks.ok(True, "labwire-panic prints 'Kernel panic - not syncing: sysrq triggered crash'")
        t = time.monotonic()
        while board.running() and time.monotonic() - t < 30:
            con.drain(0.2)
        timings["panic to QEMU exit (panic=5)"] = time.monotonic() - t
        checks.ok(not board.running(), "QEMU exits by itself after the panic")
    except Timeout as e:
        checks.ok(False, "default boot", str(e))
    finally:
        board.stop()
    k = kernel_time(rundir, b"Run /init as init process")
    if k is not None:
        timings["kernel start to /init (printk clock)"] = k


def boot_panic(outdir, rundir, checks, timings):
    board = Board(outdir, rundir, ["labwire.panic=1"])
    con = board.console
    try:
        con.expect(b"Kernel panic - not syncing: Attempted to kill init!", 120)
        timings["labwire.panic=1: power-on to panic"] = board.elapsed()
        checks.ok(True, "labwire.panic=1 prints 'Kernel panic - not syncing: Attempted to kill init!'")
        checks.ok(LOGIN_PROMPT not in con.buf, "labwire.panic=1 shows no login prompt")
        t = time.monotonic()
        while board.running() and time.monotonic() - t < 30:
            con.drain(0.2)
        checks.ok(not board.running(), "labwire.panic=1: QEMU exits by itself",
                  f"still running after {time.monotonic() - t:.0f} s")
    except Timeout as e:
        checks.ok(False, "labwire.panic=1 boot", str(e))
    finally:
        board.stop()


def boot_nologin(outdir, rundir, checks, timings):
    board = Board(outdir, rundir, ["labwire.nologin=1"])
    con = board.console
    try:
        con.expect(b"labwire-board: labwire.nologin=1", 120)
        timings["labwire.nologin=1: power-on to init banner"] = board.elapsed()
        checks.ok(True, "labwire.nologin=1 boots to init")
        con.drain(max(0.0, 20 - board.elapsed()))
        checks.ok(b"login:" not in con.buf,
                  f"labwire.nologin=1: no 'login:' within {board.elapsed():.0f} s of power-on")
        checks.ok(board.running(), "labwire.nologin=1: board still running")
    except Timeout as e:
        checks.ok(False, "labwire.nologin=1 boot", str(e))
    finally:
        board.stop()


def main(argv):
    global VERBOSE
    args = [a for a in argv if a != "--verbose"]
    VERBOSE = len(args) != len(argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print(__doc__)
        return 2
    outdir = args[0] if args else os.environ.get(
        "LABWIRE_BOARD_DIR", os.path.expanduser("~/.cache/labwire/board"))
    outdir = os.path.abspath(outdir)
    if not os.path.exists(os.path.join(outdir, "board.stamp")):
        print(f"no board in {outdir}: run tests/board/build.sh {outdir}")
        return 2

    checks, timings = Checks(), {}
    rundir = tempfile.mkdtemp(prefix="labwire-board-run.")
    try:
        for step in (boot_default, boot_panic, boot_nologin):
            step(outdir, rundir, checks, timings)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    print("timings:")
    for k, v in timings.items():
        print(f"  {k}: {v:.1f} s")
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
