# Database ceiling, writes: POST /api/task on PostgreSQL, assigned (so each create also
# writes its outbox row, and the relay and notifier then handle it) vs pgbench running
# the same two INSERTs in one transaction (one statement), and vs pgbench running TMS's
# own create statement. Events on Kafka: bench/pairs/kafka.sh.
[[ -n "$PG_URL" ]] || die "no PostgreSQL"
tok=$(seed_get "d['users'][0]['token']")
creator=$(seed_get "d['users'][0]['id']")
assignee=$(seed_get "d['users'][1]['id']")
lua=$(wrk_lua pg_post POST "{\"title\":\"Bench task\",\"description\":\"A task created over and over\",\"assignedTo\":\"$assignee\"}")
pg_mark
tms_start pg_post --set tasks.url="$PG_URL" || die "tms did not start"
wrk_measure pg_post tms "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
profile pg_post tms client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task"
tms_stop
pg_cost pg_post tms

cat > "$WORK/pg_post.sql" <<'SQL'
WITH t AS (INSERT INTO tasks (title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms, version) VALUES ('Bench task', 'A task created over and over', 'open', :assignee, :creator, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 1) RETURNING *) INSERT INTO outbox (event_id, topic, key, payload, created_at_ms) SELECT gen_random_uuid()::text, 'notifications', t.id::text, json_build_object('type', 'task_created', 'user_id', t.assigned_to, 'task_id', t.id::text, 'title', t.title)::text, t.created_at_ms FROM t;
SQL
# TMS's own create statement without an Idempotency-Key (src/io/store/pg/tasks.c,
# CREATE_PLAIN_SQL) with the values TMS binds: what the database spends on it, beside
# the plain INSERTs above.
cat > "$WORK/pg_post_tms.sql" <<'SQL'
WITH t AS (INSERT INTO tasks AS t (title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms, version) VALUES ('Bench task'::text, 'A task created over and over'::text, 'open'::text, NULLIF(:assignee::text, ''), :creator::text, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 1) RETURNING t.id, t.title, t.description, t.status, t.assigned_to, t.created_by, t.created_at_ms, t.updated_at_ms, t.version), o AS (INSERT INTO outbox (event_id, topic, key, payload, created_at_ms) SELECT gen_random_uuid()::text, 'notifications', t.id::text, json_build_object('type', 'task_created'::text, 'user_id', coalesce(t.assigned_to, ''), 'task_id', t.id::text, 'event_id', gen_random_uuid()::text, 'title', t.title, 'occurred_at', '2026-12-06T05:00:00.000Z'::text, 'assigned_by', t.created_by)::text, t.updated_at_ms FROM t WHERE 'task_created'::text <> '') SELECT 'ok'::text, t.id, t.title, t.description, t.status, t.assigned_to, t.created_by, t.created_at_ms, t.updated_at_ms, t.version FROM t;
SQL
pg_mark
pgbench_measure pg_post pgbench "$WORK/pg_post.sql" -D assignee="$assignee" -D creator="$creator"
pg_cost pg_post pgbench
pgbench_measure pg_post pgbench_tms "$WORK/pg_post_tms.sql" -D assignee="$assignee" -D creator="$creator"
profile pg_post pgbench client pgbench -n -M prepared -c "$CONNS" -j 1 -T "$((DUR + 1))" -f "$WORK/pg_post.sql" -D assignee="$assignee" -D creator="$creator" "$PG_URL"
