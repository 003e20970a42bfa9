# Memory: RSS idle, with 10,000 idle keep-alive connections (each has made one request),
# after closing them, and before/after MEM_REQUESTS GETs (h2load --h1, after a warm-up).
tok=$(seed_get "d['users'][0]['token']")
tms_start memory || die "tms did not start"
url="$TMS_URL/api/task/$TASK_ID"
sleep 1
rec memory idle_rss_kib "$(rss_kib "$TMS_PID")"
port=${TMS_URL##*:}
client "$PY" "$TOOLS" conns 127.0.0.1 "$port" 10000 "$TMS_PID" > "$WORK/conns.txt"
raw memory conns "$WORK/conns.txt"
while read -r k v; do rec memory "conns_$k" "$v"; done < "$WORK/conns.txt"
sleep 1
rec memory closed_rss_kib "$(rss_kib "$TMS_PID")"
h1=(h2load --h1 -t1 -c"$CONNS" -H "Authorization: Bearer $tok")
client "${h1[@]}" -n "$MEM_WARM" "$url" >/dev/null
rec memory before_rss_kib "$(rss_kib "$TMS_PID")"
client "${h1[@]}" -n "$MEM_REQUESTS" "$url" > "$WORK/h2load.memory.txt"
raw memory load.h2load "$WORK/h2load.memory.txt"
sleep 1
rec memory after_rss_kib "$(rss_kib "$TMS_PID")"
rec memory requests "$MEM_REQUESTS"
rec memory load_failed "$(awk '/^requests:/ {print $10}' "$WORK/h2load.memory.txt")"
