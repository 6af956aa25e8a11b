#!/usr/bin/env bash
# Set-up for the pipeline tests (tests/kcidb.rs, tests/e2e/trigger.rs): git for the trigger's
# bare repositories, and a Python virtual environment with the `kcidb-io` package that the
# KCIDB export is validated against. Idempotent: skips what is there already.
#   venv: ~/.cache/labwire/kcidb-venv   (override with LABWIRE_KCIDB_VENV)
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

venv="${LABWIRE_KCIDB_VENV:-$HOME/.cache/labwire/kcidb-venv}"
if "$venv/bin/python" -c 'import kcidb_io' >/dev/null 2>&1; then
    echo "kcidb-io venv present: $venv"
    exit 0
fi
echo "creating the kcidb-io venv in $venv"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check kcidb-io
"$venv/bin/python" -c 'import kcidb_io; print("kcidb-io", kcidb_io.schema.LATEST.major, kcidb_io.schema.LATEST.minor)'
