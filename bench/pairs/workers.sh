# Scaling: server.workers=1 vs 2 (GET /api/task/:id, wrk). The server gets every CPU
# but the client's. A build that rejects workers=2 is recorded as not implemented.
tok=$(seed_get "d['users'][0]['token']")
n=$(nproc)
srv_cpus=$SERVER_CPU
((n > 2)) && srv_cpus="1-$((n - 1))"
rec workers layout "client CPU $CLIENT_CPU, server CPUs $srv_cpus"
if ! SERVER_CPU=$srv_cpus tms_start workers2 --set server.workers=2 2>/dev/null; then
  rec workers status_w2 not_implemented
  rec workers status not_implemented
  rec workers message "$(grep -v '^$' "$WORK/tms.workers2.log" | tail -1 | tr '\t' ' ')"
  exit 0
fi
wrk_measure workers w2 "$TMS_URL/api/task/$TASK_ID" -H "Authorization: Bearer $tok"
tms_stop
SERVER_CPU=$srv_cpus tms_start workers1 --set server.workers=1 || die "tms did not start"
wrk_measure workers w1 "$TMS_URL/api/task/$TASK_ID" -H "Authorization: Bearer $tok"
