#!/usr/bin/env bash
# The chaos soak (tests/chaos.rs) in its long mode:
#   bench/chaos.sh [--minutes N] [--seed S]
# Prints the ledger as the last line (acked=… delivered=… dup=… bounced=… lost=0)
# and keeps the whole output in bench/results/chaos-<date>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=60
seed=""
while (($#)); do
    case "$1" in
        --minutes) minutes="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        *) echo "usage: $0 [--minutes N] [--seed S]" >&2; exit 2 ;;
    esac
done
mkdir -p bench/results
log="bench/results/chaos-$(date -u +%Y%m%dT%H%M%SZ).log"
# Build once, then run copies: a soak restarts the server every few seconds,
# and a rebuild of the tree meanwhile must not swap the binary under test.
test_bin=$(cargo test --release --test chaos --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "chaos" and m.get("executable"):
        print(m["executable"])')
snapshot=$(mktemp -d /tmp/breakwater-chaos.XXXXXX)
trap 'rm -rf "$snapshot"' EXIT
cp target/release/breakwater "$snapshot/breakwater"
cp "$test_bin" "$snapshot/chaos"
{
    echo "# $(date -u +%FT%TZ) $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), minutes=$minutes, commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
    env CHAOS_SECONDS=$((minutes * 60)) ${seed:+CHAOS_SEED=$seed} BREAKWATER_BIN="$snapshot/breakwater" \
        "$snapshot/chaos" --nocapture 2>&1
} | tee "$log" | grep -E "^(chaos|messages:|recipients:|acked=)|test result|panicked"
echo "full output: $log"
