#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it.
#
# It installs the system packages, Python and Node modules the tests need when
# they are missing, builds every binary of the workspace (the whole-system tests
# start them as real processes), runs every test of every crate, then the
# benchmark suite's smoke run (`bench --quick`), so that the suite never rots.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs Debian packages, running `apt-get update` once first.
need_package() {
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Installs Debian packages whose command is missing: need COMMAND PACKAGE...
need() {
    local command=$1
    shift
    if ! command -v "$command" >/dev/null 2>&1; then
        need_package "$@"
    fi
}

# The browser test drives Debian's Chromium through its WebDriver.
need chromium chromium
need chromedriver chromium-driver
# The registry suite also runs on a real etcd; registryd's etcd store needs
# protoc (and the well-known types) to build its client.
need etcd etcd-server
need etcdctl etcd-client
need protoc protobuf-compiler
# The benchmark suite checks its own load generator against wrk.
need wrk wrk
if [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
    need_package libprotobuf-dev
fi
# The registry suite lists the daemons' services with Python's stock gRPC
# reflection client (tests/python/list_services.py).
if ! python3 -c 'import grpc, grpc_reflection' 2>/dev/null; then
    python3 -m pip install --quiet --root-user-action=ignore grpcio grpcio-reflection
fi
# The xDS suite also calls through Node.js's stock gRPC (tests/node: grpc-js
# with grpc-js-xds, pinned in its package-lock.json); the modules are installed
# again when the lock file is newer than what npm last installed. None of them
# needs an install script.
need node nodejs
need npm npm
if [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
    (cd tests/node && npm ci --no-audit --no-fund --ignore-scripts)
fi

features=(--features registryd/etcd --features registryd/xds)
cargo build --workspace --bins --locked "${features[@]}"
tests_status=0
cargo test --workspace --locked --no-fail-fast "${features[@]}" || tests_status=$?

# The benchmark suite's smoke run (under 2 minutes on 2 cores, once built); it
# builds the binaries it starts in release mode, and writes its report to
# target/bench-report/.
cargo run --release --locked -p bench -- --quick
exit "$tests_status"
