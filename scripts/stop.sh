#!/usr/bin/env bash
# Stops the cluster scripts/run.sh started.
cd "$(dirname "$0")/.."
[ -f data/pids ] || exit 0
while read -r pid; do kill "$pid" 2>/dev/null || true; done <data/pids
rm -f data/pids
echo "stopped"
