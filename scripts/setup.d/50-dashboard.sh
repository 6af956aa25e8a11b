#!/usr/bin/env bash
# Set-up for the dashboard's browser test (tests/e2e/dashboard.rs): Debian's headless Chromium and
# Node.js, and the `playwright-core` npm package (the driver only; it downloads no browser).
# Idempotent: skips what is there already.
#   chromium:        /usr/bin/chromium
#   playwright-core: ~/.cache/labwire/dashboard-node/node_modules   (override with LABWIRE_DASHBOARD_NODE)
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

dir="${LABWIRE_DASHBOARD_NODE:-$HOME/.cache/labwire/dashboard-node}"
if [ -f "$dir/node_modules/playwright-core/package.json" ]; then
    echo "playwright-core present: $dir"
    exit 0
fi
echo "installing playwright-core into $dir"
mkdir -p "$dir"
cd "$dir"
[ -f package.json ] || echo '{"name": "labwire-dashboard-test", "private": true}' > package.json
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent playwright-core@1
node -e 'console.log("playwright-core", require("playwright-core/package.json").version)'
