# Events on Kafka (a single-node broker from scripts/service-kafka, pinned with the
# server), tasks on PostgreSQL: POST /api/task assigned with events in process, then on
# Kafka (the on/off ratio), then the latency from a create's response to its event
# reaching a consumer of its own group, at 100 and at 1,000 creates/s (fixed rate, open
# loop) once the outbox is drained.
[[ -n "$PG_URL" ]] || die "no PostgreSQL"
tok=$(seed_get "d['users'][0]['token']")
assignee=$(seed_get "d['users'][1]['id']")
lua=$(wrk_lua kafka POST "{\"title\":\"Bench task\",\"description\":\"A task created over and over\",\"assignedTo\":\"$assignee\"}")
kafka_pid="$ROOT/build-services/kafka/kafka.pid"
kafka_was_up=0
[[ -f "$kafka_pid" ]] && kill -0 "$(cat "$kafka_pid")" 2>/dev/null && kafka_was_up=1
brokers=$("$ROOT/scripts/service-kafka" 2>>"$WORK/kafka.log") || { rec kafka kafka_status "Kafka did not start (see kafka.log)"; die "Kafka did not start"; }
taskset -a -p -c "$SERVER_CPU" "$(cat "$kafka_pid")" >/dev/null
restore_kafka() {
  if ((kafka_was_up)); then  # somebody else's broker: give it every CPU back
    taskset -a -p -c "0-$(($(nproc) - 1))" "$(cat "$kafka_pid")" >/dev/null
  else
    "$ROOT/scripts/service-kafka" stop
  fi
}
trap '_kill_all; restore_kafka' EXIT
rec kafka linger_ms "$(grep -o '"linger.ms", "[0-9]*"' "$ROOT/src/io/bus/kafka.c" | grep -o '[0-9]*' | head -1)"

# CPU time per created task, by process (robust where rates swing with the machine's
# other tenants): clock ticks of TMS (every thread), this run's PostgreSQL and the
# broker, around a wrk run of its own; recorded as ms per 1,000 creates.
ticks() { local t=0 p; for p in ${1//,/ }; do [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
pg_pids() { local pm; pm=$(head -1 "$PG_DIR/data/postmaster.pid" 2>/dev/null) || return 0; echo "$pm" $(pgrep -P "$pm" || true); }
# The server CPU's own split (/proc/stat): whether the side ran the core full (idle ~0) or
# waited on something else (idle or iowait high), and what the kernel took besides.
core_ticks() { awk -v c="cpu$SERVER_CPU" '$1 == c {print $2 + $3, $4, $5, $6, $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# The WAL PostgreSQL wrote per create (LSN before and after): the database's work
# without the noise of CPU time (an outbox mark that updated rows showed here).
wal_lsn() { psql -qAt "$PG_URL" -c "SELECT pg_current_wal_lsn()"; }
cpu_mark() { T0_TMS=$(ticks "$TMS_PID"); T0_PG=$(ticks "$(pg_pids | tr ' ' ,)"); T0_K=$(ticks "$(cat "$kafka_pid")"); T0_CORE=$(core_ticks); T0_LSN=$(wal_lsn); }
cpu_rec() {  # SIDE WRK_OUTPUT
  local side=$1 n hz; n=$(awk '/requests in/ {print $1}' "$2"); hz=$(getconf CLK_TCK)
  [[ -n "$n" && "$n" -gt 0 ]] || return 0
  rec kafka "$side.cpu_ms_per_1k_creates.tms" "$(awk -v a="$T0_TMS" -v b="$(ticks "$TMS_PID")" -v n="$n" -v hz="$hz" 'BEGIN {printf "%.1f", (b - a) * 1000 / hz * 1000 / n}')"
  rec kafka "$side.cpu_ms_per_1k_creates.postgres" "$(awk -v a="$T0_PG" -v b="$(ticks "$(pg_pids | tr ' ' ,)")" -v n="$n" -v hz="$hz" 'BEGIN {printf "%.1f", (b - a) * 1000 / hz * 1000 / n}')"
  rec kafka "$side.cpu_ms_per_1k_creates.broker" "$(awk -v a="$T0_K" -v b="$(ticks "$(cat "$kafka_pid")")" -v n="$n" -v hz="$hz" 'BEGIN {printf "%.1f", (b - a) * 1000 / hz * 1000 / n}')"
  rec kafka "$side.cpu_run_rps" "$(awk '/Requests\/sec/ {print $2}' "$2")"
  rec kafka "$side.pg_wal_bytes_per_create" "$(psql -qAt "$PG_URL" -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$T0_LSN') / $n)")"
  rec kafka "$side.server_core_pct" "$(echo "$T0_CORE $(core_ticks)" | awk '{t = $12 - $6; printf "user %.0f sys %.0f idle %.0f iowait %.0f irq %.0f", ($7 - $1) * 100 / t, ($8 - $2) * 100 / t, ($9 - $3) * 100 / t, ($10 - $4) * 100 / t, ($11 - $5) * 100 / t}')"
}

# NAME: the outbox is empty and the notifier is done (no mail written and, on Kafka, no
# delivery for a second), DRAIN_S at most; records how long that took, or how far
# behind the notifier still was. The throughput runs assign tens of thousands of tasks
# and the notifier of the same process mails them afterwards (about 1,200 a second here;
# 64 before the consumer's resume was fixed, docs/perf-write-path.md step 9), on the same
# CPU. The off side drains too before it stops; what its notifier still had not mailed
# stays unsent in the outbox of the shared database and is deleted before the on side
# starts (recorded): the on side inherited it otherwise (70,000 of the off side's events
# mailed during the on side's runs, in one full run).
DRAIN_S=$((QUICK ? 30 : 60))
drain() {
  local pending i delivered mailed last="" still=0 now mailed0="" t0="" t_last="" rate
  for i in $(seq $((DRAIN_S * 10))); do
    # a failed scrape prints nothing (not zeros) and is skipped
    read -r pending delivered mailed < <(curl -sf "$TMS_METRICS_URL" | awk '
      /^tms_outbox_pending_events/ {p += $2}
      /^tms_kafka_delivered_total\{topic="notifications"/ {d += $2}
      /^tms_mail_written_total/ {m += $2}
      END {if (NR) print p + 0, d + 0, m + 0}') || { sleep 0.1; continue; }
    [[ -n "$mailed0" ]] || { mailed0=$mailed; t0=$EPOCHREALTIME; t_last=$t0; }
    now="$delivered/$mailed"
    [[ "$now" == "$last" ]] || t_last=$EPOCHREALTIME
    if [[ "$pending" == 0 && "$now" == "$last" ]]; then
      still=$((still + 1))
    else
      still=0
    fi
    last=$now
    if ((still >= 10)); then
      rec kafka "drain_$1.seconds" "$(awk -v i="$i" 'BEGIN {printf "%.1f", (i - 10) / 10}')"
      # The notifier's pace while it caught up: mails written from the first scrape to
      # the last change, over the wall time between them (a poll takes more than its
      # 0.1 s sleep); step 24 of docs/perf-write-path.md read it from the log by hand.
      rate=$(awk -v a="$mailed0" -v b="$mailed" -v t0="$t0" -v t1="$t_last" 'BEGIN {if (t1 > t0) printf "%.0f", (b - a) / (t1 - t0)}')
      ((i > 20)) && [[ -n "$rate" ]] && rec kafka "drain_$1.mails_per_s" "$rate"
      return 0
    fi
    sleep 0.1
  done
  rec kafka "drain_$1.seconds" "timeout (${DRAIN_S} s): $pending events pending, the notifier still working ($delivered delivered, $mailed mailed)"
}

# Unsent outbox rows left by the pairs before (pg_post's pgbench inserts outbox rows that
# nothing sends) were deleted by bench/run before this pair (backlog_discarded_pg).
tms_start kafka_off --set tasks.url="$PG_URL" || die "tms did not start"
wrk_measure kafka tms_local "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
cpu_mark
client wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task" > "$WORK/wrk.kafka.off.cpu.txt"
cpu_rec off "$WORK/wrk.kafka.off.cpu.txt"
profile kafka off client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task"
drain off_after_post_load
tms_stop
rec kafka off_leftover_discarded "$(discard_pg_backlog)"

# The notifier's group on the shared broker starts at the topic's end, and what it skips is
# recorded: events left there by an earlier run (one whose notifier had not caught up when
# it stopped) were consumed and mailed during this side's measurement otherwise (quick
# run: TMS 420, PostgreSQL 450 and the broker 399 ms of CPU per 1,000 creates, on/off
# 0.59, after 37,000 events left by a developer's runs).
rec kafka on_notifier_backlog_skipped "$("$PY" "$TOOLS" kafka-skip "$brokers" notification-group notifications)"
tms_start kafka_on --set tasks.url="$PG_URL" --set events.brokers="$brokers" || die "tms with Kafka did not start"
wrk_measure kafka tms_kafka "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
cpu_mark
client wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task" > "$WORK/wrk.kafka.on.cpu.txt"
cpu_rec on "$WORK/wrk.kafka.on.cpu.txt"
rec kafka on.push_doorbells_out_total "$(curl -sf "$TMS_METRICS_URL" | awk '/^tms_push_doorbells_total\{dir="out"/ {print $2}')"
profile kafka on client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task"
drain after_post_load
for rate in 100 1000; do
  if ((QUICK)); then n=$((rate * 3)); else n=$((rate * 10)); fi
  "$PY" "$TOOLS" kafka-e2e "$TMS_URL" "$tok" "$assignee" "$brokers" "$n" "$rate" > "$WORK/kafka_e2e.$rate.txt"
  while read -r k v; do rec kafka "e2e_$rate.$k" "$v"; done < "$WORK/kafka_e2e.$rate.txt"
  drain "after_e2e_$rate"
done
tms_stop
