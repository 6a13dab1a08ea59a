#!/usr/bin/env bash
# Intake during a DNS outage, and 50 sessions from one address at the default
# per-address limit: Breakwater vs Postfix 3.7, same run, alternating.
#
#   bench/dns_outage.sh [ROUNDS]     (default 2; needs root for Postfix)
#
# Case D (DNS): 20 sessions, 10000 messages, 10 KiB, default [trust] settings
#   (SPF, DKIM, DMARC on; dns_timeout 10 s), the resolver in [dns] being
#   - "dns-healthy": a loopback dnsmasq that answers (bench/lib.sh dns_start),
#   - "dns-blackholed": bench/blackhole_dns.py, which swallows every query.
#   Goal (issue 16): blackholed >= 0.5 x healthy, every message accepted.
# Case S (sessions): smtp-source -s 50, 4000 messages, 10 KiB, with the
#   default max_connections_per_ip = 50 (no SPF). Goal: every message
#   accepted, as Postfix does with its default limit of 50.
# One TCP connection + EHLO per message; the upstream is down, so everything
# stays spooled. Results: bench/results/<timestamp>/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
BW_PORT=25250
PF_PORT=25260
DOWN_PORT=25270
BLACKHOLE_PORT=25354
UP_PORT=$DOWN_PORT
cargo build --release --quiet
RUN=$PWD/bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh

blackhole_start() {
    python3 bench/blackhole_dns.py "$BLACKHOLE_PORT" &
    HOLE_PID=$!
    sleep 0.3
    BW_TRUST=$'[trust]\nauthenticate = true\n[dns]\nnameservers = ["127.0.0.1:'$BLACKHOLE_PORT$'"]'
}
blackhole_stop() { kill "$HOLE_PID" 2>/dev/null; wait "$HOLE_PID" 2>/dev/null || true; BW_TRUST=$BW_NO_AUTH; }

intake_table_header

pf_setup
D="D:20x10000x10KiB"
S="S:50x4000x10KiB,per-ip=50"
for round in $(seq "$ROUNDS"); do
    dns_start; bw_start; run_case "$D" breakwater+dns-healthy "$round" 20 10000 10240 "$BW_PORT"; dns_stop
    blackhole_start; bw_start; run_case "$D" breakwater+dns-blackholed "$round" 20 10000 10240 "$BW_PORT"
    grep -m1 "resolver" "$RUN/bw/log" | sed 's/^/    log: /' >> "$RUN/notes.txt" || true
    blackhole_stop
    pf_start; run_case "$D" postfix "$round" 20 10000 10240 "$PF_PORT"; pf_stop

    BW_PER_IP="" bw_start; run_case "$S" breakwater "$round" 50 4000 10240 "$BW_PORT"
    refused=$(grep -c "connection refused with 421" "$RUN/bw/log" || true)
    echo "round $round: breakwater refusals at connect logged: $refused" >> "$RUN/notes.txt"
    pf_start; run_case "$S" postfix "$round" 50 4000 10240 "$PF_PORT"; pf_stop
done
echo
cat "$RUN/notes.txt" 2>/dev/null || true
echo "results: $OUT"
