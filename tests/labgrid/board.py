#!/usr/bin/env python3
"""A board for the Labgrid tests: a serial console on a pty and a power switch.

    board.py RUNDIR                 a scripted board
    board.py RUNDIR --qemu BOARD    the QEMU test board of tests/board/ (built in BOARD)

The board's serial port is the slave side of a pty (RUNDIR/tty names it: a /dev/pts path,
as Labgrid's exporter wants a /dev path for a RawSerialPort). Its power switch is an HTTP
server on 127.0.0.1 (port in RUNDIR/power.port) in the shape of Labgrid's `simplerest`
power model: GET /power/INDEX/1 switches on, /power/INDEX/0 off, /power/INDEX reads the
state ("1" or "0"). Every switch is appended to RUNDIR/power.log.

Scripted: powered on, the board prints a kernel boot log, then a login prompt;
root/labwire logs in to a real shell (/bin/sh on its own pty, so it echoes like a board's
console). Powered off, it is silent and ignores input.

QEMU: the pty is the board's USB-serial adapter, there whether the board is on or not.
Power on starts QEMU with tests/board/run-qemu.sh (the kernel and ramdisk a job staged in
RUNDIR/deploy/, as a TFTP folder, else BOARD's own) and relays between the adapter's pty
and QEMU's console; power off stops it with stop-qemu.sh.
"""

import http.server
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import tty

RUNDIR = sys.argv[1]
QEMU_BOARD = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--qemu" else None
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "board")
QEMU_RUN = os.path.join(RUNDIR, "qemu")
USER, PASSWORD = "root", "labwire"
PROMPT = "root@labwire-board:~# "

master, slave = os.openpty()
tty.setraw(slave)
slave_path = os.ttyname(slave)

lock = threading.Lock()
state = {"on": False, "gen": 0, "phase": "off", "line": b"", "user": None, "shell": None, "qemu": None}


def log(what):
    with open(os.path.join(RUNDIR, "power.log"), "a") as f:
        f.write(f"{time.time():.3f} {what}\n")


def out(data):
    if isinstance(data, str):
        data = data.encode()
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    try:
        os.write(master, data)
    except OSError:
        pass


def stop_shell():
    sh = state["shell"]
    state["shell"] = None
    if sh is not None:
        proc, fd = sh
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass
        proc.wait()


def boot(gen):
    lines = [
        "Booting the scripted board",
        "Linux version 6.1.0-labwire (labwire@scripted) #1 SMP",
        "Command line: console=ttyS0,115200",
        "Run /init as init process",
        "",
        "Welcome to the labwire scripted board",
    ]
    for line in lines:
        time.sleep(0.05)
        with lock:
            if state["gen"] != gen:
                return
            out(line + "\n")
    with lock:
        if state["gen"] == gen:
            state["phase"] = "login"
            out("labwire-board login: ")


def qemu_env():
    return dict(os.environ, LABWIRE_BOARD_RUNDIR=QEMU_RUN)


def qemu_power(on):
    """Powers the QEMU board: stop what runs, then start it afresh when `on`."""
    with lock:
        fd = state["qemu"]
        state["qemu"] = None
        state["on"] = False
    if fd is not None:
        os.close(fd)
    subprocess.run([os.path.join(SCRIPTS, "stop-qemu.sh"), QEMU_BOARD], env=qemu_env(), check=False)
    if on:
        deploy = os.path.join(RUNDIR, "deploy")
        cmd = [os.path.join(SCRIPTS, "run-qemu.sh")]
        for flag, name in (("--kernel", "kernel"), ("--initrd", "ramdisk")):
            if os.path.exists(os.path.join(deploy, name)):
                cmd += [flag, os.path.join(deploy, name)]
        os.makedirs(QEMU_RUN, exist_ok=True)
        r = subprocess.run(cmd + [QEMU_BOARD], env=qemu_env(), capture_output=True, text=True)
        if r.returncode != 0:
            log(f"qemu failed: {r.stderr.strip()}")
            raise RuntimeError(r.stderr)
        fd = os.open(r.stdout.strip(), os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        with lock:
            state["qemu"] = fd
            state["on"] = True
    log("on" if on else "off")


def power(on):
    if QEMU_BOARD is not None:
        qemu_power(on)
        return
    with lock:
        state["gen"] += 1
        gen = state["gen"]
        stop_shell()
        state["on"] = on
        state["line"] = b""
        state["phase"] = "boot" if on else "off"
    log("on" if on else "off")
    if on:
        threading.Thread(target=boot, args=(gen,), daemon=True).start()


def start_shell():
    pid_master, pid_slave = pty.openpty()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TERM": "dumb", "PS1": PROMPT, "ENV": ""}
    proc = subprocess.Popen(
        ["/bin/sh", "-i"],
        stdin=pid_slave,
        stdout=pid_slave,
        stderr=pid_slave,
        env=env,
        cwd="/tmp",
        start_new_session=True,
    )
    os.close(pid_slave)
    state["shell"] = (proc, pid_master)


def typed(data):
    """Input from the console (ser2net) while powered on."""
    if state["qemu"] is not None:
        os.write(state["qemu"], data)
        return
    if state["phase"] == "shell" and state["shell"] is not None:
        os.write(state["shell"][1], data)
        return
    if state["phase"] not in ("login", "password"):
        return
    for b in data:
        c = bytes([b])
        if c in (b"\r", b"\n"):
            line = state["line"].decode(errors="replace")
            state["line"] = b""
            if state["phase"] == "login":
                out("\n")
                if not line:
                    out("labwire-board login: ")
                    continue
                state["user"] = line
                state["phase"] = "password"
                out("Password: ")
            else:
                out("\n")
                if state["user"] == USER and line == PASSWORD:
                    state["phase"] = "shell"
                    start_shell()
                else:
                    time.sleep(0.2)
                    out("Login incorrect\nlabwire-board login: ")
                    state["phase"] = "login"
        else:
            state["line"] += c
            if state["phase"] == "login":
                out(c)


class Power(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "power" and parts[2] in ("0", "1"):
            try:
                power(parts[2] == "1")
            except Exception as e:  # noqa: BLE001 - the switch reports any failure
                self.send_error(500, str(e)[:200])
                return
            body = parts[2]
        elif len(parts) == 2 and parts[0] == "power":
            body = "1" if state["on"] else "0"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Power)
threading.Thread(target=server.serve_forever, daemon=True).start()

tmp = os.path.join(RUNDIR, "tty.tmp")
with open(tmp, "w") as f:
    f.write(slave_path)
os.rename(tmp, os.path.join(RUNDIR, "tty"))
tmp = os.path.join(RUNDIR, "power.port.tmp")
with open(tmp, "w") as f:
    f.write(str(server.server_address[1]))
os.rename(tmp, os.path.join(RUNDIR, "power.port"))

signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
try:
    while True:
        fds = [master]
        with lock:
            sh = state["shell"]
            qfd = state["qemu"]
        if sh is not None:
            fds.append(sh[1])
        if qfd is not None:
            fds.append(qfd)
        try:
            r, _, _ = select.select(fds, [], [], 0.2)
        except (OSError, ValueError):
            continue  # a descriptor was closed by a power switch meanwhile
        if master in r:
            try:
                data = os.read(master, 4096)
            except OSError:
                data = b""
            with lock:
                if state["on"] and data:
                    typed(data)
        if sh is not None and sh[1] in r:
            try:
                data = os.read(sh[1], 4096)
            except OSError:
                data = b""
            with lock:
                if state["shell"] is sh:
                    if data:
                        os.write(master, data)
                    else:
                        # The shell exited: back to the login prompt, as getty would.
                        stop_shell()
                        state["phase"] = "login"
                        out("\nlabwire-board login: ")
        if qfd is not None and qfd in r:
            try:
                data = os.read(qfd, 4096)
            except OSError:
                data = b""
            with lock:
                if state["qemu"] == qfd:
                    if data:
                        os.write(master, data)
                    else:
                        # QEMU exited by itself (a panic with -no-reboot): the board is dead.
                        os.close(qfd)
                        state["qemu"] = None
finally:
    with lock:
        stop_shell()
    if QEMU_BOARD is not None:
        subprocess.run([os.path.join(SCRIPTS, "stop-qemu.sh"), QEMU_BOARD], env=qemu_env(), check=False)
