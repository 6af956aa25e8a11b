#!/usr/bin/env bash
# Runs every test of labwire on a fresh machine: installs the system packages the tests need
# (Debian, idempotent), then checks formatting and lints, then runs the whole test suite, and
# the coordinator's behaviour tests a second time on PostgreSQL.
# This is the README's test command, and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# dpkg-dev and jq: scripts/package.sh, which tests/e2e/packages.rs runs.
packages=(qemu-system-x86 busybox-static cpio socat systemd dpkg-dev jq)
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
# The PostgreSQL tests share one private server (labwire-testpg, under /tmp); stop it when
# the run ends, whatever happens.
trap 'cargo run -q -p labwire-testpg -- stop >/dev/null 2>&1 || true' EXIT

# The coordinator's behaviour tests run twice: on SQLite (the default), then on PostgreSQL
# (LABWIRE_TEST_STORE=postgres: each test gets a fresh database on the private server).
# (Modules of the one end-to-end test binary, tests/e2e/.)
pg_tests=(skeleton reliability scheduling http trigger report failover dashboard hostile_queue hostile_net kernelci health liveness lab_report borrow)
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doc tests; run them first.
    cargo test --workspace --doc
    cargo nextest run --workspace --no-fail-fast
    echo "==> the coordinator's tests again, on PostgreSQL"
    modules=""
    for t in "${pg_tests[@]}"; do modules="$modules${modules:+ | }test(/^$t::/)"; done
    filter="package(labwire-coordinator) | (binary(e2e) & ($modules))"
    LABWIRE_TEST_STORE=postgres cargo nextest run --workspace --no-fail-fast -E "$filter"
else
    cargo test --workspace --no-fail-fast
    echo "==> the coordinator's tests again, on PostgreSQL"
    args=()
    for t in "${pg_tests[@]}"; do args+=("$t::"); done
    LABWIRE_TEST_STORE=postgres cargo test --no-fail-fast -p labwire-coordinator --lib
    LABWIRE_TEST_STORE=postgres cargo test --no-fail-fast -p labwire --test e2e -- "${args[@]}"
fi
