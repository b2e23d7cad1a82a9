#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it.
#
# It installs the system packages the tests need when they are missing, builds
# every binary of the workspace (the whole-system tests start them as real
# processes), then runs every test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs Debian packages whose command is missing: need COMMAND PACKAGE...
need() {
    local command=$1
    shift
    if ! command -v "$command" >/dev/null 2>&1; then
        if [ -z "${apt_updated:-}" ]; then
            apt-get update -qq
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
    fi
}

# The browser test drives Debian's Chromium through its WebDriver.
need chromium chromium
need chromedriver chromium-driver

cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast
