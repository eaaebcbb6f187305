#!/usr/bin/env bash
# What the test suite needs beside the venv, made present: a Redis answering on
# 127.0.0.1:6379 (started here, keeping nothing on disk, when none answers) and Debian's
# chromium for the dashboard test (installed with apt when missing). Idempotent: `make test`
# and .ci/run both call it, and on a machine that has both it does nothing.
set -euo pipefail

# PING over bash's /dev/tcp: a Redis already running is seen without redis-cli
redis_up() {
  (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3) \
    2>/dev/null | grep -q PONG
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"  # -n: fail, never wait for a password
  else return 1; fi
}

apt_install() {
  echo "tests: installing $* (apt)"
  (as_root apt-get update -qq && as_root apt-get install -y -qq "$@") >/dev/null ||
    { echo "tests: could not install $* with apt: install it, then run again" >&2; return 1; }
}

if ! redis_up; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  echo "tests: starting redis-server on 127.0.0.1:6379"
  mkdir -p /tmp/cascade-test-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/cascade-test-redis --logfile /tmp/cascade-test-redis/redis.log
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "tests: redis did not start (see /tmp/cascade-test-redis/redis.log)" >&2; exit 1; }
fi

# the dashboard test drives Debian's chromium (no browser download at test time); the fast
# subset (`redis-only`) has no browser test. Without it only that test fails, and says why.
if [ "${1:-}" != redis-only ] && ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium chromium-driver || echo "tests: the dashboard test will fail without chromium" >&2
fi
