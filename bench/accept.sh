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
# Results: bench/results/<timestamp>/results.md (copy the table into
# docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
BW_PORT=25250
PF_PORT=25260
DOWN_PORT=25270   # the "upstream": nothing listens here

export DEBIAN_FRONTEND=noninteractive
if ! command -v smtp-source >/dev/null && [ ! -x /usr/sbin/smtp-source ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq && apt-get install -y -qq postfix
fi
PATH=$PATH:/usr/sbin

cargo build --release --quiet
BIN=$PWD/target/release/breakwater
RUN=$PWD/bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md

# ---- machine facts -------------------------------------------------------
{
    echo "## Run $(date -u +%FT%TZ)"
    echo
    echo "- CPU: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "- Memory: $(free -g | awk '/Mem:/{print $2}') GiB; kernel $(uname -r)"
    echo "- Spool filesystem: $(df -T "$RUN" | awk 'NR==2{print $2" on "$1}')"
    echo "- Breakwater $(git rev-parse --short HEAD), Postfix $(postconf -h mail_version 2>/dev/null || echo '?')"
    echo
    echo "| case | server | round | accepted msg/s | wall s | server CPU s | machine CPU % | peak RSS MiB | fsyncs | msgs/fsync |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$OUT"

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
total_ticks() { awk '/^cpu /{s=0; for(i=2;i<=NF;i++) s+=$i; print s}' /proc/stat; }
proc_cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# ---- Breakwater ----------------------------------------------------------
bw_start() {
    local dir=$RUN/bw
    rm -rf "$dir"; mkdir -p "$dir"
    cat > "$dir/breakwater.toml" <<EOF
hostname = "bw.bench.test"
[smtp]
listen = ["127.0.0.1:$BW_PORT"]
max_connections_per_ip = 1000
tls_cert = "$dir/cert.pem"
tls_key = "$dir/key.pem"
[spool]
dir = "$dir/spool"
[[domain]]
name = "example.com"
upstream = "127.0.0.1:$DOWN_PORT"
EOF
    "$BIN" serve --config "$dir/breakwater.toml" 2> "$dir/log" &
    BW_PID=$!
    for _ in $(seq 100); do grep -q "breakwater ready" "$dir/log" && return 0; sleep 0.1; done
    echo "breakwater did not start:"; cat "$dir/log"; exit 1
}
bw_stop() {
    kill -TERM "$BW_PID"; wait "$BW_PID" || true
}

# ---- Postfix (configured as in shared/reference/postfix-baseline.md) -----
pf_setup() {
    postfix stop >/dev/null 2>&1 || true
    cp /etc/postfix/master.cf.proto /etc/postfix/master.cf 2>/dev/null || true
    cat > /etc/postfix/main.cf <<EOF
compatibility_level = 3.6
myhostname = pf.bench.test
mydestination =
relay_domains = example.com
transport_maps = hash:/etc/postfix/transport
smtpd_relay_restrictions = reject_unauth_destination
mynetworks = 127.0.0.0/8
inet_interfaces = loopback-only
inet_protocols = ipv4
default_process_limit = 100
default_destination_concurrency_limit = 20
smtp_host_lookup = native
default_transport = error
maillog_file = /var/log/postfix-bench.log
alias_maps =
EOF
    echo "example.com relay:[127.0.0.1]:$DOWN_PORT" > /etc/postfix/transport
    postmap /etc/postfix/transport
    # smtpd on our port, no chroot anywhere.
    sed -i "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$PF_PORT inet n - n - - smtpd/" /etc/postfix/master.cf
    postconf -F '*/*/chroot = n' >/dev/null
    postconf -e 'smtpd_peername_lookup = no' 2>/dev/null || true
    postfix check
}
pf_start() { postsuper -d ALL >/dev/null 2>&1 || true; postfix start >/dev/null 2>&1; sleep 1; }
pf_stop() { postfix stop >/dev/null 2>&1 || true; sleep 1; postsuper -d ALL >/dev/null 2>&1 || true; }

# ---- one measurement -----------------------------------------------------
run_case() { # label server round sessions messages size port
    local label=$1 server=$2 round=$3 sessions=$4 messages=$5 size=$6 port=$7
    local pid=${BW_PID:-}
    local b0 t0 p0=0 start end b1 t1 p1=0
    b0=$(busy_ticks); t0=$(total_ticks)
    [ "$server" = breakwater ] && p0=$(proc_cpu_ticks "$pid")
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
    if [ "$server" = breakwater ]; then
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
        pf_start; run_case "$1:${2}x${3}x$(( $4 / 1024 ))KiB" postfix "$round" "$2" "$3" "$4" "$PF_PORT"; pf_stop
    done
done
echo
echo "results: $OUT"
