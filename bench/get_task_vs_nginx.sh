#!/usr/bin/env bash
# Requests/s of authenticated GET /api/task/:id on TMS (embedded default, release
# build, rate limits off) beside nginx returning the same JSON body from memory,
# both measured in this run with the same wrk settings. Prints a ratio: absolute
# numbers on shared machines are noise, the ratio is the figure to compare.
#   bench/get_task_vs_nginx.sh [duration_s=10] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
conns=${2:-64}
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
}
scripts/build >/dev/null
work=$(mktemp -d)
trap 'kill $tms_pid $nginx_pid 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tport=$(free_port); nport=$(free_port)

build/tms serve --set data.dir="$work/data" --set http.addr=127.0.0.1:$tport \
  --set grpc.addr=127.0.0.1:0 --set ratelimit.api_per_minute=0 \
  --set ratelimit.login_per_15min=0 --set ratelimit.task_create_per_hour=0 \
  --set log.level=warn 2>"$work/tms.log" &
tms_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$tport/healthz" >/dev/null && break; sleep 0.1; done
token=$(curl -sf -XPOST "http://127.0.0.1:$tport/api/auth/register" \
  -d '{"email":"bench@example.com","password":"benchmark-password"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -sf -XPOST "http://127.0.0.1:$tport/api/task" -H "Authorization: Bearer $token" \
  -d '{"title":"Benchmark task","description":"A task read over and over"}' >/dev/null
body=$(curl -sf "http://127.0.0.1:$tport/api/task/1" -H "Authorization: Bearer $token")

printf '%s' "$body" > "$work/task.json"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$nport;
    location / { default_type application/json; return 200 '$(cat "$work/task.json")'; }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
sleep 0.5

rps() { awk '/Requests\/sec/ {print $2}'; }
wrk -t1 -c"$conns" -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$tport/api/task/1" >/dev/null
tms_rps=$(wrk -t1 -c"$conns" -d"${dur}s" -H "Authorization: Bearer $token" "http://127.0.0.1:$tport/api/task/1" | tee "$work/tms.wrk" | rps)
wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$nport/" >/dev/null
ngx_rps=$(wrk -t1 -c"$conns" -d"${dur}s" "http://127.0.0.1:$nport/" | tee "$work/nginx.wrk" | rps)
echo "wrk -t1 -c$conns -d${dur}s  GET /api/task/:id (authenticated)"
echo "tms:   $tms_rps req/s   $(grep -E 'Latency' "$work/tms.wrk")"
echo "nginx: $ngx_rps req/s   $(grep -E 'Latency' "$work/nginx.wrk")"
python3 -c "print('ratio tms/nginx: %.3f' % ($tms_rps / $ngx_rps))"
