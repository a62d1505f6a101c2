#!/usr/bin/env bash
# Install the system programs some tests need (Debian/Ubuntu): redis-server for the Redis session store, chromium
# and chromium-driver for the web-page tests. Idempotent and quick when everything is present. Never fails the
# build: without root (or without apt-get), or when apt-get fails (no network), it prints what to install and exits
# 0, and those tests skip with a reason. Set RXNN_REQUIRE_SYSTEM_DEPS=1 (in CI, say) to make a failed install fatal.
set -euo pipefail

# program on PATH (or in /usr/sbin, /usr/lib/chromium) -> Debian package that provides it
declare -A NEEDED=(
    [redis-server]=redis-server
    [chromium]=chromium
    [chromedriver]=chromium-driver
)

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ] || [ -x "/usr/lib/chromium/$1" ]
}

missing=()
for prog in redis-server chromium chromedriver; do
    have "$prog" || missing+=("${NEEDED[$prog]}")
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-system-deps: missing system packages: ${missing[*]}" >&2
    echo "ensure-system-deps: install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "ensure-system-deps: continuing; the tests that need them will be skipped." >&2
    exit 0
fi

echo "ensure-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    exit 0
fi
echo "ensure-system-deps: could not install ${missing[*]}; the tests that need them will be skipped." >&2
if [ "${RXNN_REQUIRE_SYSTEM_DEPS:-0}" = "1" ]; then
    exit 1
fi
exit 0
