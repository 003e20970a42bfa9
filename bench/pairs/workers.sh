# Scaling: server.workers=1 vs 2 (GET /api/task/:id, wrk). The server gets every CPU
# but the client's.
tok=$(seed_get "d['users'][0]['token']")
n=$(nproc)
srv_cpus=$SERVER_CPU
((n > 2)) && srv_cpus="1-$((n - 1))"
rec workers layout "client CPU $CLIENT_CPU, server CPUs $srv_cpus"
SERVER_CPU=$srv_cpus tms_start workers2 --set server.workers=2 || die "tms did not start with server.workers=2"
wrk_measure workers w2 "$TMS_URL/api/task/$TASK_ID" -H "Authorization: Bearer $tok"
tms_stop
SERVER_CPU=$srv_cpus tms_start workers1 --set server.workers=1 || die "tms did not start"
wrk_measure workers w1 "$TMS_URL/api/task/$TASK_ID" -H "Authorization: Bearer $tok"
