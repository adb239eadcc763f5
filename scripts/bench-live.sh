#!/usr/bin/env bash
# Live benchmark: STREAMS publishers at once, each `ffmpeg -re` sending SECS of 640x360
# 30 fps H.264 (keyframe every 2 s) + AAC over RTMP to a running cluster (an orchestrator,
# WORKERS worker processes and `broadcaster serve`, release build). The publishers copy a
# clip encoded once beforehand, so they cost almost no CPU. Prints, over every segment of
# every stream, the orchestrator's figures: from a segment's last byte reaching the
# broadcaster to all its renditions being listed in the live playlists (total), the
# worker's transcode and the rest (overhead, by stage), and the real-time ratio, total over
# the segment's duration (below 1: the streams keep up; livepeer_bench's bar is 0.8).
#   scripts/bench-live.sh [SECS] [WORKERS] [PROFILES] [STREAMS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release --bins -q
bin=$PWD/target/release
secs="${1:-30}"
workers="${2:-2}"
profiles="${3:-P240p30fps16x9,P360p30fps16x9}"
streams="${4:-1}"
work=$(mktemp -d)
vhost="castwork-bench-$$"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
orch=127.0.0.1:$(port); http=127.0.0.1:$(port); rtmp=127.0.0.1:$(port)
# shellcheck source=scripts/bench-cluster.sh
source scripts/bench-cluster.sh
"$bin/orchestrator" --http-addr "$orch" >"$work/orch.log" 2>&1 & pids+=($!)
for i in $(seq 1 "$workers"); do "$bin/worker" --worker-id "bench-$i" >"$work/w$i.log" 2>&1 & pids+=($!); done
"$bin/broadcaster" serve --http-addr "$http" --rtmp-addr "$rtmp" --open-ingest --live-profiles "$profiles" \
  --live-reconnect-secs 1 >"$work/serve.log" 2>&1 & pids+=($!)
ffmpeg -v error -y -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000 \
  -t "$secs" -c:v libx264 -preset veryfast -g 60 -keyint_min 60 -sc_threshold 0 -pix_fmt yuv420p \
  -c:a aac -b:a 96k "$work/clip.mp4"
sleep 1
names=()
publishers=()
for s in $(seq 1 "$streams"); do
  name="live-bench-$$-$s"; names+=("$name")
  ffmpeg -v error -re -i "$work/clip.mp4" -c copy -f flv "rtmp://$rtmp/live/$name" & publishers+=($!)
done
wait "${publishers[@]}"
for name in "${names[@]}"; do
  for _ in $(seq 1 240); do
    state=$(curl -fs "http://$orch/streams/$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' || true)
    [ "$state" = complete ] && break
    sleep 0.5
  done
done
python3 - "$orch" "${names[@]}" <<'PY'
import json, statistics, sys, urllib.request
orch, names = sys.argv[1], sys.argv[2:]
def redis_segments(name):
    s = json.load(urllib.request.urlopen(f"http://{orch}/streams/{name}"))
    return s
total = skipped = 0
lat = {}
for name in names:
    s = redis_segments(name)
    total += s["segments"]["total"]; skipped += s["segments"]["skipped"]
    l = s["latency"]
    for part in ("total", "transcode", "overhead", "queue_wait"):
        lat.setdefault(part, []).append((l[part]["median_ms"], l[part]["p95_ms"]))
    for part, v in l["overhead_stages"].items():
        lat.setdefault("stage " + part, []).append((v["median_ms"], v["p95_ms"]))
print(f"{len(names)} stream(s), {total} segments, {skipped} skipped")
print("per stream median / p95 (ms), the worst stream shown:")
for part, v in lat.items():
    print("  %-22s median %5d   p95 %5d" % (part, max(m for m, _ in v), max(p for _, p in v)))
worst = max(p for p, _ in [(p, m) for m, p in lat["total"]])
print("real-time ratio (p95 total / 2 s segment): %.2f" % (worst / 2000))
PY
