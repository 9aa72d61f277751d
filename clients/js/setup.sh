#!/usr/bin/env bash
# Installs what `npm test` needs, idempotently:
#   - Debian's Chromium at /usr/bin/chromium for the browser test, only when missing
#     (playwright-core never downloads a browser here);
#   - the dev dependencies from package-lock.json (`npm ci`: playwright-core,
#     typescript), only when node_modules is missing or the lock changed.
#
#   clients/js/setup.sh && (cd clients/js && npm test)
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium
fi

# npm ci empties node_modules first, so the stamp is written only after a full install.
stamp=node_modules/.package-lock.sha256
lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock" ]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
    echo "$lock" >"$stamp"
fi
