# Common functions of the benchmark harness, sourced by bench/run and bench/pairs/*.sh.
# Nothing here is run on its own. State lives in environment variables set by bench/run:
#   ROOT      repository root          WORK  this run's scratch dir (bench/results/tmp/<ts>)
#   DUR WARM  measurement / warm-up seconds         CONNS  HTTP/1.1 connections
#   CLIENT_CPU SERVER_CPU  taskset lists            TASK_ID  the task every GET reads
#   PG_URL    private PostgreSQL database (empty when the run has no PostgreSQL)
# Every process started here is killed by the EXIT trap of the (sub)shell that started it.

BIN="$ROOT/build-tools/bin"
# The TMS binary measured: build/tms, or TMS_BENCH_BIN (e.g. main's build kept in
# build-before/ to compare before and after in one run).
TMS_BIN=${TMS_BENCH_BIN:-$ROOT/build/tms}
PY="$ROOT/build-venv-bench/bin/python"
TOOLS="$ROOT/bench/tools.py"

log() { printf '%s bench: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Pinning: the load client runs on CLIENT_CPU, the server and its database on SERVER_CPU.
# (Functions fork when run with &: start background processes with taskset itself, so
# that $! is the process to kill.)
client() { taskset -c "$CLIENT_CPU" "$@"; }
server() { taskset -c "$SERVER_CPU" "$@"; }

# --- results -----------------------------------------------------------------------
# rec PAIR KEY VALUE: one figure; report.py turns the lines into the JSON and table.
rec() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$WORK/records.tsv"; }
# raw PAIR NAME FILE: keeps a tool's whole output; it goes into the JSON as text.
raw() { mkdir -p "$WORK/raw"; cp "$3" "$WORK/raw/$1.$2.txt"; }

# --- processes ---------------------------------------------------------------------
_PIDS=()
_kill_all() {
  local p
  for p in "${_PIDS[@]+"${_PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${_PIDS[@]+"${_PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  _PIDS=()
}
track() { _PIDS+=("$1"); }
untrack() { local p keep=(); for p in "${_PIDS[@]+"${_PIDS[@]}"}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done; _PIDS=("${keep[@]+"${keep[@]}"}"); }
# In a pair's subshell: forget the parent's processes, kill this subshell's at exit.
on_exit() { _PIDS=(); trap '_kill_all' EXIT; }

# tms_start NAME [--set k=v ...]: TMS pinned to SERVER_CPU on $WORK/data, rate limits and
# per-address caps off (every load client comes from 127.0.0.1).
# Sets TMS_PID, TMS_URL (REST; https:// when http.tls_cert is set), TMS_GRPC (host:port),
# TMS_METRICS_URL (GET /metrics). Unpinned when TMS_UNPINNED=1 (seeding).
tms_start() {
  local name=$1; shift
  local hp gp mp
  hp=$(free_port); gp=$(free_port); mp=$(free_port)
  local cmd=("$TMS_BIN" serve --set data.dir="$WORK/data"
    --set http.addr=127.0.0.1:$hp --set grpc.addr=127.0.0.1:$gp
    --set metrics.addr=127.0.0.1:$mp
    --set ratelimit.api_per_minute=0 --set ratelimit.login_per_15min=0
    --set ratelimit.task_create_per_hour=0 --set notify.per_assigner_per_hour=0
    --set notify.per_recipient_per_hour=0 --set log.level=info
    --set http.max_connections=20000 --set http.max_connections_per_address=0
    --set auth.hash_per_address=0 "$@")
  local cpus=$SERVER_CPU scheme=http a
  [[ "${TMS_UNPINNED:-0}" == 1 ]] && cpus="0-$(($(nproc) - 1))"
  for a in "$@"; do [[ "$a" == http.tls_cert=* ]] && scheme=https; done
  taskset -c "$cpus" "${cmd[@]}" 2>>"$WORK/tms.$name.log" &
  TMS_PID=$!; track "$TMS_PID"
  TMS_URL="$scheme://127.0.0.1:$hp"; TMS_GRPC="127.0.0.1:$gp"
  TMS_METRICS_URL="http://127.0.0.1:$mp/metrics"
  local _
  for _ in $(seq 150); do
    curl -sfk "$TMS_URL/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$TMS_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$WORK/tms.$name.log" >&2
  return 1
}
tms_stop() {
  [[ -n "${TMS_PID:-}" ]] || return 0
  kill "$TMS_PID" 2>/dev/null || true; wait "$TMS_PID" 2>/dev/null || true
  untrack "$TMS_PID"; TMS_PID=
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# nginx_start NAME CONF_BODY: nginx (1 worker) pinned to SERVER_CPU with the given
# `server { ... }` blocks. Sets NGINX_PID.
nginx_start() {
  local dir="$WORK/nginx.$1"
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 100000000;
  open_file_cache max=64;
  open_file_cache_valid 60s;
  $2
}
CONF
  taskset -c "$SERVER_CPU" nginx -c "$dir/nginx.conf" -p "$dir" &
  NGINX_PID=$!; track "$NGINX_PID"
  sleep 0.3
  kill -0 "$NGINX_PID" 2>/dev/null || { cat "$dir/error.log" >&2; return 1; }
}

# --- load clients (always on CLIENT_CPU, warm-up then measurement) -------------------
# wrk_measure PAIR SIDE URL [wrk args...]: records SIDE.rps/.p50_ms/.p99_ms/... of PAIR.
wrk_measure() {
  local pair=$1 side=$2 url=$3; shift 3
  local out="$WORK/wrk.$pair.$side.txt"
  client wrk -t1 -c"$CONNS" -d"${WARM}s" "$@" "$url" >/dev/null
  client wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$@" "$url" > "$out"
  raw "$pair" "$side.wrk" "$out"
  "$PY" "$TOOLS" wrk "$out" | while read -r k v; do rec "$pair" "$side.$k" "$v"; done
}
wrk_rps() { awk '/Requests\/sec/ {print $2}' "$1"; }

# h2load_measure PAIR SIDE URL [h2load args...]: records rps, and p50/p99 computed from
# h2load's per-request log (its summary has no percentiles).
h2load_measure() {
  local pair=$1 side=$2 url=$3; shift 3
  local out="$WORK/h2load.$pair.$side.txt" lf="$WORK/h2load.$pair.$side.log"
  client h2load -t1 -D "$WARM" "$@" "$url" >/dev/null
  client h2load -t1 -D "$DUR" --log-file="$lf" "$@" "$url" > "$out"
  raw "$pair" "$side.h2load" "$out"
  "$PY" "$TOOLS" h2load "$out" "$lf" | while read -r k v; do rec "$pair" "$side.$k" "$v"; done
}

# fixed_rate_measure PAIR SIDE URL RATE [h2load args...]: HTTP/1.1 load at a fixed rate
# (h2load --rps on CONNS connections), so latency is measured below saturation. A
# connection still waiting for a reply when its next request is due sends it late (and
# that wait is not counted), so SIDE.rps falling short of SIDE.rate flags a hidden tail.
fixed_rate_measure() {
  local pair=$1 side=$2 url=$3 rate=$4; shift 4
  local each=$(((rate + CONNS / 2) / CONNS))
  ((each > 0)) || each=1
  rec "$pair" "$side.rate" $((each * CONNS))
  h2load_measure "$pair" "$side" "$url" --h1 -c"$CONNS" --rps="$each" "$@"
}

# pgbench_measure PAIR SIDE SCRIPT [pgbench args...]: -M prepared, CONNS clients, one thread.
pgbench_measure() {
  local pair=$1 side=$2 script=$3; shift 3
  local out="$WORK/pgbench.$pair.$side.txt" lp="$WORK/pgblog.$pair.$side"
  client pgbench -n -M prepared -c "$CONNS" -j 1 -T "$WARM" -f "$script" "$@" "$PG_URL" >/dev/null 2>&1
  rm -f "$lp".*
  (cd "$WORK" && client pgbench -n -M prepared -c "$CONNS" -j 1 -T "$DUR" -l --log-prefix="$lp" \
    -f "$script" "$@" "$PG_URL" > "$out" 2>&1)
  raw "$pair" "$side.pgbench" "$out"
  "$PY" "$TOOLS" pgbench "$out" "$lp".* | while read -r k v; do rec "$pair" "$side.$k" "$v"; done
  rm -f "$lp".*
}

# profile PAIR NAME LOAD...: with --profile, runs the LOAD command (which should last
# about DUR+1 s) while perf samples the server's CPU. Keeps the split of that CPU by
# command (other tenants of a shared machine show up there) and the top symbols of this
# run's server processes only (TMS, nginx, this run's PostgreSQL and its backends).
profile() {
  ((PROFILE)) || return 0
  local pair=$1 name=$2; shift 2
  local data="$WORK/perf.$pair.$name.data" txt="$WORK/perf.$pair.$name.txt" pp lp pids i=0 pc rest
  perf record -q -F 999 -C "$SERVER_CPU" -o "$data" -- sleep "$DUR" >/dev/null 2>&1 &
  pp=$!
  "$@" >/dev/null 2>&1 &
  lp=$!
  sleep 1
  pids=$(our_server_pids)
  wait "$lp" || true
  wait "$pp" || true
  perf report -i "$data" --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8 > "$txt.comm"
  perf report -i "$data" --pid="$pids" --sort comm,dso,sym --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -40 > "$txt"
  perf report -i "$data" --pid="$pids" --sort comm,dso --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -10 > "$txt.dso"
  raw "$pair" "perf.$name.comm" "$txt.comm"
  raw "$pair" "perf.$name.dso" "$txt.dso"
  rec "$pair" "perf.$name.ours_by_dso" "$(awk '{printf "%s%s:%s %s", (NR > 1 ? ", " : ""), $2, $3, $1}' "$txt.dso")"
  raw "$pair" "perf.$name.top" "$txt"
  rec "$pair" "perf.$name.cpu_by_command" "$(awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}' "$txt.comm")"
  while read -r pc rest; do
    i=$((i + 1)); ((i <= 12)) || break
    rec "$pair" "perf.$name.$(printf %02d $i)" "$pc $(echo "$rest" | tr -s ' ')"
  done < "$txt"
  rm -f "$data"
}
our_server_pids() {
  local p list=() pm
  for p in "${TMS_PID:-}" "${NGINX_PID:-}"; do
    [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null && list+=("$p") && list+=($(pgrep -P "$p" || true))
  done
  if [[ -f "$PG_DIR/data/postmaster.pid" ]]; then
    pm=$(head -1 "$PG_DIR/data/postmaster.pid")
    list+=("$pm" $(pgrep -P "$pm" || true))
  fi
  (IFS=,; echo "${list[*]}")
}

# pg_mark: snapshots PostgreSQL's counters (tasks rows, commits, WAL records, flushes and
# bytes) into PG_MARK. pg_cost PAIR SIDE: records what happened since, per task created
# (SIDE.pg_commits_per_create, .pg_wal_flushes_per_create, .pg_wal_records_per_create,
# .pg_wal_bytes_per_create). Backends report their counters when they disconnect (or
# after a second idle), so take pg_cost after the side's clients and server have gone.
_pg_counters() {
  psql -qAt -F ' ' "$PG_URL" -c "SELECT (SELECT count(*) FROM tasks),
    (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
    wal_records, wal_sync, wal_bytes FROM pg_stat_wal"
}
pg_mark() { sleep 1.2; PG_MARK=$(_pg_counters); }
pg_cost() {
  local pair=$1 side=$2 now
  sleep 1.2
  now=$(_pg_counters)
  awk -v a="$PG_MARK" -v b="$now" -v s="$side" 'BEGIN {
    split(a, x, " "); split(b, y, " "); n = y[1] - x[1]; if (n <= 0) exit
    printf "%s.pg_commits_per_create %.2f\n", s, (y[2] - x[2]) / n
    printf "%s.pg_wal_records_per_create %.2f\n", s, (y[3] - x[3]) / n
    printf "%s.pg_wal_flushes_per_create %.3f\n", s, (y[4] - x[4]) / n
    printf "%s.pg_wal_bytes_per_create %.0f\n", s, (y[5] - x[5]) / n }' |
    while read -r k v; do rec "$pair" "$k" "$v"; done
}

# Writes a wrk Lua script sending METHOD with BODY (JSON) to $WORK/NAME.lua.
wrk_lua() {
  local name=$1 method=$2 body=$3
  cat > "$WORK/$name.lua" <<LUA
wrk.method = "$method"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA
  echo "$WORK/$name.lua"
}

# discard_backlog PAIR: deletes every event still unsent in the outboxes (the SQLite file
# and PostgreSQL), as the relay does with a sent one, before a pair starts, and records
# how many. The seeding through the API leaves ~3,600 of its 5,000 assignments unsent
# when it stops, and a write pair tens of thousands: the next pair's TMS relayed and
# mailed them (a Maildir fsync and inbox rows each) during its own measurement, beside a
# reference with nothing of the kind (the grpc pair after sqlite_post: 41k calls/s in
# full runs, 76-91k without). The rows discarded are dead tuples until a vacuum, and the
# pending-events index still points at them: the next TMS's relay walked them in every
# count (each 250 ms) and full read, and the kafka pair's in-process side, the first
# after pg_post's 200,000-300,000, paid for it: without / with the vacuum, in two runs of
# `--only pg_post,kafka` in a row (20261207T153142Z, 153608Z, when discarding marked the
# rows sent), its PostgreSQL took 87.7 / 68.4 ms of CPU per 1,000 creates and it made
# 6,525-6,984 / 8,816-8,922 creates/s. So the table is vacuumed after a discard.
discard_pg_backlog() {
  local n
  n=$(psql -qAt "$PG_URL" -c "WITH d AS (DELETE FROM outbox WHERE sent_at_ms IS NULL RETURNING 1) SELECT count(*) FROM d")
  [[ "$n" =~ ^[1-9] ]] && psql -qAt "$PG_URL" -c "VACUUM (ANALYZE) outbox" >/dev/null
  echo "$n"
}
discard_backlog() {
  local n_sqlite=0 n_pg=0
  [[ -f "$WORK/data/tms.db" ]] && n_sqlite=$("$PY" - "$WORK/data/tms.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
n = db.execute("DELETE FROM outbox WHERE sent_at_ms IS NULL").rowcount
db.commit()
print(n)
PY
)
  [[ -n "${PG_URL:-}" ]] && n_pg=$(discard_pg_backlog 2>/dev/null)
  rec "$1" backlog_discarded_sqlite "${n_sqlite:-0}"
  rec "$1" backlog_discarded_pg "${n_pg:-0}"
}

# Token and ids of the seeded data: user 0 reads, users 1.. are logged in by the storm.
seed_get() { "$PY" -c "import json,sys; d=json.load(open('$WORK/seed.json')); print(eval(sys.argv[1]))" "$1"; }
