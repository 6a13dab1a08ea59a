#!/usr/bin/env bash
# Durable acceptance throughput: Breakwater vs Postfix 3.7, same machine, same
# run, same load tool (Postfix's smtp-source), alternating.
#
#   bench/accept.sh [ROUNDS]        (default 2 rounds; needs root for Postfix)
#
# Cases (one TCP connection + EHLO per message, as smtp-source does without -d):
#   A: 50 sessions, 10000 messages, 10 KiB
#   B: 20 sessions,  2000 messages, 100 KiB
# The upstream is down for both servers (nothing listens on it), so every
# message stays spooled: this measures intake + durable spooling only.
# "breakwater+auth" is the same with SPF (MAIL FROM and HELO), DKIM and
# DMARC checked against a loopback dnsmasq (answers cached by the resolver).
# Results: bench/results/<timestamp>/results.md (copy the table into
# docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
BW_PORT=25250
PF_PORT=25260
DOWN_PORT=25270   # the "upstream": nothing listens here

UP_PORT=$DOWN_PORT
cargo build --release --quiet
RUN=$PWD/bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh

{
    echo "## Run $(date -u +%FT%TZ)"
    echo
    machine_facts
    echo
    echo "| case | server | round | accepted msg/s | wall s | server CPU s | machine CPU % | peak RSS MiB | fsyncs | msgs/fsync |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT"

# ---- one measurement -----------------------------------------------------
run_case() { # label server round sessions messages size port
    local label=$1 server=$2 round=$3 sessions=$4 messages=$5 size=$6 port=$7
    local pid=${BW_PID:-}
    local b0 t0 p0=0 start end b1 t1 p1=0
    b0=$(busy_ticks); t0=$(total_ticks)
    [ "$server" != postfix ] && p0=$(proc_cpu_ticks "$pid")
    start=$(date +%s.%N)
    smtp-source -s "$sessions" -m "$messages" -l "$size" -M bench.test -f sender@bench.test \
        -t rcpt@example.com "127.0.0.1:$port" > "$RUN/source-$label-$server-$round.log" 2>&1
    end=$(date +%s.%N)
    if [ -s "$RUN/source-$label-$server-$round.log" ]; then
        echo "WARNING: smtp-source reported errors for $label/$server:" | tee -a "$OUT"
        head -3 "$RUN/source-$label-$server-$round.log" | tee -a "$OUT"
    fi
    b1=$(busy_ticks); t1=$(total_ticks)
    local wall rate machine cpu="n/a" rss="n/a" fsyncs="n/a" per="n/a"
    wall=$(echo "$end - $start" | bc -l)
    rate=$(echo "$messages / $wall" | bc -l)
    machine=$(echo "100 * ($b1 - $b0) / ($t1 - $t0)" | bc -l)
    if [ "$server" != postfix ]; then
        p1=$(proc_cpu_ticks "$pid")
        cpu=$(printf %.1f "$(echo "($p1 - $p0) / $TICK" | bc -l)")
        rss=$(awk '/VmHWM/{printf "%.0f", $2/1024}' "/proc/$pid/status")
        bw_stop
        local queued
        queued=$(grep -c ' queued ' "$RUN/bw/log" || true)
        if [ "$queued" != "$messages" ]; then echo "WARNING: breakwater queued $queued of $messages" | tee -a "$OUT"; fi
        fsyncs=$(grep -o 'fsyncs=[0-9]*' "$RUN/bw/log" | tail -1 | cut -d= -f2)
        per=$(printf %.1f "$(echo "$messages / $fsyncs" | bc -l)")
    fi
    printf '| %s | %s | %s | %.0f | %.1f | %s | %.0f | %s | %s | %s |\n' \
        "$label" "$server" "$round" "$rate" "$wall" "$cpu" "$machine" "$rss" "$fsyncs" "$per" | tee -a "$OUT"
}

pf_setup
for round in $(seq "$ROUNDS"); do
    for case in "A 50 10000 10240" "B 20 2000 102400"; do
        set -- $case
        bw_start; run_case "$1:${2}x${3}x$(( $4 / 1024 ))KiB" breakwater "$round" "$2" "$3" "$4" "$BW_PORT"
        dns_start; bw_start; run_case "$1:${2}x${3}x$(( $4 / 1024 ))KiB" breakwater+auth "$round" "$2" "$3" "$4" "$BW_PORT"; dns_stop
        pf_start; run_case "$1:${2}x${3}x$(( $4 / 1024 ))KiB" postfix "$round" "$2" "$3" "$4" "$PF_PORT"; pf_stop
    done
done
echo
echo "results: $OUT"
