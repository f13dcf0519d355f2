"""Closed-loop load on a scoring service: C client threads, each sending requests of K texts
(drawn from a file) one after the other for D seconds. Prints one JSON line: texts/s, requests/s,
p50 / p99 latency (ms), errors.

usage: python3 serve_load.py URL TEXTS_FILE CONCURRENCY TEXTS_PER_REQUEST SECONDS
"""
import json
import sys
import threading
import time
import urllib.request

url, path, conc, k, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
texts = [l.rstrip("\n") for l in open(path, encoding="utf-8") if l.strip()]
lat, errors, lock = [], [0], threading.Lock()
stop = time.time() + secs


def client(c):
    i = c * 7919
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
wall = time.time() - t0
lat.sort()
q = lambda f: 1000 * lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")
print(json.dumps({"concurrency": conc, "texts_per_request": k, "requests": len(lat),
                  "texts_per_s": round(len(lat) * k / wall, 1), "p50_ms": round(q(0.5), 2),
                  "p99_ms": round(q(0.99), 2), "errors": errors[0]}))
