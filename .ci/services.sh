#!/usr/bin/env bash
# Start the local services the integration tests talk to, if they are down, and wait for them.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port
  for _ in $(seq 1 60); do up "$2" && return 0; sleep 0.5; done
  echo "services: $1 did not come up on port $2" >&2
  return 1
}

ensure() { # name port command...
  local name=$1 port=$2; shift 2
  if up "$port"; then echo "services: $name is up"; return 0; fi
  echo "services: starting $name"
  "$@" || echo "services: starting $name failed" >&2
  wait_for "$name" "$port"
}

status=0
ensure postgresql 5432 bash -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start' || status=1
ensure redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
  --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
ensure rabbitmq 5672 rabbitmq-server -detached || status=1
ensure nats 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || status=1
exit $status
