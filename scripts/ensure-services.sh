#!/usr/bin/env bash
# Make sure the services the tests use are running; start the ones that are not.
set -uo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if command -v rabbitmq-server >/dev/null 2>&1 && ! rabbit_up; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached || true
  for _ in $(seq 1 60); do rabbit_up && break; sleep 1; done
fi
pg_up && echo "PostgreSQL: up" || echo "PostgreSQL: NOT running"
rabbit_up && echo "RabbitMQ: up" || echo "RabbitMQ: NOT running"
exit 0
