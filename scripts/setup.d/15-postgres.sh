#!/usr/bin/env bash
# Set-up for the PostgreSQL tests (the labwire-testpg crate, testpg/): installs Debian's
# postgresql package (PostgreSQL 15 on Debian 12) and nothing else. No system cluster is
# created or started: the tests start a private server of their own on 127.0.0.1, in
# /tmp/labwire-testpg-<uid>/ (`labwire-testpg stop` stops it). Idempotent: skipped when
# PostgreSQL's server programs are already installed.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

installed() {
    dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed" &&
        ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if installed; then
    echo "15-postgres: postgresql is installed ($(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1))"
    exit 0
fi

# Debian's postgresql-NN creates a "main" cluster on first install (and starts it where
# services run) unless create_main_cluster is off; createcluster.conf includes this folder.
# The setting is only for this install: it is removed again afterwards.
conf=/etc/postgresql-common/createcluster.d/labwire-no-main-cluster.conf
echo "15-postgres: installing postgresql (Debian package) without a main cluster ($conf for the install)"
$sudo mkdir -p "$(dirname "$conf")"
echo "create_main_cluster = false" | $sudo tee "$conf" >/dev/null
trap '$sudo rm -f "$conf"' EXIT
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends postgresql
installed || { echo "15-postgres: postgresql installed, but no /usr/lib/postgresql/*/bin/initdb" >&2; exit 1; }
echo "15-postgres: done ($(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1))"
