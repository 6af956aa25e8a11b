#!/usr/bin/env bash
# Set-up for the LAVA tests (tests/e2e/lava.rs): a real lava-dispatcher (LAVA's worker,
# lava-worker and lava-run) that runs the tests' jobs under QEMU and on a scripted serial
# board, next to the lava-server of 20-lava.sh.
#
# lava-dispatcher does not install through apt on this image: its dependency chain asks for
# python3-guestfs, systemd-sysv, the bpfcc tools and kernel headers, which cannot be
# satisfied here, and a forced `dpkg -i --ignore-depends` would leave dpkg broken for every
# later apt install. So this script leaves dpkg alone: it downloads Debian's own
# lava-dispatcher and lava-dispatcher-host packages (`apt-get download`, the version that
# matches lava-server) and unpacks them with `dpkg -x` into a private folder,
# ~/.cache/labwire/lava-dispatcher, installs lava-dispatcher's Python dependencies from apt
# (they install normally), and adds a stand-in for the `guestfs` module (lava-dispatcher
# imports it unconditionally; the tests' ramdisks carry LAVA's overlay, so libguestfs is
# never called). tests/lava/server.sh runs lava-worker from there. Idempotent: a complete
# unpacked copy of the right version is kept; only what is missing is done.
set -euo pipefail

dest="${LABWIRE_CACHE:-$HOME/.cache/labwire}/lava-dispatcher"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_get() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }

deps=(python3-aiohttp python3-configobj python3-jinja2 python3-magic python3-netifaces
    python3-pexpect python3-pyudev python3-requests python3-setproctitle python3-tz
    python3-yaml cpio)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "25-lava-dispatcher: installing lava-dispatcher's dependencies: ${missing[*]}"
    apt_get update -q
    apt_get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "25-lava-dispatcher: lava-dispatcher's Python dependencies are installed"
fi

# The same version as lava-server (their worker protocol must match).
version="$(dpkg-query -W -f='${Version}' lava-server 2>/dev/null || true)"
if [ -z "$version" ]; then
    echo "25-lava-dispatcher: lava-server is not installed: run scripts/setup.d/20-lava.sh first" >&2
    exit 1
fi
if [ -f "$dest/.labwire-ready" ] && [ "$(cat "$dest/.labwire-ready")" = "$version" ]; then
    echo "25-lava-dispatcher: lava-dispatcher $version is unpacked in $dest"
    exit 0
fi

echo "25-lava-dispatcher: unpacking lava-dispatcher $version into $dest (dpkg is not touched)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
download() {
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root \
        "lava-dispatcher=$version" "lava-dispatcher-host=$version")
}
if ! download; then
    apt_get update -q
    download
fi
rm -rf "$dest.new"
mkdir -p "$dest.new/stub"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$dest.new"
done
cat > "$dest.new/stub/guestfs.py" <<'PY'
"""labwire: a stand-in for libguestfs' Python module, which cannot be installed here.
lava-dispatcher imports it unconditionally but calls it only to build a guest disk for the
test overlay; the labwire tests give LAVA a cpio ramdisk with `overlays: {lava: true}`, so
LAVA puts its overlay in the ramdisk and never gets here."""


class GuestFS:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "libguestfs is not installed: give the ramdisk `format: cpio.newc` and "
            "`overlays: {lava: true}` instead of a guest disk"
        )
PY
# Checked before it is put in place: the dispatcher's modules import with the stand-in.
PYTHONPATH="$dest.new/usr/lib/python3/dist-packages:$dest.new/stub" \
    /usr/bin/python3 -c "import lava_dispatcher.job, lava_dispatcher.worker, lava_dispatcher.actions.deploy.apply_overlay"
echo "$version" > "$dest.new/.labwire-ready"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "25-lava-dispatcher: done; lava-worker is $dest/usr/bin/lava-worker"
