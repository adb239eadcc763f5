#!/usr/bin/env bash
# The main job: sets up the machine, builds Castwork, starts a cluster (an orchestrator, two
# workers and the playback server), pushes a video (the file you name, or a generated sample)
# and waits until every rendition is done, then prints the playback URL and the output path.
#   scripts/run.sh [VIDEO_FILE]
# The cluster keeps running afterwards; stop it with scripts/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bins
bin=target/release
export STORAGE_URL="${STORAGE_URL:-file://$PWD/data}"
mkdir -p data/logs
bash scripts/stop.sh >/dev/null 2>&1 || true

start() { # name logfile args...
  local name=$1 log=$2; shift 2
  nohup "$bin/$name" "$@" >"data/logs/$log.log" 2>&1 &
  echo $! >>data/pids
}
start orchestrator orchestrator
start worker worker-1 --worker-id worker-1
start worker worker-2 --worker-id worker-2
start broadcaster broadcaster serve
for _ in $(seq 1 60); do
  curl -fs http://127.0.0.1:7935/healthz >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs http://127.0.0.1:7935/healthz >/dev/null || { echo "orchestrator did not start: see data/logs/orchestrator.log" >&2; exit 1; }
echo "cluster up: orchestrator http://127.0.0.1:7935, 2 workers, playback http://127.0.0.1:8935 (logs in data/logs)"

input="${1:-}"
if [ -z "$input" ]; then
  input=data/sample.mp4
  if [ ! -f "$input" ]; then
    echo "no file given: generating a 10 s 720p30 sample with audio at $input"
    ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \
      -t 10 -c:v libx264 -g 60 -pix_fmt yuv420p -c:a aac "$input"
  fi
fi
name="$(basename "${input%.*}" | tr -c 'A-Za-z0-9_\n-' '-')-$(date +%s)"
"$bin/broadcaster" push "$input" --stream "$name" --wait
echo "status: http://127.0.0.1:7935/streams/$name"
echo "the cluster is still running; stop it with scripts/stop.sh"
