#!/usr/bin/env bash
# A large spool on one node (issue 18): N messages of 2 KiB spooled with the
# upstream off, then the costs that grow with the spool: a /metrics scrape,
# restart to ready after SIGTERM and after kill -9, RSS after each.
# With OLD=<git rev>, the same run is repeated with that revision's binary,
# side by side (this machine is noisy: compare within one run).
#
#   bench/scale.sh [MESSAGES]          (default 200000)
#   OLD=b28a535 bench/scale.sh 200000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
BW_PORT=25250 PF_PORT=25260 UP_PORT=25270 ADMIN_PORT=25280
cargo build --release --quiet
RUN=$PWD/bench/results/scale-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh
# Snapshots of both binaries: the old one is built in a worktree sharing
# this tree's target dir (only the breakwater crate recompiles), which
# leaves target/release/breakwater as the old build until the next cargo build.
cp "$BIN" "$RUN/breakwater-new"
BIN=$RUN/breakwater-new
if [ -n "${OLD:-}" ]; then
    git worktree add -f "$RUN/old-src" "$OLD" >/dev/null 2>&1
    (cd "$RUN/old-src" && CARGO_TARGET_DIR=$OLDPWD/target cargo build --release --quiet)
    cp target/release/breakwater "$RUN/breakwater-old"
    git worktree remove --force "$RUN/old-src"
    OLD_BIN=$RUN/breakwater-old
fi

rss_mb() { awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status"; }
ready_after() { # sets READY_S: seconds from launch until "breakwater ready"
    local dir=$RUN/bw s before; s=$(now)
    before=$(grep -c "breakwater ready" "$dir/log" || true)
    "$BIN" serve --config "$dir/breakwater.toml" >/dev/null 2>> "$dir/log" &
    BW_PID=$!
    until [ "$(grep -c "breakwater ready" "$dir/log" || true)" -gt "$before" ]; do sleep 0.05; done
    READY_S=$(printf %.1f "$(echo "$(now) - $s" | bc -l)")
}
scrape_ms() { # median of 5 scrapes
    for _ in 1 2 3 4 5; do
        curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$ADMIN_PORT/metrics"
    done | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[3]*1000}'
}

measure() { # label
    local label=$1 dir=$RUN/bw t0 t1
    bw_start "enabled = false" "[admin]
listen = \"127.0.0.1:$ADMIN_PORT\"
tokens_file = \"$dir/tokens.json\"
cli_token_file = \"$dir/admin.token\"
audit_log = \"$dir/audit.log\"
socket = \"$dir/admin.sock\""
    t0=$(now)
    smtp-source -s 40 -m "$N" -l 2048 -M bench.test -f sender@bench.test -t rcpt@example.com "127.0.0.1:$BW_PORT"
    t1=$(now)
    local rate rss scrape term_s term_rss kill_s kill_rss
    rate=$(printf %.0f "$(echo "$N / ($t1 - $t0)" | bc -l)")
    rss=$(rss_mb "$BW_PID"); scrape=$(scrape_ms)
    kill -TERM "$BW_PID"; wait "$BW_PID" || true
    ready_after; term_s=$READY_S; sleep 1; term_rss=$(rss_mb "$BW_PID")
    kill -9 "$BW_PID"; wait "$BW_PID" 2>/dev/null || true
    ready_after; kill_s=$READY_S; sleep 1; kill_rss=$(rss_mb "$BW_PID")
    local scrape_after; scrape_after=$(scrape_ms)
    bw_stop
    echo "| $label | $rate | $rss | $scrape | $term_s | $term_rss | $kill_s | $kill_rss | $scrape_after |" >> "$RUN/rows"
}

: > "$RUN/rows"
measure "new ($(git rev-parse --short HEAD))"
if [ -n "${OLD:-}" ]; then
    BIN=$OLD_BIN measure "old ($OLD)"
fi
{
    echo "## Scale run $(date -u +%FT%TZ): $N messages of 2 KiB, upstream off"; echo; machine_facts; echo
    echo "| binary | intake msg/s (40 sessions) | RSS after spooling MB | /metrics ms | ready after SIGTERM s | RSS MB | ready after kill -9 s | RSS MB | /metrics after restarts ms |"
    echo "|---|---|---|---|---|---|---|---|---|"
    cat "$RUN/rows"
} | tee "$OUT"
rm -rf "$RUN/bw/spool" "$RUN"/breakwater-*
