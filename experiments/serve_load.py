"""Closed-loop load on one or more scoring services: C client threads, each sending requests of K
texts (drawn from a file) one after the other. Prints one JSON line per service: texts/s,
requests/s, p50 / p99 latency (ms), errors.

usage: python3 serve_load.py URL[,URL...] TEXTS_FILE CONCURRENCY TEXTS_PER_REQUEST SECONDS [ROUNDS [WARMUP]]

With several URLs (comma-separated) the services take turns: each gets WARMUP seconds of load
that is not counted (default 0), then ROUNDS rounds (default 1) in which each service in turn gets
SECONDS / ROUNDS seconds. A service's figures pool its latencies and texts over all its turns, so
a slow spell of the machine (this client shares its cores) weighs on every service alike instead
of on whichever one it happened to fall on.
"""
import json
import sys
import threading
import time
import urllib.request

urls = sys.argv[1].split(",")
path, conc, k, secs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 1
warmup = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
texts = [l.rstrip("\n") for l in open(path, encoding="utf-8") if l.strip()]


def phase(url, secs, offset):
    """C clients on `url` for `secs` seconds: (latencies in s, errors, wall seconds)."""
    lat, errors, lock = [], [0], threading.Lock()
    stop = time.time() + secs

    def client(c):
        i = offset + c * 7919
        mine = []
        while time.time() < stop:
            batch = [texts[(i + j) % len(texts)] for j in range(k)]
            i += k
            req = urllib.request.Request(url, data=json.dumps({"texts": batch}).encode(),
                                         headers={"Content-Type": "application/json"})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    out = json.load(r)
                assert len(out["results"]) == k
                mine.append(time.perf_counter() - t0)
            except Exception:
                with lock:
                    errors[0] += 1
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
    for url in urls:
        phase(url, warmup, 0)
totals = {url: ([], 0, 0.0) for url in urls}
for r in range(rounds):
    for url in urls:
        lat, err, wall = phase(url, secs / rounds, r * 104729)
        l0, e0, w0 = totals[url]
        totals[url] = (l0 + lat, e0 + err, w0 + wall)
for url in urls:
    lat, errors, wall = totals[url]
    lat.sort()
    q = lambda f: 1000 * lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")
    out = {"concurrency": conc, "texts_per_request": k, "requests": len(lat),
           "texts_per_s": round(len(lat) * k / wall, 1), "p50_ms": round(q(0.5), 2),
           "p99_ms": round(q(0.99), 2), "errors": errors}
    if len(urls) > 1:
        out["url"] = url
    print(json.dumps(out))
