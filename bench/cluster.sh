#!/usr/bin/env bash
# Cluster-mode durable acceptance: Breakwater single node vs Breakwater in
# cluster mode (before-ack: 250 only once PostgreSQL committed, with a
# synchronous standby on this same machine) vs Postfix 3.7, same run, same
# load tool (smtp-source), alternating.
#
#   bench/cluster.sh [ROUNDS]     (default 2; needs root for Postfix and to
#                                  run PostgreSQL as the postgres account)
#
# Case: 50 sessions, 5000 messages of 10 KiB, one connection per message;
# the upstream is down, so everything stays spooled. "PG CPU s" is the CPU
# time of every PostgreSQL process (primary, standby, their backends and
# WAL senders/receivers) during the case. Results:
# bench/results/<timestamp>/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
BW_PORT=25250
PF_PORT=25260
DOWN_PORT=25270
UP_PORT=$DOWN_PORT
PG_BIN=/usr/lib/postgresql/15/bin
PG_PRIMARY=25280
PG_STANDBY=25281
cargo build --release --quiet
RUN=$PWD/bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh

as_pg() { runuser -u postgres -- "$@"; }

pg_setup() {
    local dir=$RUN/pg
    mkdir -p "$dir"; chown postgres: "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/primary" -U breakwater --auth=trust -E UTF8 --no-locale > "$dir/initdb.log"
    cat >> "$dir/primary/postgresql.conf" <<EOT
listen_addresses = '127.0.0.1'
port = $PG_PRIMARY
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 8
synchronous_commit = on
synchronous_standby_names = 'ANY 1 (*)'
shared_buffers = '256MB'
EOT
    as_pg "$PG_BIN/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w start > /dev/null
    as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY" -U breakwater -X stream -R --checkpoint=fast -D "$dir/standby"
    printf "port = %s\n" "$PG_STANDBY" >> "$dir/standby/postgresql.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w start > /dev/null
    for _ in $(seq 100); do
        [ "$(as_pg psql -h 127.0.0.1 -p "$PG_PRIMARY" -U breakwater -d postgres -Atc "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync','quorum')")" = 1 ] && return 0
        sleep 0.2
    done
    echo "no synchronous standby"; exit 1
}
pg_teardown() {
    as_pg "$PG_BIN/pg_ctl" -D "$RUN/pg/standby" -m fast stop > /dev/null 2>&1 || true
    as_pg "$PG_BIN/pg_ctl" -D "$RUN/pg/primary" -m fast stop > /dev/null 2>&1 || true
}
pg_reset() {
    as_pg psql -h 127.0.0.1 -p "$PG_PRIMARY" -U breakwater -d postgres -qc \
        "TRUNCATE breakwater_recipients, breakwater_messages, breakwater_nodes" > /dev/null
    as_pg psql -h 127.0.0.1 -p "$PG_PRIMARY" -U breakwater -d postgres -qc "CHECKPOINT" > /dev/null
}
# CPU ticks of every process of the postgres account (live ones, plus what
# the postmasters collected from their exited children).
pg_ticks() {
    local total=0 pid
    for pid in $(pgrep -u postgres); do
        total=$(( total + $(awk '{print $14+$15+$16+$17}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
    done
    echo "$total"
}

CLUSTER_TOML="[cluster]
node = \"bench-a\"
database = \"postgresql://breakwater@127.0.0.1:$PG_PRIMARY/postgres\"
commit_timeout = \"10s\"
on_unavailable = \"tempfail\""

trap pg_teardown EXIT
pg_setup
printf 'hostname = "bw.bench.test"\n%s\n[[domain]]\nname = "example.com"\n' "$CLUSTER_TOML" > "$RUN/init.toml"
"$BIN" cluster init --config "$RUN/init.toml"
intake_table_header
sed -i 's/| msgs\/fsync |$/| msgs\/fsync | PG CPU s |/; s/^|---|---|---|---|---|---|---|---|---|---|$/|---|---|---|---|---|---|---|---|---|---|---|/' "$OUT"
pf_setup
label="C:50x5000x10KiB"
for round in $(seq "$ROUNDS"); do
    bw_start; run_case "$label" breakwater "$round" 50 5000 10240 "$BW_PORT"
    sed -i '$ s/$/ |/' "$OUT"
    pg_reset
    bw_start "" "$CLUSTER_TOML"
    pg0=$(pg_ticks)
    run_case "$label" breakwater+cluster "$round" 50 5000 10240 "$BW_PORT"
    pg1=$(pg_ticks)
    sed -i "\$ s/\$/ $(printf %.1f "$(echo "($pg1 - $pg0) / $TICK" | bc -l)") |/" "$OUT"
    rows=$(as_pg psql -h 127.0.0.1 -p "$PG_PRIMARY" -U breakwater -d postgres -Atc "SELECT count(*) FROM breakwater_messages")
    [ "$rows" = 5000 ] || echo "WARNING: the database holds $rows of 5000 messages" | tee -a "$OUT"
    pf_start; run_case "$label" postfix "$round" 50 5000 10240 "$PF_PORT"; pf_stop
    sed -i '$ s/$/ |/' "$OUT"
done
echo
echo "results: $OUT"
