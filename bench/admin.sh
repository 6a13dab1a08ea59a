#!/usr/bin/env bash
# Admin API and `queue list` over a large spool (issue "Spool administration"):
# 100,000 spooled messages, pages of 100, p50/p95/max latency.
#
#   bench/admin.sh [MESSAGES]     (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
BW_PORT=25250 PF_PORT=25260 UP_PORT=25270 ADMIN_PORT=25280
cargo build --release --quiet
RUN=$PWD/bench/results/admin-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh

dir=$RUN/bw
ADMIN="[admin]
listen = \"127.0.0.1:$ADMIN_PORT\"
tokens_file = \"$dir/tokens.json\"
cli_token_file = \"$dir/admin.token\"
audit_log = \"$dir/audit.log\"
socket = \"$dir/admin.sock\""
bw_start "enabled = false" "$ADMIN"
trap bw_stop EXIT
"$BIN" token create --name bench --role admin --save --config "$dir/breakwater.toml" >/dev/null 2>&1
TOKEN=$(cat "$dir/admin.token")

t0=$(now)
smtp-source -s 50 -m "$N" -l 1024 -M bench.test -f sender@bench.test -t rcpt@example.com "127.0.0.1:$BW_PORT"
t1=$(now)
API="http://127.0.0.1:$ADMIN_PORT/api/v1"

# Cursors spread over the whole spool, from pages of 1000.
cursors=("")
next=""
while :; do
    page=$(curl -s -H "Authorization: Bearer $TOKEN" "$API/queue?limit=1000${next:+&after=$next}")
    next=$(echo "$page" | python3 -c 'import sys,json; n=json.load(sys.stdin)["next"]; print(n or "")')
    [ -z "$next" ] && break
    cursors+=("$next")
done

timed() { # label query-suffix
    local label=$1 suffix=$2 times=()
    for c in "${cursors[@]}"; do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "$API/queue?limit=100${c:+&after=$c}$suffix")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v label="$label" '{a[NR]=$1} END {printf "| %s | %d | %.1f | %.1f | %.1f |\n", label, NR, a[int(NR*0.5)]*1000, a[int(NR*0.95)]*1000, a[NR]*1000}'
}

{
    echo "## Admin run $(date -u +%FT%TZ)"; echo; machine_facts; echo
    echo "- $N messages of 1 KiB spooled in $(printf %.1f "$(echo "$t1 - $t0" | bc -l)") s; spool $(du -sh "$dir/spool" | cut -f1)"
    echo
    echo "| request (page of 100) | requests | p50 ms | p95 ms | max ms |"
    echo "|---|---|---|---|---|"
    timed "GET /api/v1/queue, cursors across the spool" ""
    timed "… with status=queued&domain=example.com" "&status=queued&domain=example.com"
    timed "… with sender=sender@bench.test&newer_than=1h" "&sender=sender@bench.test&newer_than=1h"
    echo
    s=$(now); BREAKWATER_TOKEN=$TOKEN "$BIN" queue list --json --config "$dir/breakwater.toml" | wc -l > "$RUN/count"; e=$(now)
    echo "- \`breakwater queue list --json\` over all $(cat "$RUN/count") messages: $(printf %.2f "$(echo "$e - $s" | bc -l)") s"
    s=$(now); BREAKWATER_TOKEN=$TOKEN "$BIN" queue list --config "$dir/breakwater.toml" > /dev/null; e=$(now)
    echo "- \`breakwater queue list\` (table): $(printf %.2f "$(echo "$e - $s" | bc -l)") s"
    s=$(now); BREAKWATER_TOKEN=$TOKEN "$BIN" queue shape --config "$dir/breakwater.toml" > /dev/null; e=$(now)
    echo "- \`breakwater queue shape\`: $(printf %.2f "$(echo "$e - $s" | bc -l)") s"
    s=$(now); curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics"; e=$(now)
    echo "- \`/metrics\` scrape: $(printf %.2f "$(echo "$e - $s" | bc -l)") s"
} | tee "$OUT"
