# Shared by the bench scripts: machine facts, CPU counters, and starting
# Breakwater and Postfix (configured as in shared/reference/postfix-baseline.md).
# Expects: RUN (results dir), BW_PORT, PF_PORT, UP_PORT (the upstream port).

export DEBIAN_FRONTEND=noninteractive
if [ ! -x /usr/sbin/smtp-source ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq && apt-get install -y -qq postfix
fi
PATH=$PATH:/usr/sbin
BIN=$PWD/target/release/breakwater
TICK=$(getconf CLK_TCK)

machine_facts() {
    echo "- CPU: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "- Memory: $(free -g | awk '/Mem:/{print $2}') GiB; kernel $(uname -r)"
    echo "- Spool filesystem: $(df -T "$RUN" | awk 'NR==2{print $2" on "$1}')"
    echo "- Breakwater $(git rev-parse --short HEAD), Postfix $(postconf -h mail_version 2>/dev/null || echo '?')"
}

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
total_ticks() { awk '/^cpu /{s=0; for(i=2;i<=NF;i++) s+=$i; print s}' /proc/stat; }
proc_cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
now() { date +%s.%N; }

# No DNS on the bench machine: by default SPF/DKIM/DMARC are off, or they
# would measure resolver timeouts, not Breakwater. dns_start gives them a
# loopback dnsmasq with the bench sender's records instead.
BW_NO_AUTH=$'[trust]\nauthenticate = false'
BW_TRUST=$BW_NO_AUTH
DNS_PORT=25353

# dns_start: SPF (-all, our address passes) and DMARC (p=none) for bench.test;
# every other .test name is NXDOMAIN. Sets BW_TRUST for the next bw_start.
dns_start() {
    command -v dnsmasq >/dev/null || apt-get install -y -qq dnsmasq-base
    dnsmasq --keep-in-foreground --port=$DNS_PORT --listen-address=127.0.0.1 \
        --bind-interfaces --no-resolv --no-hosts --local=/test/ --user=nobody --pid-file= \
        --txt-record=bench.test,"v=spf1 ip4:127.0.0.1 -all" \
        --txt-record=_dmarc.bench.test,"v=DMARC1; p=none" 2> "$RUN/dnsmasq.log" &
    DNS_PID=$!
    sleep 0.3   # bound before the first lookup (dnsmasq has no ready signal here)
    BW_TRUST=$'[trust]\nauthenticate = true\n[dns]\nnameservers = ["127.0.0.1:'$DNS_PORT$'"]'
}
dns_stop() { kill "$DNS_PID" 2>/dev/null; wait "$DNS_PID" 2>/dev/null || true; BW_TRUST=$BW_NO_AUTH; }

# admin_web_sections DIR: the [admin] and [web] sections (ADMIN_PORT,
# WEB_PORT) for bw_start's second argument, with their files under DIR.
admin_web_sections() {
    cat <<EOT
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
tokens_file = "$1/tokens.json"
cli_token_file = "$1/admin.token"
audit_log = "$1/audit.log"
socket = "$1/admin.sock"
[web]
listen = "127.0.0.1:$WEB_PORT"
users_file = "$1/users.json"
EOT
}

# bw_start [extra TOML for [delivery]] [extra TOML sections]
bw_start() {
    local dir=$RUN/bw
    rm -rf "$dir"; mkdir -p "$dir"
    cat > "$dir/breakwater.toml" <<EOT
hostname = "bw.bench.test"
[smtp]
listen = ["127.0.0.1:$BW_PORT"]
${BW_PER_IP-max_connections_per_ip = 1000}
tls_cert = "$dir/cert.pem"
tls_key = "$dir/key.pem"
[spool]
dir = "$dir/spool"
${BW_TRUST}
[delivery]
${1:-}
${2:-}
[[domain]]
name = "example.com"
upstream = "127.0.0.1:$UP_PORT"
tls = "none"
EOT
    "$BIN" serve --config "$dir/breakwater.toml" 2> "$dir/log" &
    BW_PID=$!
    for _ in $(seq 100); do grep -q "breakwater ready" "$dir/log" && return 0; sleep 0.1; done
    echo "breakwater did not start:"; cat "$dir/log"; exit 1
}
bw_stop() { kill -TERM "$BW_PID" 2>/dev/null; wait "$BW_PID" 2>/dev/null || true; }
bw_sent() { grep -c 'status="sent"' "$RUN/bw/log" || true; }

# intake_table_header: the run heading, machine facts and the column heads
# of run_case's table, into $OUT.
intake_table_header() {
    {
        echo "## Run $(date -u +%FT%TZ)"
        echo
        machine_facts
        echo
        echo "| case | server | round | accepted msg/s | wall s | server CPU s | machine CPU % | peak RSS MiB | fsyncs | msgs/fsync |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
    } > "$OUT"
}

# run_case LABEL SERVER ROUND SESSIONS MESSAGES SIZE PORT: one smtp-source
# run (a new connection per message) against a started server, one table row
# in $OUT. For Breakwater (BW_PID) it also stops the server and reads its
# CPU, peak RSS, queued count and fsyncs.
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

pf_setup() {
    postfix stop >/dev/null 2>&1 || true
    cp /etc/postfix/master.cf.proto /etc/postfix/master.cf 2>/dev/null || true
    cat > /etc/postfix/main.cf <<EOT
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
EOT
    echo "example.com relay:[127.0.0.1]:$UP_PORT" > /etc/postfix/transport
    postmap /etc/postfix/transport
    sed -i "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$PF_PORT inet n - n - - smtpd/" /etc/postfix/master.cf
    postconf -F '*/*/chroot = n' >/dev/null
    postconf -e 'smtpd_peername_lookup = no' 2>/dev/null || true
    postfix check
}
pf_start() { postsuper -d ALL >/dev/null 2>&1 || true; postfix start >/dev/null 2>&1; sleep 1; }
pf_stop() { postfix stop >/dev/null 2>&1 || true; sleep 1; postsuper -d ALL >/dev/null 2>&1 || true; }
pf_sent() { grep -c 'status=sent' /var/log/postfix-bench.log 2>/dev/null || true; }

sink_start() { smtp-sink -c -u nobody "127.0.0.1:$UP_PORT" 1000 > "$RUN/sink.log" 2>&1 & SINK_PID=$!; sleep 0.3; }
sink_stop() { kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true; }

# wait_sent COUNTER_FN TARGET: poll until the counter reaches TARGET (max 600 s)
wait_sent() {
    local fn=$1 target=$2 deadline=$(( $(date +%s) + 600 ))
    while [ "$($fn)" -lt "$target" ]; do
        [ "$(date +%s)" -gt "$deadline" ] && { echo "TIMEOUT waiting for $target sent ($($fn))"; return 1; }
        sleep 0.05
    done
}
