#!/usr/bin/env bash
# The docs site's front page as docs/screenshot.png, with Debian's headless Chromium
# (`make docs-screenshot`; installs the `chromium` package when missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends chromium >/dev/null
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# No background networking: the machine has no route out, and the page needs none.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1280,900 \
    --screenshot=docs/screenshot.png "file://$PWD/site/index.html" 2>/dev/null
