#!/usr/bin/env python3
"""Times the web reader's pages for bench/web.sh: sign in, then list pages,
search (cold and warm summary cache) and open a large message.

usage: web_client.py BASE USER PASSWORD BIG_ID [TERMS]
BIG_ID "-" skips the large message; TERMS (comma-separated) replaces the
default search terms. Prints Markdown table rows."""
import http.client, re, statistics, sys, time, urllib.parse

base, user, password, big_id = sys.argv[1:5]
terms = sys.argv[5].split(",") if len(sys.argv) > 5 else ["needle7781", "bench", "zzzznothing"]
host = urllib.parse.urlparse(base).netloc
conn = http.client.HTTPConnection(host, timeout=60)
cookies = {}

def request(method, path, body=None):
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    if body is not None:
        body = urllib.parse.urlencode(body)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    start = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    took = (time.perf_counter() - start) * 1000
    for k, v in response.getheaders():
        if k.lower() == "set-cookie":
            name, _, value = v.split(";")[0].partition("=")
            cookies[name] = value
    return response.status, data, took

status, page, _ = request("GET", "/login")
csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
status, _, _ = request("POST", "/login", {"address": user, "password": password, "csrf": csrf, "next": "/mail"})
assert status == 303, status

def row(label, times):
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(f"| {label} | {len(times)} | {statistics.median(times):.1f} | {p95:.1f} | {times[-1]:.1f} |")

# The very first search decodes every message of the user (cold cache).
status, data, took = request("GET", "/mail?q=" + urllib.parse.quote(terms[0]))
assert status == 200, status
row("search right after start, cold cache (decodes all the user's messages)", [took])

status, first, _ = request("GET", "/mail")
total = int(re.search(rb"(\d+) messages", first).group(1))
pages = (total + 49) // 50
for label in ("mailbox pages, first visit", "mailbox pages, again"):
    times = []
    for page in range(pages):
        status, _, took = request("GET", f"/mail?page={page}")
        assert status == 200, status
        times.append(took)
    row(f"{label}: all {pages} pages of 50 of {total}", times)

for term in terms:
    label = f"search for {term!r}"
    times = []
    for _ in range(30):
        status, data, took = request("GET", "/mail?q=" + urllib.parse.quote(term))
        assert status == 200, status
        times.append(took)
    found = re.search(rb"(\d+) messages", data).group(1).decode()
    row(f"{label} ({found} hits), first page", times)

for label, path in [] if big_id == "-" else (("open the 10 MB message (headers, text, attachment list)", f"/mail/{big_id}"),
                    ("its HTML body frame (sanitised)", f"/mail/{big_id}/body"),
                    ("download its 6 MB attachment", f"/mail/{big_id}/part/0")):
    times = []
    for _ in range(20):
        status, data, took = request("GET", path)
        assert status == 200, (status, path)
        times.append(took)
    row(f"{label} [{len(data)} bytes]", times)
