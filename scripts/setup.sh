#!/usr/bin/env bash
# Installs what Castwork needs on a Debian machine (FFmpeg libraries, clang, RabbitMQ, Redis),
# starts RabbitMQ and Redis if they are not running and enables RabbitMQ's management
# plugin. Safe to run again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null && SUDO="sudo" || { echo "setup: run as root or install sudo" >&2; exit 1; }
fi

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists libavcodec libavformat libavfilter libavdevice libswscale libswresample libavutil 2>/dev/null \
  || need+=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev libswresample-dev)
command -v clang >/dev/null || need+=(clang libclang-dev)
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3 python3-pip)
command -v unzip >/dev/null || need+=(unzip)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: Rust is missing; install it with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "setup: starting Redis"
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 >/dev/null
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "setup: starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
fi
up=""
for _ in $(seq 1 60); do
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && { up=1; break; }
  sleep 1
done
if [ -z "$up" ]; then
  echo "setup: RabbitMQ (127.0.0.1:5672) or Redis (127.0.0.1:6379) did not come up" >&2
  exit 1
fi

# The management API (:15672) is where the orchestrator reads each queue's unacknowledged
# messages (AMQP only tells the ready ones). Enabling it on a running node needs no restart.
if ! $SUDO rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
  echo "setup: enabling RabbitMQ's management plugin"
  $SUDO rabbitmq-plugins enable rabbitmq_management >/dev/null
fi
for _ in $(seq 1 30); do
  (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && exit 0
  sleep 1
done
echo "setup: RabbitMQ's management API (127.0.0.1:15672) did not come up" >&2
exit 1
