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

intake_table_header

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
