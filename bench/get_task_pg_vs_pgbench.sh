#!/usr/bin/env bash
# Requests/s of authenticated GET /api/task/:id with tasks on PostgreSQL, beside
# pgbench running the very SELECT TMS sends (prepared, same number of clients), in
# one run on one PostgreSQL: once with pipelining (tasks.pipeline_depth=32) and once
# without (1). Prints the ratios; absolute numbers on shared machines are noise.
#   bench/get_task_pg_vs_pgbench.sh [duration_s=10] [clients=64]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
conns=${2:-64}
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
scripts/setup --test >/dev/null
scripts/build >/dev/null
base=$(scripts/services)
db=tms_bench_$$
psql -qAt "$base" -c "CREATE DATABASE $db" >/dev/null
url="${base%/*}/$db"
work=$(mktemp -d)
tms_pid=
cleanup() {
  [[ -n "$tms_pid" ]] && kill "$tms_pid" 2>/dev/null && wait "$tms_pid" 2>/dev/null
  psql -qAt "$base" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Pool of 4 connections (the default) for both TMS runs; pgbench gets one
# connection per client, as it always does.
start_tms() { # pipeline_depth
  port=$(free_port)
  build/tms serve --set data.dir="$work/data" --set http.addr=127.0.0.1:$port \
    --set grpc.addr=127.0.0.1:0 --set tasks.url="$url" --set tasks.pipeline_depth="$1" \
    --set ratelimit.api_per_minute=0 --set ratelimit.login_per_15min=0 \
    --set ratelimit.task_create_per_hour=0 --set log.level=warn 2>>"$work/tms.log" &
  tms_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
  echo "tms did not start" >&2; cat "$work/tms.log" >&2; exit 1
}
stop_tms() { kill "$tms_pid"; wait "$tms_pid" || true; tms_pid=; }
rps() { awk '/Requests\/sec/ {print $2}'; }

start_tms 32
token=$(curl -sf -XPOST "http://127.0.0.1:$port/api/auth/register" \
  -d '{"email":"bench@example.com","password":"benchmark-password"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -sf -XPOST "http://127.0.0.1:$port/api/task" -H "Authorization: Bearer $token" \
  -d '{"title":"Benchmark task","description":"A task read over and over"}' >/dev/null

measure_tms() {
  wrk -t1 -c"$conns" -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/task/1" >/dev/null
  wrk -t1 -c"$conns" -d"${dur}s" -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/api/task/1" | tee -a "$work/wrk.txt" | rps
}
piped=$(measure_tms)
stop_tms
start_tms 1
unpiped=$(measure_tms)
stop_tms

# The statement of src/io/pg_tasks.c ("task_get"), prepared, one client per connection.
cat > "$work/get.sql" <<'SQL'
SELECT id, title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms, version FROM tasks WHERE id = 1;
SQL
pgb=$(pgbench -n -M prepared -c "$conns" -j 1 -T "$dur" -f "$work/get.sql" "$url" 2>/dev/null |
  awk '/^tps/ {print $3; exit}')

echo "GET /api/task/:id on PostgreSQL, $conns clients, ${dur}s (wrk -t1; pgbench -j1 -M prepared)"
echo "tms, pipeline_depth=32: $piped req/s"
echo "tms, pipeline_depth=1:  $unpiped req/s"
echo "pgbench same SELECT:    $pgb tps"
python3 -c "print('ratio tms/pgbench: pipelined %.3f, unpipelined %.3f' % ($piped / $pgb, $unpiped / $pgb))"
