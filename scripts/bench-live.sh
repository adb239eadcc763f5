#!/usr/bin/env bash
# Live latency benchmark: `ffmpeg -re` publishes SECS of 640x360 30 fps H.264 + AAC (a
# keyframe every 2 s) over RTMP to a running cluster (an orchestrator, WORKERS worker
# processes and `broadcaster serve`, release build). Prints the orchestrator's figures for
# the stream: from each segment's last byte reaching the broadcaster to all its renditions
# being listed in the live playlists, split into the worker's transcode and the rest.
#   scripts/bench-live.sh [SECS] [WORKERS] [PROFILES]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release --bins -q
bin=$PWD/target/release
secs="${1:-30}"
workers="${2:-2}"
profiles="${3:-P240p30fps16x9,P360p30fps16x9}"
work=$(mktemp -d)
vhost="castwork-bench-$$"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
orch=127.0.0.1:$(port); http=127.0.0.1:$(port); rtmp=127.0.0.1:$(port)
# shellcheck source=scripts/bench-cluster.sh
source scripts/bench-cluster.sh
"$bin/orchestrator" --http-addr "$orch" >"$work/orch.log" 2>&1 & pids+=($!)
for i in $(seq 1 "$workers"); do "$bin/worker" --worker-id "bench-$i" >"$work/w$i.log" 2>&1 & pids+=($!); done
"$bin/broadcaster" serve --http-addr "$http" --rtmp-addr "$rtmp" --live-profiles "$profiles" \
  --live-reconnect-secs 1 >"$work/serve.log" 2>&1 & pids+=($!)
sleep 2
stream="live-bench-$$"
ffmpeg -v error -re -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000 \
  -t "$secs" -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p \
  -c:a aac -b:a 96k -f flv "rtmp://$rtmp/live/$stream"
for _ in $(seq 1 120); do
  state=$(curl -fs "http://$orch/streams/$stream" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' || true)
  [ "$state" = complete ] && break
  sleep 0.5
done
curl -fs "http://$orch/streams/$stream" | python3 -c '
import json, sys
s = json.load(sys.stdin)
seg, l = s["segments"], s["latency"]
print("stream of %d segments, %d skipped; latency over %d segments:" % (seg["total"], seg["skipped"], l["segments"]))
for part in ("total", "transcode", "overhead", "queue_wait"):
    print("  %-10s median %5d ms   p95 %5d ms" % (part, l[part]["median_ms"], l[part]["p95_ms"]))
print("overhead by stage:")
for part, v in l["overhead_stages"].items():
    print("  %-14s median %5d ms   p95 %5d ms" % (part, v["median_ms"], v["p95_ms"]))
'
