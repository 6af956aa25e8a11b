#!/usr/bin/env bash
# Sets up what tests/e2e/kernelci.rs needs: KernelCI's own command-line client, kci-dev
# (0.1.12, from PyPI), in a virtual environment at ~/.cache/labwire/kci-dev-venv. The test
# points it at a labwire coordinator and reads nodes with it, as a KernelCI user would.
# Idempotent: skips what is already there, prints what it does.
set -euo pipefail

venv="${LABWIRE_KCI_DEV_VENV:-$HOME/.cache/labwire/kci-dev-venv}"
want="0.1.12"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed"; then
    echo "kci-dev set-up: installing python3-venv"
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends python3-venv
fi

have=""
if [ -x "$venv/bin/kci-dev" ]; then
    have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kci-dev"))' 2>/dev/null || true)"
fi
if [ "$have" = "$want" ]; then
    echo "kci-dev set-up: kci-dev $have already in $venv"
else
    echo "kci-dev set-up: installing kci-dev $want into $venv (found: ${have:-none})"
    mkdir -p "$(dirname "$venv")"
    # A system Python, not a pyenv shim: the venv must not depend on the caller's PATH.
    py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "kci-dev==$want"
fi
[ -x "$venv/bin/kci-dev" ] || { echo "kci-dev set-up: $venv/bin/kci-dev is missing" >&2; exit 1; }
echo "kci-dev set-up: ready ($("$venv/bin/kci-dev" --version 2>/dev/null || echo "kci-dev $want") in $venv)"
