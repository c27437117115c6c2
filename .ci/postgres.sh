#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the tests (run as root, e.g. from .ci/run),
# then print the storage URL to give the tests as NIN_SEARCH_TEST_PG_URL. max_connections 400:
# headroom. The fleet test once went past the default 100 ("too many clients already"): its
# poll loop opened a new Optuna storage every 0.2 s, and the pytest process alone held ~74 idle
# connections (133 on the server). It polls through one storage now: 31 at the peak, all
# processes together (measured 2026-12-03 with ss while tests/test_machines.py ran).
set -euo pipefail
PORT=${PGPORT_TEST:-54329}
DIR=${PGDATA_TEST:-/tmp/nin-search-pg}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if ! su postgres -c "$BIN/pg_ctl -D $DIR status" >/dev/null 2>&1; then
  rm -rf "$DIR" && mkdir -p "$DIR" && chown postgres "$DIR"
  su postgres -c "$BIN/initdb -D $DIR -A md5 -U postgres --pwfile=<(echo nin-search-test)" >/dev/null
  su postgres -c "$BIN/pg_ctl -D $DIR -l $DIR/server.log -w -o \"-h 127.0.0.1 -p $PORT -k /tmp -c max_connections=400\" start" >/dev/null
fi
echo "postgresql://postgres:nin-search-test@127.0.0.1:$PORT/postgres"
