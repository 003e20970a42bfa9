#!/usr/bin/env bash
# ghz against TMS's gRPC TaskService/GetTask (unary, authenticated), embedded
# default, release build, rate limits off. Prints requests/s and latency
# percentiles as ghz reports them. ghz reads the service through server reflection
# (its .proto parser predates proto3 `optional`, which task.proto uses).
#   bench/grpc_get_task_ghz.sh [duration_s=10] [concurrency=50]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
conc=${2:-50}
scripts/setup --test >/dev/null
scripts/build >/dev/null
work=$(mktemp -d)
trap 'kill $tms_pid 2>/dev/null || true; grep -v "level=info" "$work/tms.log" | tail -5 >&2; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hport=$(free_port); gport=$(free_port)
build/tms serve --set data.dir="$work/data" --set http.addr=127.0.0.1:$hport \
  --set grpc.addr=127.0.0.1:$gport --set ratelimit.api_per_minute=0 \
  --set ratelimit.login_per_15min=0 --set ratelimit.task_create_per_hour=0 \
  --set log.level=warn 2>"$work/tms.log" &
tms_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$hport/healthz" >/dev/null && break; sleep 0.1; done
token=$(curl -sf -XPOST "http://127.0.0.1:$hport/api/auth/register" \
  -d '{"email":"bench@example.com","password":"benchmark-password"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
id=$(curl -sf -XPOST "http://127.0.0.1:$hport/api/task" -H "Authorization: Bearer $token" \
  -d '{"title":"Benchmark task","description":"A task read over and over"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
build-tools/bin/ghz --insecure --call TaskService.GetTask \
  -d "{\"id\":\"$id\"}" -m "{\"authorization\":\"Bearer $token\"}" \
  -c "$conc" -z "${dur}s" "127.0.0.1:$gport" | tee "$work/ghz.txt" |
  grep -E -A3 "Count|Requests/sec|Average|99 %|95 %|50 %|Status code distribution|Error distribution"
