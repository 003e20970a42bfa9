# Database ceiling, writes: POST /api/task on PostgreSQL, assigned (so each create also
# writes its outbox row, and the relay and notifier then handle it) vs pgbench running
# the same two INSERTs in one transaction (one statement), and vs pgbench calling the
# function TMS calls (tms_task_create, src/io/pg_migrations.c).
[[ -n "$PG_URL" ]] || die "no PostgreSQL"
tok=$(seed_get "d['users'][0]['token']")
creator=$(seed_get "d['users'][0]['id']")
assignee=$(seed_get "d['users'][1]['id']")
lua=$(wrk_lua pg_post POST "{\"title\":\"Bench task\",\"description\":\"A task created over and over\",\"assignedTo\":\"$assignee\"}")
tms_start pg_post --set tasks.url="$PG_URL" || die "tms did not start"
wrk_measure pg_post tms "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
profile pg_post tms client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task"
tms_stop

cat > "$WORK/pg_post.sql" <<'SQL'
WITH t AS (INSERT INTO tasks (title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms, version) VALUES ('Bench task', 'A task created over and over', 'open', :assignee, :creator, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 1) RETURNING *) INSERT INTO outbox (event_id, topic, key, payload, created_at_ms) SELECT gen_random_uuid()::text, 'notifications', t.id::text, json_build_object('type', 'task_created', 'user_id', t.assigned_to, 'task_id', t.id::text, 'title', t.title)::text, t.created_at_ms FROM t;
SQL
cat > "$WORK/pg_post_fn.sql" <<'SQL'
SELECT o_st, o_id, o_title, o_description, o_status, o_assigned_to, o_created_by, o_created_at_ms, o_updated_at_ms, o_version FROM tms_task_create('Bench task', 'A task created over and over', 'open', :assignee, :creator, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, '', '', 86400000, 'task_created', gen_random_uuid()::text);
SQL
pgbench_measure pg_post pgbench "$WORK/pg_post.sql" -D assignee="$assignee" -D creator="$creator"
pgbench_measure pg_post pgbench_fn "$WORK/pg_post_fn.sql" -D assignee="$assignee" -D creator="$creator"
profile pg_post pgbench client pgbench -n -M prepared -c "$CONNS" -j 1 -T "$((DUR + 1))" -f "$WORK/pg_post.sql" -D assignee="$assignee" -D creator="$creator" "$PG_URL"
