#!/usr/bin/python3
"""A scripted serial board for the LAVA tests: what LAVA's dispatcher meets on a board in a
lab that has no LAVA-specific boot method, only power commands and a serial console.

  serial-board.py serve STATE ROOT       run the board until SIGTERM. Its UART is a pseudo-
                                         terminal whose far end is linked at STATE/tty (give
                                         it to ser2net); its power switch listens on
                                         STATE/power.sock. ROOT is its root file system (a
                                         busybox userland, built here when missing).
  serial-board.py power on|off|reset STATE
                                         the board's power switch (LAVA's power_on_command,
                                         power_off_command, hard_reset_command). Fails, as an
                                         unreachable PDU does, while STATE/power-broken exists.

Powered on, the board prints a scripted boot log (a bootloader banner and a kernel's first
lines), then `labwire-serial login: `; user `root`, password `labwire` gives a busybox shell
(prompt `root@labwire-serial:~# `) that runs chrooted into ROOT, in its own mount and PID
namespaces, with the host's network (so it can fetch LAVA's overlay over HTTP). When the
shell exits, a new login prompt comes, as getty would give. Powered off, the board prints
nothing and what is typed is lost. Everything it printed is also appended to
STATE/console.log. Standard library only.
"""

import fcntl
import os
import pty
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
import tty

BOOT_LOG = [
    "",
    "U-Boot 2023.01 (labwire scripted board)",
    "DRAM:  1 GiB",
    "Hit any key to stop autoboot:  0",
    "Starting kernel ...",
    "",
    "[    0.000000] Linux version 6.1.0-labwire-scripted (labwire@scripted) #1 SMP",
    "[    0.000000] Kernel command line: console=ttyS0,115200",
    "[    0.120000] Run /init as init process",
    "labwire-serial: init started",
]
LOGIN_PROMPT = b"\r\nlabwire-serial login: "
USER, PASSWORD = b"root", b"labwire"
PROFILE = """export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=vt100
PS1='root@labwire-serial:\\w# '
export PS1
cd /root
"""


def build_root(root):
    """A busybox userland in ROOT (once): busybox-static, one link per applet, the test
    programs of tests/board/rootfs/usr/bin, /etc/profile."""
    if os.path.exists(os.path.join(root, ".ready")):
        return
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "dev", "sys", "var"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2("/bin/busybox", os.path.join(root, "bin/busybox"))
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        link = os.path.join(root, "bin", name)
        if name != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    tools = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../board/rootfs/usr/bin")
    for name in os.listdir(tools):
        shutil.copy2(os.path.join(tools, name), os.path.join(root, "usr/bin", name))
    with open(os.path.join(root, "etc/profile"), "w") as f:
        f.write(PROFILE)
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(root, ".ready"), "w") as f:
        f.write("ok\n")


def shell_command(root):
    """The board's login shell: chrooted into ROOT, in new mount and PID namespaces (a user
    namespace too when not root), with the host's /dev bound in and a fresh /proc."""
    ns = ["unshare", "--mount", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        ns += ["--user", "--map-root-user"]
    inner = 'mount -t proc proc /proc; exec /bin/sh -l'
    outer = 'mount --rbind /dev "$0/dev" && exec chroot "$0" /bin/sh -c "$1"'
    return ns + ["/bin/sh", "-c", outer, root, inner]


class Board:
    def __init__(self, state, root):
        self.state, self.root = state, root
        self.sel = selectors.DefaultSelector()
        # The UART: the board holds the master; the far end is what ser2net opens. The board
        # keeps the far end open too, so the line exists while nobody is connected.
        self.uart, self.far = pty.openpty()
        tty.setraw(self.far)
        attrs = termios.tcgetattr(self.far)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self.far, termios.TCSANOW, attrs)
        link = os.path.join(state, "tty")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.ttyname(self.far), link)
        self.log = open(os.path.join(state, "console.log"), "ab", buffering=0)
        self.power_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.path.join(state, "power.sock")
        if os.path.exists(path):
            os.unlink(path)
        self.power_sock.bind(path)
        self.power_sock.listen(4)
        self.sel.register(self.uart, selectors.EVENT_READ, "uart")
        self.sel.register(self.power_sock, selectors.EVENT_READ, "power")
        self.on = False
        self.pending = []  # (time, bytes) of the boot log still to print
        self.mode = "off"  # off, boot, login, password, shell
        self.line = b""
        self.user = b""
        self.shell = None  # (process, master fd)

    def out(self, data):
        self.log.write(data)
        try:
            os.write(self.uart, data)
        except OSError:
            pass

    def power(self, what):
        if what in ("off", "reset"):
            self.stop_shell()
            self.on, self.mode, self.pending = False, "off", []
        if what in ("on", "reset") and not self.on:
            self.on, self.mode = True, "boot"
            now = time.monotonic()
            self.pending = [(now + 0.05 * i, (l + "\r\n").encode()) for i, l in enumerate(BOOT_LOG)]
            self.pending.append((now + 0.05 * len(BOOT_LOG), LOGIN_PROMPT))

    def start_shell(self):
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            shell_command(self.root),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            # The shell's terminal becomes its controlling one: job control, Ctrl-C.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "vt100"},
        )
        os.close(slave)
        self.shell = (proc, master)
        self.sel.register(master, selectors.EVENT_READ, "shell")
        self.mode = "shell"

    def stop_shell(self):
        if self.shell is None:
            return
        proc, master = self.shell
        self.shell = None
        self.sel.unregister(master)
        os.close(master)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def typed(self, data):
        if self.mode == "shell":
            os.write(self.shell[1], data)
            return
        if self.mode not in ("login", "password"):
            return  # powered off or still booting: lost, as on a real line
        for b in data:
            c = bytes([b])
            if c in (b"\r", b"\n"):
                if not self.line and c == b"\n":
                    continue
                self.out(b"\r\n")
                line, self.line = self.line, b""
                if self.mode == "login":
                    self.user = line
                    self.mode = "password"
                    self.out(b"Password: ")
                elif self.user == USER and line == PASSWORD:
                    self.out(b"labwire-serial: root login on 'ttyS0'\r\n")
                    self.start_shell()
                    return
                else:
                    self.out(b"Login incorrect" + LOGIN_PROMPT)
                    self.mode = "login"
            else:
                self.line += c
                if self.mode == "login":
                    self.out(c)

    def run(self):
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop:
            timeout = 0.2
            if self.pending:
                timeout = max(0.0, min(timeout, self.pending[0][0] - time.monotonic()))
            for key, _ in self.sel.select(timeout):
                if key.data == "uart":
                    try:
                        data = os.read(self.uart, 4096)
                    except OSError:
                        data = b""
                    if data:
                        self.typed(data)
                elif key.data == "power":
                    conn, _ = self.power_sock.accept()
                    with conn:
                        what = conn.recv(64).decode().strip()
                        if what in ("on", "off", "reset"):
                            self.power(what)
                            conn.sendall(b"ok\n")
                        else:
                            conn.sendall(b"unknown command\n")
                elif key.data == "shell":
                    try:
                        data = os.read(self.shell[1], 4096)
                    except OSError:
                        data = b""
                    if data:
                        self.out(data)
                    else:
                        # The shell ended (exit): a fresh login, as getty respawns.
                        self.stop_shell()
                        self.mode = "login"
                        self.out(LOGIN_PROMPT)
            now = time.monotonic()
            while self.pending and self.pending[0][0] <= now:
                self.out(self.pending.pop(0)[1])
                if not self.pending:
                    self.mode = "login"
        self.stop_shell()


def power(state, what):
    if os.path.exists(os.path.join(state, "power-broken")):
        print(f"serial-board: power {what}: the power switch does not answer", file=sys.stderr)
        return 1
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(os.path.join(state, "power.sock"))
        s.sendall(what.encode() + b"\n")
        answer = s.recv(64).decode().strip()
    except OSError as e:
        print(f"serial-board: power {what}: {e}", file=sys.stderr)
        return 1
    if answer != "ok":
        print(f"serial-board: power {what}: {answer}", file=sys.stderr)
        return 1
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "serve":
        os.makedirs(argv[2], exist_ok=True)
        build_root(argv[3])
        Board(argv[2], argv[3]).run()
        return 0
    if len(argv) == 4 and argv[1] == "power" and argv[2] in ("on", "off", "reset"):
        return power(argv[3], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
