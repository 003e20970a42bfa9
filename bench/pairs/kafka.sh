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

drain() {  # the outbox and the notifier catch up (60 s at most)
  local pending
  for _ in $(seq 600); do
    pending=$(curl -sf "$TMS_METRICS_URL" | awk '/^tms_outbox_pending_events/ {s += $2} END {print s + 0}')
    [[ "$pending" == 0 ]] && return 0
    sleep 0.1
  done
}

tms_start kafka_off --set tasks.url="$PG_URL" || die "tms did not start"
wrk_measure kafka tms_local "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
tms_stop

tms_start kafka_on --set tasks.url="$PG_URL" --set events.brokers="$brokers" || die "tms with Kafka did not start"
wrk_measure kafka tms_kafka "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
drain
for rate in 100 1000; do
  if ((QUICK)); then n=$((rate * 3)); else n=$((rate * 10)); fi
  "$PY" "$TOOLS" kafka-e2e "$TMS_URL" "$tok" "$assignee" "$brokers" "$n" "$rate" > "$WORK/kafka_e2e.$rate.txt"
  while read -r k v; do rec kafka "e2e_$rate.$k" "$v"; done < "$WORK/kafka_e2e.$rate.txt"
  drain
done
tms_stop
