# Database ceiling, reads: GET /api/task/:id with tasks on PostgreSQL (pool of 4
# connections, pipelined: tasks.pipeline_depth=32, and unpipelined: 1) vs pgbench -M
# prepared running the SELECT TMS sends (src/io/store/pg/tasks.c "task_get") with CONNS clients.
[[ -n "$PG_URL" ]] || die "no PostgreSQL"
tok=$(seed_get "d['users'][0]['token']")
id=$("$PY" -c "import json; print(json.load(open('$WORK/seed_pg.json'))['task_ids'][$TASK_ID - 1])")
rec pg_get task_id "$id"
rec pg_get pool_size 4
tms_start pg_get --set tasks.url="$PG_URL" --set tasks.pipeline_depth=32 || die "tms did not start"
wrk_measure pg_get tms "$TMS_URL/api/task/$id" -H "Authorization: Bearer $tok"
profile pg_get tms client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -H "Authorization: Bearer $tok" "$TMS_URL/api/task/$id"
tms_stop
tms_start pg_get1 --set tasks.url="$PG_URL" --set tasks.pipeline_depth=1 || die "tms did not start"
wrk_measure pg_get tms_unpipelined "$TMS_URL/api/task/$id" -H "Authorization: Bearer $tok"
tms_stop

cat > "$WORK/pg_get.sql" <<SQL
\set id $id
SELECT id, title, description, status, assigned_to, created_by, created_at_ms, updated_at_ms, version FROM tasks WHERE id = :id;
SQL
pgbench_measure pg_get pgbench "$WORK/pg_get.sql"
profile pg_get pgbench client pgbench -n -M prepared -c "$CONNS" -j 1 -T "$((DUR + 1))" -f "$WORK/pg_get.sql" "$PG_URL"
