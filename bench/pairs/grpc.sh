# gRPC: unary TaskService/GetTask. h2load sends gRPC frames (10 connections x 10
# streams) to TMS and to nginx's HTTP/2 serving the same response bytes with a
# grpc-status trailer (transport ceiling); REST GET of the same task with wrk at the same
# concurrency (100); ghz through server reflection (its parser rejects proto3 optional).
tok=$(seed_get "d['users'][0]['token']")
tms_start grpc || die "tms did not start"
gurl="http://$TMS_GRPC/TaskService/GetTask"
hdr=(-H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $tok")
python3 -c "
import struct, sys
m = b'\x0a' + bytes([len(sys.argv[1])]) + sys.argv[1].encode()
open(sys.argv[2], 'wb').write(b'\x00' + struct.pack('>I', len(m)) + m)" "$TASK_ID" "$WORK/grpc_req.bin"
client nghttp -d "$WORK/grpc_req.bin" "${hdr[@]}" "$gurl" > "$WORK/grpc_resp.bin"
client nghttp -v -d "$WORK/grpc_req.bin" "${hdr[@]}" "$gurl" 2>&1 | grep -q 'grpc-status: 0' ||
  die "GetTask over gRPC did not answer grpc-status 0"
mkdir -p "$WORK/www/TaskService"
cp "$WORK/grpc_resp.bin" "$WORK/www/TaskService/GetTask"
rec grpc response_bytes "$(stat -c %s "$WORK/grpc_resp.bin")"
np=$(free_port)
nginx_start grpc "server { listen 127.0.0.1:$np http2; root $WORK/www; location / { default_type application/grpc; add_trailer grpc-status 0; error_page 405 =200 \$uri; } }"
ngurl="http://127.0.0.1:$np/TaskService/GetTask"
client nghttp -d "$WORK/grpc_req.bin" "${hdr[@]}" "$ngurl" | cmp -s - "$WORK/grpc_resp.bin" ||
  die "nginx does not serve the same bytes"

h2load_measure grpc tms_h2load "$gurl" -c10 -m10 -d "$WORK/grpc_req.bin" "${hdr[@]}"
h2load_measure grpc nginx_h2load "$ngurl" -c10 -m10 -d "$WORK/grpc_req.bin" "${hdr[@]}"
profile grpc tms client h2load -t1 -c10 -m10 -D "$((DUR + 1))" -d "$WORK/grpc_req.bin" "${hdr[@]}" "$gurl"
profile grpc nginx client h2load -t1 -c10 -m10 -D "$((DUR + 1))" -d "$WORK/grpc_req.bin" "${hdr[@]}" "$ngurl"
CONNS=100 wrk_measure grpc rest "$TMS_URL/api/task/$TASK_ID" -H "Authorization: Bearer $tok"

ghz=("$BIN/ghz" --insecure --cpus 1 --connections 10 -c 100 --call TaskService.GetTask
  -d "{\"id\":\"$TASK_ID\"}" -m "{\"authorization\":\"Bearer $tok\"}")
client "${ghz[@]}" -z "${WARM}s" "$TMS_GRPC" >/dev/null
client "${ghz[@]}" -z "${DUR}s" -O json "$TMS_GRPC" > "$WORK/ghz.json"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r.pop('details', None); json.dump(r, open(sys.argv[1], 'w'))" "$WORK/ghz.json"
raw grpc tms_ghz.ghz "$WORK/ghz.json"
"$PY" "$TOOLS" ghz "$WORK/ghz.json" | while read -r k v; do rec grpc "tms_ghz.$k" "$v"; done
