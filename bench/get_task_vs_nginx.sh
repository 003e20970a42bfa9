#!/usr/bin/env bash
# Authenticated GET /api/task/:id on TMS beside nginx serving the same JSON from memory:
# the `http` pair of bench/run (which also measures p99 at half nginx's peak rate).
#   bench/get_task_vs_nginx.sh [duration_s=10] [connections=64]
exec "$(dirname "$0")/run" --only http --duration "${1:-10}" --conns "${2:-64}"
