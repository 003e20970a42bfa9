# Group commit on SQLite (issue 20): POST /api/task assigned (task + outbox row, then the
# relay, the notifier's inbox record and the mark-sent, all on the same SQLite writer) vs
# bench/sqlite_ref.c doing the same two INSERTs, one transaction each, with TMS's pragmas
# (WAL, synchronous=FULL), from CONNS threads with a connection each (the target's
# reference) and from one thread (info: SQLite has one writer, so that is its best).
rec sqlite_post conns "$CONNS"
tok=$(seed_get "d['users'][0]['token']")
creator=$(seed_get "d['users'][0]['id']")
assignee=$(seed_get "d['users'][1]['id']")
lua=$(wrk_lua sqlite_post POST "{\"title\":\"Bench task\",\"description\":\"A task created over and over\",\"assignedTo\":\"$assignee\"}")
tms_start sqlite_post || die "tms did not start"
wrk_measure sqlite_post tms "$TMS_URL/api/task" -s "$lua" -H "Authorization: Bearer $tok"
c=$(curl -sf "$TMS_METRICS_URL" | awk '/^tms_sqlite_commits_total/ {c = $2} /^tms_sqlite_group_writes_total/ {w = $2} END {if (c > 0) printf "%.1f", w / c}')
[[ -n "$c" ]] && rec sqlite_post writes_per_commit "$c"
profile sqlite_post tms client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -s "$lua" -H "Authorization: Bearer $tok" "$TMS_URL/api/task"
tms_stop

cc -O2 -o "$WORK/sqlite_ref" "$ROOT/bench/sqlite_ref.c" -lsqlite3 -lpthread || die "cannot build bench/sqlite_ref.c"
rm -rf "$WORK/refdata"
"$TMS_BIN" migrate --create --set data.dir="$WORK/refdata" 2>/dev/null || die "tms migrate failed"
for n in "$CONNS" 1; do
  side=ref_c$n
  server "$WORK/sqlite_ref" "$WORK/refdata/tms.db" "$n" "$WARM" "$assignee" "$creator" >/dev/null
  server "$WORK/sqlite_ref" "$WORK/refdata/tms.db" "$n" "$DUR" "$assignee" "$creator" > "$WORK/sqlite_ref.$n.txt"
  raw sqlite_post "$side" "$WORK/sqlite_ref.$n.txt"
  read -r _ creates _ failures _ _ _ rps < "$WORK/sqlite_ref.$n.txt"
  rec sqlite_post "$side.rps" "$rps"
  rec sqlite_post "$side.failures" "$failures"
done
