#!/usr/bin/env bash
# End-to-end on-demand benchmark: `broadcaster push --wait` of a whole clip through a running
# cluster (an orchestrator and WORKERS worker processes, release build) against the ffmpeg
# CLI transcoding the same ladder from the same file in one process (one decode, `split`).
# Runs alternate A B A B ...; prints each time and the median ratio.
#   scripts/bench-e2e.sh [CLIP] [RUNS] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release --bins -q
bin=$PWD/target/release
work=$(mktemp -d)
vhost="castwork-bench-$$"
clip="${1:-}"
runs="${2:-5}"
workers="${3:-2}"
if [ -z "$clip" ]; then
  clip=$work/clip.mp4
  ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \
    -t 10 -c:v libx264 -g 60 -pix_fmt yuv420p -c:a aac "$clip"
fi
# shellcheck source=scripts/bench-cluster.sh
source scripts/bench-cluster.sh
"$bin/orchestrator" --http-addr 127.0.0.1:0 >"$work/orch.log" 2>&1 & pids+=($!)
for i in $(seq 1 "$workers"); do "$bin/worker" --worker-id "bench-$i" >"$work/w$i.log" 2>&1 & pids+=($!); done
sleep 2

ladder="[0:v]split=3[a][b][c];[a]scale=426:240[a1];[b]scale=640:360[b1];[c]scale=1280:720[c1]"
x264() { echo "-c:v libx264 -preset veryfast -profile:v high -pix_fmt yuv420p -g 60 -sc_threshold 0 -b:v $1 -maxrate $2 -bufsize $3"; }
audio=""
ffprobe -v error -select_streams a -show_entries stream=index -of csv=p=0 "$clip" | grep -q . && audio="-map 0:a:0 -c:a copy"
a_times=(); b_times=()
for r in $(seq 1 "$runs"); do
  t0=$(date +%s.%N)
  "$bin/broadcaster" push "$clip" --stream "bench-$$-$r" --wait >/dev/null 2>"$work/push.log" || { cat "$work/push.log"; exit 1; }
  t1=$(date +%s.%N)
  # shellcheck disable=SC2046
  ffmpeg -v error -y -i "$clip" -filter_complex "$ladder" \
    -map "[a1]" $audio $(x264 600k 720k 1200k) -f mpegts "$work/240.ts" \
    -map "[b1]" $audio $(x264 1200k 1440k 2400k) -f mpegts "$work/360.ts" \
    -map "[c1]" $audio $(x264 4000k 4800k 8000k) -f mpegts "$work/720.ts"
  t2=$(date +%s.%N)
  a=$(awk -v x="$t1" -v y="$t0" 'BEGIN { print x - y }'); b=$(awk -v x="$t2" -v y="$t1" 'BEGIN { print x - y }')
  a_times+=("$a"); b_times+=("$b")
  awk -v r="$r" -v a="$a" -v b="$b" 'BEGIN { printf "run %d: castwork %.2f s, ffmpeg %.2f s, ratio %.2f\n", r, a, b, a / b }'
done
python3 - "${a_times[*]}" "${b_times[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
r = [x / y for x, y in zip(a, b)]
print(f"castwork push --wait: median {statistics.median(a):.2f} s (min {min(a):.2f}, max {max(a):.2f})")
print(f"ffmpeg CLI split:     median {statistics.median(b):.2f} s (min {min(b):.2f}, max {max(b):.2f})")
print(f"ratio castwork/ffmpeg: median {statistics.median(r):.2f} (min {min(r):.2f}, max {max(r):.2f})")
PY
