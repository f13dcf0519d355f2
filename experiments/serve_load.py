"""Closed-loop load on one or more scoring services: C client threads, each sending requests of K
texts (drawn from a file) one after the other. Prints one JSON line per cell and service: texts/s,
requests/s, p50 / p99 latency (ms), errors, and each round's texts/s.

usage: python3 serve_load.py URL[,URL...] TEXTS_FILE C[,C...] K[,K...] SECONDS [ROUNDS [WARMUP [CONN]]]

CONN: `keep` (default), each client keeps one HTTP/1.1 connection open for all its requests, as
a production caller's connection pool does (requests.Session, httpx.Client, Go's http.Client), or
`new`, a new connection per request, as a bare `urllib.request.urlopen` makes (about 0.2 ms more
per request on this client, for any service).

A cell is one (C, K) pair; several C and K values make every pair a cell. With several URLs
(comma-separated) the services take turns: each gets WARMUP seconds of load per cell that is not
counted (default 0), then ROUNDS rounds (default 1); in each round every cell in turn gives each
service in turn SECONDS / ROUNDS seconds. A service's figures for a cell pool its latencies and
texts over all its turns. So a slow spell of the machine (this client shares its cores) weighs on
every service alike instead of on whichever one it happened to fall on, and with several cells a
cell's turns are spread over the whole run rather than one stretch of it: its figures are the
run's average, and `round_texts_per_s` shows how far they moved from round to round.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse
import urllib.request

urls = sys.argv[1].split(",")
path, secs = sys.argv[2], float(sys.argv[5])
cells = [(int(c), int(k)) for c in sys.argv[3].split(",") for k in sys.argv[4].split(",")]
rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 1
warmup = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
conn_mode = sys.argv[8] if len(sys.argv) > 8 else "keep"
if conn_mode not in ("keep", "new"):
    sys.exit(f"CONN must be keep or new, not {conn_mode!r}")
texts = [l.rstrip("\n") for l in open(path, encoding="utf-8") if l.strip()]


def phase(url, conc, k, secs, offset):
    """`conc` clients sending `k` texts a request to `url` for `secs` seconds: (latencies in s,
    errors, wall seconds)."""
    lat, errors, lock = [], [0], threading.Lock()
    stop = time.time() + secs
    u = urllib.parse.urlsplit(url)

    def client(c):
        i = offset + c * 7919
        mine = []
        conn = None
        while time.time() < stop:
            batch = [texts[(i + j) % len(texts)] for j in range(k)]
            i += k
            body = json.dumps({"texts": batch}).encode()
            headers = {"Content-Type": "application/json"}
            t0 = time.perf_counter()
            try:
                if conn_mode == "keep":
                    if conn is None:
                        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                    conn.request("POST", u.path, body=body, headers=headers)
                    r = conn.getresponse()
                    out = json.load(r)
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}")
                else:
                    req = urllib.request.Request(url, data=body, headers=headers)
                    with urllib.request.urlopen(req, timeout=30) as r:
                        out = json.load(r)
                assert len(out["results"]) == k
                mine.append(time.perf_counter() - t0)
            except Exception:
                if conn is not None:
                    conn.close()
                    conn = None
                with lock:
                    errors[0] += 1
        if conn is not None:
            conn.close()
        with lock:
            lat.extend(mine)

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0], time.time() - t0


if warmup > 0:
    for conc, k in cells:
        for url in urls:
            phase(url, conc, k, warmup, 0)
totals = {(cell, url): ([], 0, 0.0, []) for cell in cells for url in urls}
for r in range(rounds):
    for cell in cells:
        for url in urls:
            lat, err, wall = phase(url, *cell, secs / rounds, r * 104729)
            l0, e0, w0, per = totals[(cell, url)]
            totals[(cell, url)] = (l0 + lat, e0 + err, w0 + wall, per + [round(len(lat) * cell[1] / wall, 1)])
for (conc, k), url in totals:
    lat, errors, wall, per = totals[((conc, k), url)]
    lat.sort()
    q = lambda f: 1000 * lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")
    out = {"concurrency": conc, "texts_per_request": k, "requests": len(lat),
           "texts_per_s": round(len(lat) * k / wall, 1), "p50_ms": round(q(0.5), 2),
           "p99_ms": round(q(0.99), 2), "errors": errors, "round_texts_per_s": per}
    if len(urls) > 1:
        out["url"] = url
    print(json.dumps(out))
