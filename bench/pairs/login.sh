# Latency isolation: authenticated GETs alone vs while 4 clients hammer
# POST /api/auth/login (argon2id on the hash pool must not stall the loop). The hash
# time alone is the mean latency of one client logging in back to back. The storm logs
# in a user registered here (argon2id with the configured parameters).
tok=$(seed_get "d['users'][0]['token']")
email=storm@example.com
pass=storm-password-123
threads=$("$ROOT/build/tms" config | awk -F' = ' '$1 == "hash_threads" {print $2}')
rec login hash_threads "$threads"
lua=$(wrk_lua login POST "{\"email\":\"$email\",\"password\":\"$pass\"}")
tms_start login || die "tms did not start"
curl -sf -XPOST "$TMS_URL/api/auth/register" -d "{\"email\":\"$email\",\"password\":\"$pass\"}" >/dev/null ||
  die "cannot register $email"
url="$TMS_URL/api/task/$TASK_ID"
lurl="$TMS_URL/api/auth/login"

wrk_measure login alone_get "$url" -H "Authorization: Bearer $tok"
CONNS=1 wrk_measure login alone_login "$lurl" -s "$lua"
hash_ms=$(awk -F'\t' '$1 == "login" && $2 == "alone_login.mean_ms" {print $3}' "$WORK/records.tsv")
rec login hash_ms_alone "$hash_ms"
# The hash threads the server runs (issue 20: auth.hash_threads capped at its CPUs less
# one, at least 1): what they allow is the target's capacity; the configured count's
# capacity stays as information.
running=$(grep -lx 'tms-hash' /proc/"$TMS_PID"/task/*/comm 2>/dev/null | wc -l)
((running > 0)) || running=$threads
rec login hash_threads_running "$running"
rec login capacity_rps "$(python3 -c "print(round($running * 1000 / $hash_ms, 1))")"
rec login capacity_configured_rps "$(python3 -c "print(round($threads * 1000 / $hash_ms, 1))")"
# What the layout allows: the hash threads share the server's CPUs with the loop.
cores=$(taskset -c "$SERVER_CPU" nproc)
rec login server_cores "$cores"
rec login capacity_cores_rps "$(python3 -c "print(round(min($running, $cores) * 1000 / $hash_ms, 1))")"

taskset -c "$CLIENT_CPU" wrk -t1 -c4 -d"$((WARM + DUR + 2))s" --latency -s "$lua" "$lurl" > "$WORK/wrk.login.storm.txt" &
storm=$!; track "$storm"
sleep 0.5
wrk_measure login storm_get "$url" -H "Authorization: Bearer $tok"
wait "$storm"; untrack "$storm"
raw login storm_login.wrk "$WORK/wrk.login.storm.txt"
"$PY" "$TOOLS" wrk "$WORK/wrk.login.storm.txt" | while read -r k v; do rec login "storm_login.$k" "$v"; done
