#!/usr/bin/env bash
# A million spooled messages on one node (issue 18's goals): mixed sizes
# (2-100 KiB, mean ~8 KiB), 10,000 recipients, one of them with 20,000
# messages, upstream off. Measures acceptance as the spool fills (first vs
# last 5 %), disk against message bytes, RSS, /metrics, admin list pages
# with each filter, `queue shape`, the heavy user's web mailbox and search,
# and restart to ready after SIGTERM and after kill -9 (RSS after each).
# No Postfix counterpart: Postfix has none of these views; intake against
# Postfix is bench/accept.sh.
#
#   bench/million.sh [MESSAGES]        (default 1000000; ~8 GB of disk)
#   REUSE=bench/results/million-… bench/million.sh [MESSAGES]
#        measures again on the spool an earlier run filled (no new fill; its
#        first start is then a restart after that run's clean shutdown)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
BW_PORT=25450 PF_PORT=25460 UP_PORT=25470 ADMIN_PORT=25480 WEB_PORT=25490
cargo build --release --quiet
cargo build --release --quiet --example smtp_load
LOAD=$PWD/target/release/examples/smtp_load
RUN=$PWD/bench/results/million-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh
cp "$BIN" "$RUN/breakwater"
BIN=$RUN/breakwater
dir=$RUN/bw

SECTIONS=$(admin_web_sections "$dir")
rss_mb() { awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status"; }
ms() { printf %.0f "$(echo "($2 - $1) * 1000" | bc -l)"; }
ready_after() { # (re)start the server; sets READY_S
    local s before; s=$(now)
    before=$(grep -c "breakwater ready" "$dir/log" || true)
    "$BIN" serve --config "$dir/breakwater.toml" >/dev/null 2>> "$dir/log" &
    BW_PID=$!
    until [ "$(grep -c "breakwater ready" "$dir/log" || true)" -gt "$before" ]; do sleep 0.05; done
    READY_S=$(printf %.1f "$(echo "$(now) - $s" | bc -l)")
}
percentiles() { # label: reads seconds on stdin, prints a table row in ms
    sort -n | awk -v label="$1" '{a[NR]=$1} END {printf "| %s | %d | %.1f | %.1f | %.1f |\n", label, NR, a[int(NR*0.5)+0]*1000, a[int(NR*0.95)]*1000, a[NR]*1000}'
}
PASSWORD="bench password 123"
if [ -n "${REUSE:-}" ]; then
    dir=$(cd "$REUSE" && pwd)/bw
    cp "$REUSE/load.log" "$RUN/load.log"
    ready_after; FIRST_START_S=$READY_S
else
    bw_start "enabled = false" "$SECTIONS"
    echo "$PASSWORD" | "$BIN" user add heavy@example.com --password-stdin --config "$dir/breakwater.toml" >/dev/null
    "$BIN" token create --name bench --role admin --save --config "$dir/breakwater.toml" >/dev/null 2>&1
    FIRST_START_S=-
    "$LOAD" "127.0.0.1:$BW_PORT" "$N" 40 | tee "$RUN/load.log"
fi
trap 'kill -TERM $BW_PID 2>/dev/null || true' EXIT
TOKEN=$(cat "$dir/admin.token")
API="http://127.0.0.1:$ADMIN_PORT/api/v1"
FIRST=$(grep -m1 '^progress' "$RUN/load.log" | awk '{print $4}')
LAST=$(grep '^progress' "$RUN/load.log" | tail -1 | awk '{print $4}')
RSS_FILLED=$(rss_mb "$BW_PID")
SPOOL_BYTES=$(du -sb "$dir/spool/segments" "$dir/spool/large" | awk '{s+=$1} END {printf "%.0f", s}')
INDEX_BYTES=$(du -sb "$dir/spool/index" | awk '{printf "%.0f", $1}')
MESSAGE_BYTES=$("$LOAD" --bytes "$N")

metrics_ms=$(for _ in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$ADMIN_PORT/metrics"; done | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[3]*1000}')

# Cursors spread over the spool: every 10th page of 1000.
cursors=("")
next=""; pages=0
while :; do
    page=$(curl -s -H "Authorization: Bearer $TOKEN" "$API/queue?limit=1000${next:+&after=$next}")
    next=$(echo "$page" | python3 -c 'import sys,json; n=json.load(sys.stdin)["next"]; print(n or "")')
    [ -z "$next" ] && break
    pages=$((pages + 1))
    [ $((pages % 10)) -eq 0 ] && cursors+=("$next")
done
list_row() { # label query-suffix
    for c in "${cursors[@]}"; do
        curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "$API/queue?limit=100${c:+&after=$c}$2"
    done | percentiles "$1"
}

exec > >(tee "$OUT")
{
    echo "## A million messages: run $(date -u +%FT%TZ)"; echo; machine_facts; echo
    echo "- $N messages spooled by \`examples/smtp_load\` (40 sessions): $(tail -1 "$RUN/load.log")${REUSE:+ (the fill of $REUSE; this run started on its spool in $FIRST_START_S s)}"
    echo "- acceptance: first 5 % of the run $FIRST msg/s, last 5 % $LAST msg/s (ratio $(printf %.2f "$(echo "$LAST / $FIRST" | bc -l)"))"
    echo "- disk: segments + large files $((SPOOL_BYTES / 1048576)) MiB for $((MESSAGE_BYTES / 1048576)) MiB of messages as sent (ratio $(printf %.2f "$(echo "$SPOOL_BYTES / $MESSAGE_BYTES" | bc -l)")); with the sled index ($((INDEX_BYTES / 1048576)) MiB): $(printf %.2f "$(echo "($SPOOL_BYTES + $INDEX_BYTES) / $MESSAGE_BYTES" | bc -l)")"
    echo "- RSS $([ -n "${REUSE:-}" ] && echo "after starting on the filled spool" || echo "after spooling"): $RSS_FILLED MB"
    echo "- \`/metrics\`: $metrics_ms ms (median of 5)"
    echo
    echo "| admin request (page of 100) | requests | p50 ms | p95 ms | max ms |"
    echo "|---|---|---|---|---|"
    list_row "GET /api/v1/queue, cursors across the spool" ""
    list_row "… status=queued&domain=example.com" "&status=queued&domain=example.com"
    list_row "… recipient=heavy@example.com (1 in 50)" "&recipient=heavy@example.com"
    list_row "… sender=load@bench.test&newer_than=1h" "&sender=load@bench.test&newer_than=1h"
    list_row "… subject=負荷試験 (every message)" "&subject=%E8%B2%A0%E8%8D%B7%E8%A9%A6%E9%A8%93"
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "$API/queue?limit=100&recipient=user1@example.com"
    done | percentiles "… recipient=user1@example.com (rare: 98 of $N), first page"
    echo
    s=$(now); BREAKWATER_TOKEN=$TOKEN "$BIN" queue shape --config "$dir/breakwater.toml" > /dev/null; e=$(now)
    echo "- \`breakwater queue shape\`: $(ms "$s" "$e") ms"
    echo
    # The search index follows the spool; each time it falls behind the
    # spool's feed it makes one more full pass. Wait until the last pass is
    # done (searches scan the mailbox until the first one is).
    s=$(now)
    while :; do
        behind=$(grep -c "fell behind the spool" "$dir/log" || true)
        passes=$(grep -c "search index follows the spool" "$dir/log" || true)
        [ "$passes" -gt "$behind" ] && break
        sleep 1
    done
    SEARCH_BYTES=$(du -sb "$dir/spool/search" | awk '{printf "%.0f", $1}')
    echo "- search index: waited $(ms "$s" "$(now)") ms after the measurements above for its pass to finish; full passes so far $passes (falling behind the feed $behind times); last pass: $(grep "search index follows the spool" "$dir/log" | tail -1 | grep -o 'added=[0-9]* deleted=[0-9]* took_ms=[0-9]*'); on disk $((SEARCH_BYTES / 1048576)) MiB ($(printf %.2f "$(echo "$SEARCH_BYTES / $MESSAGE_BYTES" | bc -l)") of the message bytes)"
    echo
    echo "| web request (heavy@example.com, 20,000 messages) | requests | p50 ms | p95 ms | max ms |"
    echo "|---|---|---|---|---|"
    python3 bench/web_client.py "http://127.0.0.1:$WEB_PORT" heavy@example.com "$PASSWORD" - "負荷試験,load,zzzznothing"
    echo
    RSS_BEFORE=$(rss_mb "$BW_PID")
    kill -TERM "$BW_PID"; wait "$BW_PID" || true
    ready_after; TERM_S=$READY_S; sleep 2; TERM_RSS=$(rss_mb "$BW_PID")
    kill -9 "$BW_PID"; wait "$BW_PID" 2>/dev/null || true
    ready_after; KILL_S=$READY_S; sleep 2; KILL_RSS=$(rss_mb "$BW_PID")
    # The same crash with a cold page cache (a rebooted host): every file
    # the start reads comes from the disk.
    kill -9 "$BW_PID"; wait "$BW_PID" 2>/dev/null || true
    sync; echo 3 > /proc/sys/vm/drop_caches
    ready_after; COLD_S=$READY_S; sleep 2; COLD_RSS=$(rss_mb "$BW_PID")
    kill -TERM "$BW_PID"; wait "$BW_PID" || true
    ready_after; TERM2_S=$READY_S; sleep 2; TERM2_RSS=$(rss_mb "$BW_PID")
    echo "- RSS before the restarts: $RSS_BEFORE MB"
    echo "- restart to ready after SIGTERM: $TERM_S s (RSS then $TERM_RSS MB); after kill -9: $KILL_S s ($KILL_RSS MB); after kill -9 with a cold page cache: $COLD_S s ($COLD_RSS MB); after SIGTERM again: $TERM2_S s ($TERM2_RSS MB)"
    DIGEST_BYTES=$(find "$dir/spool/segments" -name '*.digest' -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
    echo "- segment digests: $(find "$dir/spool/segments" -name '*.digest' | wc -l) of $(find "$dir/spool/segments" -name '*.seg' | wc -l) segments, $((DIGEST_BYTES / 1048576)) MiB (counted in the disk figures above)"
    echo "- start-up log lines:"
    grep -E "spool open|spool: (resumed|index|recovery)" "$dir/log" | sed 's/^/    /'
}
echo "results: $OUT"
