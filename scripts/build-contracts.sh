#!/usr/bin/env bash
# Compiles contracts/src/*.sol with solc-js (npm) into contracts/build/*.json, which the
# Rust crates embed. Needed only after changing a contract: the output is committed.
set -euo pipefail
cd "$(dirname "$0")/../contracts"
command -v npm >/dev/null || { echo "build-contracts: needs node and npm (apt-get install nodejs npm)" >&2; exit 1; }
[ -d node_modules/solc ] || npm install --no-audit --no-fund
node build.js
