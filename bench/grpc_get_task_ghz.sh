#!/usr/bin/env bash
# gRPC TaskService/GetTask: ghz (through server reflection) and h2load, beside REST and
# nginx HTTP/2 serving the same bytes: the `grpc` pair of bench/run (ghz runs 10
# connections x 100 concurrent calls there).
#   bench/grpc_get_task_ghz.sh [duration_s=10]
exec "$(dirname "$0")/run" --only grpc --duration "${1:-10}"
