#!/usr/bin/env bash
# Set-up for the LAVA tests (tests/e2e/lava.rs): installs lava-server and PostgreSQL from
# Debian's packages and prepares, once, a PostgreSQL data folder with lava-server's
# database already migrated, in ~/.cache/labwire/lava/pgdata. tests/lava/server.sh copies
# it for each test run and starts its own PostgreSQL, gunicorn and lava-scheduler on
# 127.0.0.1; nothing here starts a service. lava-dispatcher is not needed: the test plays
# the worker itself. Idempotent: what is already there is skipped.
set -euo pipefail

cache="${LABWIRE_CACHE:-$HOME/.cache/labwire}/lava"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
for p in lava-server postgresql gunicorn; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "20-lava: installing ${missing[*]} (Debian packages)"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "20-lava: lava-server, postgresql and gunicorn are installed"
fi

version="$(dpkg-query -W -f='${Version}' lava-server)"
if [ -f "$cache/pgdata/.labwire-ready" ] && [ "$(cat "$cache/pgdata/.labwire-ready")" = "$version" ]; then
    echo "20-lava: migrated database template for lava-server $version is in $cache/pgdata"
    exit 0
fi

echo "20-lava: preparing a migrated lava-server $version database in $cache/pgdata"
rm -rf "$cache/pgdata.new"
mkdir -p "$cache"
bash "$(dirname "$0")/../../tests/lava/server.sh" template "$cache/pgdata.new"
echo "$version" > "$cache/pgdata.new/.labwire-ready"
rm -rf "$cache/pgdata"
mv "$cache/pgdata.new" "$cache/pgdata"
echo "20-lava: done"
