#!/usr/bin/env python3
"""Measures the coordinator's HTTP side on this machine: creating nodes with POST /node, a page
of 1,000 nodes from GET /nodes, paging through every node, catching up on the event stream
from sequence number 0, and one /metrics scrape. Starts its own coordinator (the binary given,
by default target/release/labwire-coordinator) in a temporary folder; standard library only.

    cargo build --release --bin labwire-coordinator
    scripts/bench-http.py [--nodes 10000] [--bin PATH]
"""
import argparse, http.client, json, os, ssl, statistics, subprocess, sys, tempfile, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--bin", default=os.environ.get("CARGO_TARGET_DIR", "target") + "/release/labwire-coordinator")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="labwire-bench-")
    cfg = os.path.join(d, "coordinator.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:0\ndata_dir: {d}/data\npublic_url: https://127.0.0.1:7443\n"
                "http: {listen: 127.0.0.1:0}\n")
    tok = os.path.join(d, "admin.token")
    subprocess.run([a.bin, "--config", cfg, "ca", "init", "--ip", "127.0.0.1", "--token-file", tok],
                   check=True, stdout=subprocess.DEVNULL)
    token = open(tok).read().strip()
    addr = os.path.join(d, "http.addr")
    log = open(os.path.join(d, "coordinator.log"), "w")
    proc = subprocess.Popen([a.bin, "--config", cfg, "serve", "--http-addr-file", addr],
                            stderr=log, env={**os.environ, "LABWIRE_LOG": "warn"})
    try:
        for _ in range(200):
            if os.path.exists(addr):
                break
            time.sleep(0.05)
        host, port = open(addr).read().strip().rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=f"{d}/data/pki/ca.pem")
        conn = lambda: http.client.HTTPSConnection(host, int(port), context=ctx)
        h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        c = conn()

        def call(method, path, body=None):
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            if r.status >= 300:
                sys.exit(f"{method} {path}: {r.status} {data[:200]}")
            return data

        root = json.loads(call("POST", "/node", json.dumps({"kind": "checkout", "name": "checkout"})))
        t = time.perf_counter()
        for i in range(a.nodes - 1):
            call("POST", "/node", json.dumps({"kind": "test", "name": f"t{i}", "parent": root["id"],
                                               "state": "done", "result": "pass"}))
        dt = time.perf_counter() - t
        print(f"POST /node: {a.nodes - 1} nodes in {dt:.2f} s ({(a.nodes - 1) / dt:.0f}/s, one connection)")

        times = []
        for _ in range(20):
            t = time.perf_counter()
            page = json.loads(call("GET", "/nodes?kind=test&limit=1000"))
            times.append(time.perf_counter() - t)
        assert page["count"] == 1000
        print(f"GET /nodes?limit=1000: median {statistics.median(times) * 1000:.1f} ms over 20")

        t = time.perf_counter()
        n, cursor = 0, 0
        while True:
            page = json.loads(call("GET", f"/nodes?limit=1000&cursor={cursor}"))
            n += page["count"]
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        dt = time.perf_counter() - t
        print(f"paging through {n} nodes: {dt * 1000:.0f} ms ({n / dt:.0f} nodes/s)")

        s = conn()
        s.request("GET", "/events/stream?from=0", headers=h)
        r = s.getresponse()
        t = time.perf_counter()
        seen = 0
        while seen < a.nodes:
            line = r.fp.readline()
            if line.startswith(b"id:"):
                seen += 1
        dt = time.perf_counter() - t
        print(f"event stream catch-up: {seen} events in {dt * 1000:.0f} ms ({seen / dt:.0f} events/s)")
        s.close()

        times = []
        for _ in range(20):
            t = time.perf_counter()
            call("GET", "/metrics")
            times.append(time.perf_counter() - t)
        print(f"GET /metrics: median {statistics.median(times) * 1000:.1f} ms over 20")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
