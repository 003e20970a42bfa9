# TLS (issue 22): the same certificate (RSA 2048, a throwaway CA made with openssl) and
# TLS 1.3 on TMS's REST listener and on nginx. (1) authenticated GET /api/task/:id over
# keep-alive TLS with wrk vs nginx returning the same JSON over TLS; (2) new TLS
# handshakes per second: parallel `openssl s_time -new` (a full handshake per connection,
# no resumption, then close), the server being the bottleneck (an RSA signature per
# handshake on its one CPU, against a verification on the client's).
tok=$(seed_get "d['users'][0]['token']")
tdir="$WORK/tls"
mkdir -p "$tdir"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tdir/ca.key" -out "$tdir/ca.pem" -days 2 \
  -subj "/CN=tms bench CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$tdir/server.key" -out "$tdir/server.csr" \
  -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$tdir/ext"
openssl x509 -req -in "$tdir/server.csr" -CA "$tdir/ca.pem" -CAkey "$tdir/ca.key" -set_serial 1 \
  -days 2 -extfile "$tdir/ext" -out "$tdir/server.pem" 2>/dev/null
chmod 600 "$tdir/server.key"
tms_start tls --set http.tls_cert="$tdir/server.pem" --set http.tls_key="$tdir/server.key" \
  --set http.tls_protocols=TLSv1.3 || die "tms did not start"
hp=${TMS_URL##*:}
url="https://127.0.0.1:$hp/api/task/$TASK_ID"
body=$(curl -sf --cacert "$tdir/ca.pem" --resolve "localhost:$hp:127.0.0.1" \
  "https://localhost:$hp/api/task/$TASK_ID" -H "Authorization: Bearer $tok") || die "GET $url failed"
np=$(free_port)
nginx_start tls "server { listen 127.0.0.1:$np ssl; ssl_certificate $tdir/server.pem; ssl_certificate_key $tdir/server.key; ssl_protocols TLSv1.3; location / { default_type application/json; return 200 '$body'; } }"
[[ "$(curl -sf --cacert "$tdir/ca.pem" --resolve "localhost:$np:127.0.0.1" "https://localhost:$np/")" == "$body" ]] ||
  die "nginx does not serve the task body over TLS"
rec tls body_bytes "${#body}"
for side in tms:$hp nginx:$np; do
  c=$(openssl s_client -connect "127.0.0.1:${side#*:}" -servername localhost </dev/null 2>/dev/null |
    awk '/^New, / {print $2 " " $NF}')
  rec tls "${side%%:*}.cipher" "$c"
done

wrk_measure tls tms "$url" -H "Authorization: Bearer $tok"
wrk_measure tls nginx "https://127.0.0.1:$np/" -H "Authorization: Bearer $tok"

# stime_measure SIDE PORT: parallel s_time clients on CLIENT_CPU for DUR seconds.
stime_measure() {
  local side=$1 port=$2 i pids=()
  for i in $(seq 8); do
    client openssl s_time -connect "127.0.0.1:$port" -new -time "$WARM" >/dev/null 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  pids=()
  for i in $(seq 8); do
    client openssl s_time -connect "127.0.0.1:$port" -new -time "$DUR" > "$WORK/stime.$side.$i.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  cat "$WORK"/stime."$side".*.txt > "$WORK/stime.$side.txt"
  raw tls "$side.s_time" "$WORK/stime.$side.txt"
  "$PY" "$TOOLS" stime "$WORK"/stime."$side".[0-9]*.txt | while read -r k v; do rec tls "$side.$k" "$v"; done
}
stime_measure tms_hs "$hp"
stime_measure nginx_hs "$np"
profile tls tms client wrk -t1 -c"$CONNS" -d"$((DUR + 1))s" -H "Authorization: Bearer $tok" "$url"
