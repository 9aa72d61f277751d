#!/usr/bin/env bash
# Installs what the browser test needs, idempotently:
#   - Debian's Chromium at /usr/bin/chromium (Playwright never downloads a browser here),
#     only when it is missing;
#   - playwright-core from package-lock.json (`npm ci`), only when node_modules is
#     missing or the lock changed since the last install.
#
#   tests/browser/setup.sh && SWITCHBOARD_CHAT=target/release/examples/chat node --test tests/browser/
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    # fonts-dejavu-core: without any font the screenshots show boxes.
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi

# npm ci empties node_modules first, so the stamp is written only after a full install.
stamp=node_modules/.package-lock.sha256
lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock" ]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
    echo "$lock" >"$stamp"
fi
