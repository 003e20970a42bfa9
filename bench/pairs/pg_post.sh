# Database ceiling, writes: POST /api/task on PostgreSQL, assigned (so each create also
# writes its outbox row, and the relay and notifier then handle it) vs pgbench running
# the same two INSERTs in one transaction (one statement), and vs pgbench calling the
# function TMS calls (tms_task_create, src/io/store/pg/migrations.c).
[[ -n "$PG_URL" ]] || die "no PostgreSQL"
tok=$(seed_get "d['users'][0]['token']")
creator=$(seed_get "d['users'][0]['id']")
assignee=$(seed_get "d['users'][1]['id']")
lua=$(wrk_lua pg_post POST "{\"title\":\"Bench task\",\"description\":\"A task created over and over\",\"assignedTo\":\"$assignee\"}")
tms_start pg_post --set tasks.url="$PG_URL" || die "tms did not start"
wrk_measure pg_post tms "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
profile pg_post tms client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task"
tms_stop

# The same with events on Kafka (a single-node broker from scripts/service-kafka, pinned
# with the server): POST rps, then the latency from a create's response to its event
# reaching a consumer of its own group, at a fixed rate once the outbox is drained.
kafka_pid="$ROOT/build-services/kafka/kafka.pid"
kafka_was_up=0
[[ -f "$kafka_pid" ]] && kill -0 "$(cat "$kafka_pid")" 2>/dev/null && kafka_was_up=1
if brokers=$("$ROOT/scripts/service-kafka" 2>>"$WORK/kafka.log"); then
  taskset -a -p -c "$SERVER_CPU" "$(cat "$kafka_pid")" >/dev/null
  rec pg_post kafka_linger_ms "$(grep -o '"linger.ms", "[0-9]*"' "$ROOT/src/io/bus/kafka.c" | grep -o '[0-9]*' | head -1)"
  tms_start pg_post_kafka --set tasks.url="$PG_URL" --set events.brokers="$brokers" || die "tms with Kafka did not start"
  wrk_measure pg_post tms_kafka "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
  for _ in $(seq 600); do  # the outbox and the notifier catch up (60 s at most)
    pending=$(curl -sf "$TMS_METRICS_URL" | awk '/^tms_outbox_pending_events/ {s += $2} END {print s + 0}')
    [[ "$pending" == 0 ]] && break
    sleep 0.1
  done
  if ((QUICK)); then n=300; else n=1000; fi
  "$PY" "$TOOLS" kafka-e2e "$TMS_URL" "$tok" "$assignee" "$brokers" "$n" 100 > "$WORK/kafka_e2e.txt"
  while read -r k v; do rec pg_post "kafka_e2e.$k" "$v"; done < "$WORK/kafka_e2e.txt"
  tms_stop
  if ((kafka_was_up)); then  # somebody else's broker: give it every CPU back
    taskset -a -p -c "0-$(($(nproc) - 1))" "$(cat "$kafka_pid")" >/dev/null
  else
    "$ROOT/scripts/service-kafka" stop
  fi
else
  rec pg_post kafka_status "Kafka did not start (see kafka.log)"
fi

cat > "$WORK/pg_post.sql" <<'SQL'
WITH t AS (INSERT INTO tasks (title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms, version) VALUES ('Bench task', 'A task created over and over', 'open', :assignee, :creator, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 1) RETURNING *) INSERT INTO outbox (event_id, topic, key, payload, created_at_ms) SELECT gen_random_uuid()::text, 'notifications', t.id::text, json_build_object('type', 'task_created', 'user_id', t.assigned_to, 'task_id', t.id::text, 'title', t.title)::text, t.created_at_ms FROM t;
SQL
cat > "$WORK/pg_post_fn.sql" <<'SQL'
SELECT o_st, o_id, o_title, o_description, o_status, o_assigned_to, o_created_by, o_created_at_ms, o_updated_at_ms, o_version FROM tms_task_create('Bench task', 'A task created over and over', 'open', :assignee, :creator, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, '', '', 86400000, 'task_created', gen_random_uuid()::text);
SQL
pgbench_measure pg_post pgbench "$WORK/pg_post.sql" -D assignee="$assignee" -D creator="$creator"
pgbench_measure pg_post pgbench_fn "$WORK/pg_post_fn.sql" -D assignee="$assignee" -D creator="$creator"
profile pg_post pgbench client pgbench -n -M prepared -c "$CONNS" -j 1 -T "$((DUR + 1))" -f "$WORK/pg_post.sql" -D assignee="$assignee" -D creator="$creator" "$PG_URL"
