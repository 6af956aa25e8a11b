#!/usr/bin/env bash
# Runs every test of labwire on a fresh machine: installs the system packages the tests need
# (Debian, idempotent), then checks formatting and lints, then runs the whole test suite.
# This is the README's test command, and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-system-x86 busybox-static cpio socat systemd)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing system packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Test back ends that need more than a package (a LAVA server, a Labgrid venv, ...) are set
# up by one script each under scripts/setup.d/, run in name order; each is idempotent and
# prints what it does.
for setup in scripts/setup.d/*.sh; do
    [ -e "$setup" ] || continue
    echo "==> $setup"
    bash "$setup"
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doc tests; run them first so that the summary printed last is
    # the one of the whole suite.
    cargo test --workspace --doc
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
