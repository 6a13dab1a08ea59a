#!/usr/bin/env bash
# End-to-end relay throughput and backlog drain: Breakwater vs Postfix 3.7,
# same run, both relaying to Postfix's smtp-sink on loopback.
#
#   bench/relay.sh [ROUNDS]     (default 1; needs root for Postfix)
#   CASES="D" bench/relay.sh 3  (only some of the cases)
#
# Cases (smtp-source: one connection + EHLO per message):
#   A: 50 sessions, 10000 messages, 10 KiB     end-to-end (until the sink has all)
#   B: 20 sessions,  2000 messages, 100 KiB    end-to-end
#   D: drain — 20000 x 10 KiB accepted while the sink is down; then the sink
#      comes back. Breakwater flushes by itself (probe); Postfix gets
#      `postqueue -f` right away (otherwise it waits for its queue run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
CASES=${CASES:-A B D}
BW_PORT=25250 PF_PORT=25260 UP_PORT=25270
cargo build --release --quiet
RUN=$PWD/bench/results/relay-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh

{
    echo "## Relay run $(date -u +%FT%TZ)"; echo; machine_facts; echo
    echo "| case | server | round | accepted msg/s | end-to-end msg/s | first delivery after sink up (s) | drain msg/s | wall s | machine CPU % |"
    echo "|---|---|---|---|---|---|---|---|---|"
} > "$OUT"

source_load() { # sessions messages size port
    smtp-source -s "$1" -m "$2" -l "$3" -M bench.test -f sender@bench.test -t rcpt@example.com "127.0.0.1:$4" \
        > "$RUN/source.log" 2>&1
    if [ -s "$RUN/source.log" ]; then echo "WARNING: smtp-source errors:"; head -3 "$RUN/source.log"; fi
}
row() { printf '| %s | %s | %s | %s | %s | %s | %s | %.1f | %.0f |\n' "$@" | tee -a "$OUT"; }
rate() { printf %.0f "$(echo "$1 / ($3 - $2)" | bc -l)"; }
cpu_pct() { echo "100 * ($2 - $1) / ($4 - $3)" | bc -l; }

# Same destination concurrency as the Postfix setup (20).
BW_DELIVERY=$'concurrency = 40\nper_upstream = 20'

PF_BASE=0
pf_since() { echo $(( $(pf_sent) - PF_BASE )); }

pf_setup
for round in $(seq "$ROUNDS"); do
    for case in "A 50 10000 10240" "B 20 2000 102400"; do
        set -- $case
        [[ " $CASES " == *" $1 "* ]] || continue
        label="$1: $2 x $3 x $(( $4 / 1024 )) KiB"
        # Breakwater
        sink_start; bw_start "$BW_DELIVERY"
        b0=$(busy_ticks); c0=$(total_ticks); t0=$(now)
        source_load "$2" "$3" "$4" "$BW_PORT"; t1=$(now)
        wait_sent bw_sent "$3"; t2=$(now); b1=$(busy_ticks); c1=$(total_ticks)
        bw_stop; sink_stop
        row "$label" breakwater "$round" "$(rate "$3" "$t0" "$t1")" "$(rate "$3" "$t0" "$t2")" - - "$(echo "$t2 - $t0" | bc -l)" "$(cpu_pct "$b0" "$b1" "$c0" "$c1")"
        # Postfix
        sink_start; pf_start; PF_BASE=$(pf_sent)
        b0=$(busy_ticks); c0=$(total_ticks); t0=$(now)
        source_load "$2" "$3" "$4" "$PF_PORT"; t1=$(now)
        wait_sent pf_since "$3"; t2=$(now); b1=$(busy_ticks); c1=$(total_ticks)
        pf_stop; sink_stop
        row "$label" postfix "$round" "$(rate "$3" "$t0" "$t1")" "$(rate "$3" "$t0" "$t2")" - - "$(echo "$t2 - $t0" | bc -l)" "$(cpu_pct "$b0" "$b1" "$c0" "$c1")"
    done

    [[ " $CASES " == *" D "* ]] || continue
    N=20000
    label="D: drain $N x 10 KiB"
    # Breakwater: upstream down while accepting; it marks the upstream down,
    # parks the mail and probes every 3 s (the default probe_interval).
    bw_start "$BW_DELIVERY"
    source_load 50 "$N" 10240 "$BW_PORT"
    sleep 6
    b0=$(busy_ticks); c0=$(total_ticks); t0=$(now)
    sink_start
    wait_sent bw_sent 1; t1=$(now)
    wait_sent bw_sent "$N"; t2=$(now); b1=$(busy_ticks); c1=$(total_ticks)
    bw_stop; sink_stop
    row "$label" breakwater "$round" - - "$(printf %.2f "$(echo "$t1 - $t0" | bc -l)")" "$(rate "$N" "$t0" "$t2")" "$(echo "$t2 - $t0" | bc -l)" "$(cpu_pct "$b0" "$b1" "$c0" "$c1")"
    # Postfix: same, then `postqueue -f` at once.
    pf_start; PF_BASE=$(pf_sent)
    source_load 50 "$N" 10240 "$PF_PORT"
    sleep 6
    b0=$(busy_ticks); c0=$(total_ticks); t0=$(now)
    sink_start
    postqueue -f
    wait_sent pf_since 1; t1=$(now)
    wait_sent pf_since "$N"; t2=$(now); b1=$(busy_ticks); c1=$(total_ticks)
    pf_stop; sink_stop
    row "$label" "postfix (postqueue -f)" "$round" - - "$(printf %.2f "$(echo "$t1 - $t0" | bc -l)")" "$(rate "$N" "$t0" "$t2")" "$(echo "$t2 - $t0" | bc -l)" "$(cpu_pct "$b0" "$b1" "$c0" "$c1")"
done
echo; echo "results: $OUT"
