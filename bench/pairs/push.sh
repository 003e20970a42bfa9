# Push (issue 23): PUSH_SUBS Server-Sent Events subscribers of GET /api/task/events, all
# of one user, and PUSH_RATE task creates per second for PUSH_SECONDS (bench/push_fanout.py):
# commit -> delivery p50/p99 at the last subscriber of each event, and the server's RSS
# per idle subscriber. No reference program: the figures stand alone.
tok=$(seed_get "d['users'][0]['token']")
tms_start push --set push.max_subscribers_per_user=100000 || die "tms did not start"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
client "$PY" "$ROOT/bench/push_fanout.py" "$TMS_URL" "$tok" "$TMS_PID" \
  --subs "${PUSH_SUBS:-1000}" --rate "${PUSH_RATE:-100}" --seconds "${PUSH_SECONDS:-20}" \
  --latencies "$WORK/push.latencies.txt" --chart "$WORK/push.png" > "$WORK/push.txt"
raw push fanout "$WORK/push.txt"
while read -r k v; do rec push "$k" "$v"; done < "$WORK/push.txt"
mkdir -p "$ROOT/bench/results"
cp "$WORK/push.png" "$ROOT/bench/results/$STAMP-push.png"
