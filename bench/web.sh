#!/usr/bin/env bash
# Web reader over a large spool (issue "Web read access"): 100,000 spooled
# messages, 10,000 of them for one user; mailbox pages, search, and a 10 MB
# message with attachments. p50/p95/max latency in ms.
#
#   bench/web.sh [MESSAGES] [USER_MESSAGES]     (default 100000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
U=${2:-10000}
BW_PORT=25350 PF_PORT=25360 UP_PORT=25370 ADMIN_PORT=25380 WEB_PORT=25390
cargo build --release --quiet
RUN=$PWD/bench/results/web-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
OUT=$RUN/results.md
source bench/lib.sh

dir=$RUN/bw
SECTIONS=$(admin_web_sections "$dir")
bw_start "enabled = false" "$SECTIONS"
trap bw_stop EXIT
PASSWORD="bench password 123"
echo "$PASSWORD" | "$BIN" user add alice@example.com --password-stdin --config "$dir/breakwater.toml" >/dev/null

t0=$(now)
smtp-source -s 50 -m "$((N - U))" -l 2048 -S "bench message for others" -M bench.test -f sender@bench.test -t other@example.com "127.0.0.1:$BW_PORT"
smtp-source -s 50 -m "$((U - 100))" -l 2048 -S "bench message for alice" -M bench.test -f sender@bench.test -t alice@example.com "127.0.0.1:$BW_PORT"
t1=$(now)
# 100 messages with a rare word in the body, and one 10 MB message with
# an HTML body and two attachments (6 MB + 1.5 MB binary, base64 in transit).
BIG_ID=$(python3 - "$BW_PORT" <<'PY'
import email.policy, smtplib, sys, os
from email.message import EmailMessage
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port)
for i in range(100):
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "orders@bench.test", "alice@example.com", f"order {i}"
    m.set_content(f"Please pay invoice needle7781 number {i}.\n" + "filler text " * 100)
    s.send_message(m)
m = EmailMessage()
m["From"], m["To"], m["Subject"] = "reports@bench.test", "alice@example.com", "big report"
m.set_content("See the attached report.\n" * 1000)
m.add_alternative("<html><body>" + "<p>Quarterly <b>numbers</b> table row</p>\n" * 20000 + "</body></html>", subtype="html")
m.add_attachment(os.urandom(6 * 1024 * 1024), maintype="application", subtype="octet-stream", filename="data.bin")
m.add_attachment(os.urandom(1536 * 1024), maintype="application", subtype="pdf", filename="報告書.pdf")
s.mail("reports@bench.test")
s.rcpt("alice@example.com")
code, reply = s.data(m.as_bytes(policy=email.policy.SMTP))
assert code == 250, (code, reply)
print(reply.decode().split()[-1])
s.quit()
PY
)
RSS0=$(awk '/VmRSS/{print $2}' "/proc/$BW_PID/status")

{
    echo "## Web reader run $(date -u +%FT%TZ)"; echo; machine_facts; echo
    echo "- $N messages spooled ($U for the signed-in user; 2 KiB each) in $(printf %.1f "$(echo "$t1 - $t0" | bc -l)") s; spool $(du -sh "$dir/spool" | cut -f1)"
    echo "- big message $BIG_ID: $(curl -s -H "Authorization: Bearer $("$BIN" token create --name bench --role viewer --config "$dir/breakwater.toml" 2>/dev/null)" "http://127.0.0.1:$ADMIN_PORT/api/v1/queue/$BIG_ID" | python3 -c 'import sys,json; print(json.load(sys.stdin)["size"], "bytes")')"
    echo
    echo "| request | requests | p50 ms | p95 ms | max ms |"
    echo "|---|---|---|---|---|"
    python3 bench/web_client.py "http://127.0.0.1:$WEB_PORT" alice@example.com "$PASSWORD" "$BIG_ID"
    echo
    echo "- server RSS: $((RSS0 / 1024)) MiB before the web requests, $(( $(awk '/VmRSS/{print $2}' "/proc/$BW_PID/status") / 1024 )) MiB after"
} | tee "$OUT"
