#!/usr/bin/env bash
# Sets up what tests/e2e/labgrid/ needs: a real Labgrid (version 26, from PyPI) in a virtual
# environment at ~/.cache/labwire/labgrid-venv (coordinator, exporter and client), and
# ser2net, which Labgrid's exporter runs to publish serial ports over TCP (RFC 2217).
# Idempotent: skips what is already there, prints what it does.
set -euo pipefail

venv="${LABWIRE_LABGRID_VENV:-$HOME/.cache/labwire/labgrid-venv}"
want="26"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for p in ser2net python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "labgrid set-up: installing ${missing[*]}"
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

have=""
if [ -x "$venv/bin/labgrid-client" ]; then
    have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("labgrid"))' 2>/dev/null || true)"
fi
case "$have" in
    "$want".*)
        echo "labgrid set-up: labgrid $have already in $venv"
        ;;
    *)
        echo "labgrid set-up: installing labgrid $want.x into $venv (found: ${have:-none})"
        mkdir -p "$(dirname "$venv")"
        # A system Python, not a pyenv shim: the venv must not depend on the caller's PATH.
        py=/usr/bin/python3
        [ -x "$py" ] || py="$(command -v python3)"
        "$py" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q "labgrid==$want.*"
        ;;
esac
for tool in labgrid-coordinator labgrid-exporter labgrid-client; do
    [ -x "$venv/bin/$tool" ] || { echo "labgrid set-up: $venv/bin/$tool is missing" >&2; exit 1; }
done
version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("labgrid"))')"
echo "labgrid set-up: ready (labgrid $version in $venv, $(command -v ser2net || echo /usr/sbin/ser2net))"
