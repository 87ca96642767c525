#!/usr/bin/env python3
"""Two ringcast nodes on one Redis, Redis killed (-9) and restarted under a steady publish load:
how long each node takes to be back on Redis, and what subscribers got meanwhile.

usage: python3 loadtest/scripts/redis-restart.py [--bin target/release/ringcast]
       [--rate 100] [--down-s 2] [--shards 2] [--history N]
Needs redis-server, and the Python `websockets` package (the test venv has it:
~/.cache/ringcast-test/venv/bin/python). Loopback only; stops by itself (about 10 s).

Timeline: 2 s of publishes (alternating the nodes' control sockets, RATE per second), then
`kill -9` of redis-server, DOWN_S seconds without it, redis-server started again on the same
port (empty: no persistence), 4 s more. Two subscribers per node on one channel.
Prints one JSON object: per node, the publishes answered through Redis / local_only /
cluster_unavailable, the time from the restart to the node's first publish through Redis again
(`back_ms`), and per subscriber what it received of each class (every publish through Redis
must reach all four exactly once; a node's local_only ones only that node's two). With
--history N the channel's namespace keeps N messages (in Redis too), so a node that comes back
later than the other catches up on what the other published through Redis meanwhile.
"""
import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import websockets


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_redis(port, workdir):
    p = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                          "--appendonly", "no", "--dir", workdir],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.02)
    sys.exit("redis-server did not start")


def start_node(binary, n, redis_port, workdir, shards, history):
    cfg = os.path.join(workdir, f"node{n}.toml")
    with open(cfg, "w") as f:
        f.write(f'[cluster]\nredis = "redis://127.0.0.1:{redis_port}"\nnode = "bench-{n}"\n'
                f'prefix = "restart"\nnode_id = {n + 1}\n')
        if history:
            f.write(f'\n[namespaces.restart]\nhistory_size = {history}\n')
    ctl = os.path.join(workdir, f"node{n}.sock")
    p = subprocess.Popen([binary, "serve", "--config", cfg, "--listen", "127.0.0.1:0", "--shards",
                          str(shards), "--no-pin", "--control", f"unix:{ctl}"],
                         stdout=subprocess.PIPE, stderr=open(os.path.join(workdir, f"node{n}.err"), "w"),
                         text=True)
    for line in p.stdout:
        if line.startswith("ringcast ready listen="):
            port = int(line.split()[2].split(":")[1])
            return p, port, ctl
    sys.exit(f"node {n} did not start")


async def control(path):
    reader, writer = await asyncio.open_unix_connection(path)
    return reader, writer


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ringcast")
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--down-s", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--history", type=int, default=0)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="ringcast-restart.")
    redis_port = free_port()
    redis = start_redis(redis_port, workdir)
    nodes = [start_node(args.bin, n, redis_port, workdir, args.shards, args.history)
             for n in range(2)]
    try:
        await asyncio.sleep(0.5)  # the bridges connect
        subs = []
        got = []
        for n, (_, port, _) in enumerate(nodes):
            for _ in range(2):
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?channel=restart:news")
                welcome = json.loads(await ws.recv())
                assert welcome["op"] == "welcome", welcome
                sub = json.loads(await ws.recv())
                assert sub["op"] == "subscribed", sub
                subs.append((n, ws))
                got.append({})

        async def read(k, ws):
            async for text in ws:
                m = json.loads(text)
                if m.get("op") == "message":
                    got[k][m["data"]] = got[k].get(m["data"], 0) + 1

        readers = [asyncio.create_task(read(k, ws)) for k, (_, ws) in enumerate(subs)]
        ctls = [await control(ctl) for (_, _, ctl) in nodes]
        classes = {}  # publish number -> (node, "redis" | "local" | "error", time)
        t0 = time.monotonic()
        killed_at = restarted_at = None
        i = 0
        period = 1.0 / args.rate
        total_s = 2 + args.down_s + 4
        while time.monotonic() - t0 < total_s:
            now = time.monotonic() - t0
            if killed_at is None and now >= 2:
                redis.kill()
                redis.wait()
                killed_at = now
            if restarted_at is None and killed_at is not None and now >= 2 + args.down_s:
                redis = start_redis(redis_port, workdir)
                restarted_at = time.monotonic() - t0
            n = i % 2
            reader, writer = ctls[n]
            writer.write((json.dumps({"method": "publish", "channel": "restart:news", "data": i}) + "\n").encode())
            await writer.drain()
            r = json.loads(await reader.readline())
            if "result" in r:
                kind = "local" if r["result"].get("local_only") else "redis"
            else:
                kind = "error"
            classes[i] = (n, kind, time.monotonic() - t0)
            i += 1
            await asyncio.sleep(max(0.0, t0 + i * period - time.monotonic()))
        await asyncio.sleep(1.0)  # the last deliveries arrive
        for t in readers:
            t.cancel()
        report = {"rate_per_s": args.rate, "down_s": args.down_s, "history": args.history, "killed_at_s": round(killed_at, 3),
                  "restarted_at_s": round(restarted_at, 3), "publishes": i, "nodes": [], "subscribers": []}
        for n in range(2):
            mine = [(k, c, t) for k, (node, c, t) in classes.items() if node == n]
            back = [t for (_, c, t) in mine if c == "redis" and t > restarted_at]
            report["nodes"].append({
                "node": n,
                "redis": sum(1 for (_, c, _) in mine if c == "redis"),
                "local_only": sum(1 for (_, c, _) in mine if c == "local"),
                "cluster_unavailable": sum(1 for (_, c, _) in mine if c == "error"),
                "back_ms": round((min(back) - restarted_at) * 1000) if back else None,
            })
        for k, (n, _) in enumerate(subs):
            def share(pred):
                want = [p for p, (node, c, _) in classes.items() if pred(node, c)]
                return {"sent": len(want), "received": sum(1 for p in want if p in got[k]),
                        "duplicates": sum(1 for p in want if got[k].get(p, 0) > 1)}
            report["subscribers"].append({
                "node": n,
                "redis": share(lambda node, c: c == "redis"),
                "own_local": share(lambda node, c: c == "local" and node == n),
                "other_local": share(lambda node, c: c == "local" and node != n),
            })
        print(json.dumps(report))
    finally:
        for p, _, _ in nodes:
            p.terminate()
        for p, _, _ in nodes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.kill()
        shutil.rmtree(workdir, ignore_errors=True)


asyncio.run(main())
