#!/usr/bin/env bash
# GET /api/task/:id with tasks on PostgreSQL (pipelined and not) beside pgbench -M
# prepared running the same SELECT: the `pg_get` pair of bench/run.
#   bench/get_task_pg_vs_pgbench.sh [duration_s=10] [clients=64]
exec "$(dirname "$0")/run" --only pg_get --duration "${1:-10}" --conns "${2:-64}"
