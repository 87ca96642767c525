"""Checks, through a real Prometheus's HTTP API, that Prometheus scrapes ringcast's /metrics:
the target is up, every shard has its ringcast_connections series, every metric family the
server exposes is stored, and counters move with traffic this script makes (WebSocket
connections opened and closed with 1000 by the test venv's `websockets`, publishes through
POST /api/publish to a channel one of them subscribes to).

usage: prometheus_check.py PROM_ADDR HTTP_ADDR WS_URL SHARDS
  PROM_ADDR  the Prometheus server, 127.0.0.1:PORT (scraping HTTP_ADDR every second)
  HTTP_ADDR  ringcast's HTTP listener, 127.0.0.1:PORT
  WS_URL     ringcast's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
  SHARDS     how many shards the server runs

Every wait is a bounded poll of PROM_WAIT_S seconds (default 30); every request times out
after 10 s. Environment: PROM_WRONG=1 adds one deliberately wrong expectation (a shard more
than the server has), to see that a failed check fails the run.
Prints one line "PASS ..." or "FAIL reason" (the steps on stderr). Exit: 0 pass, 1 fail.
"""
import asyncio
import http.client
import json
import os
import sys
import time
import urllib.parse

import websockets
import websockets.exceptions

WAIT_S = float(os.environ.get("PROM_WAIT_S", "30"))
CONNS = 5       # WebSocket connections opened and closed
PUBLISHES = 10  # publishes to the channel one of them subscribes to
T0 = time.monotonic()


def log(text):
    print(f"[prometheus] {time.monotonic() - T0:6.2f}s {text}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


def http_get(addr, path, method="GET", body=None):
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Prom:
    def __init__(self, addr):
        self.addr = addr

    def api(self, path, **params):
        q = ("?" + urllib.parse.urlencode(params)) if params else ""
        status, body = http_get(self.addr, f"/api/v1/{path}{q}")
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise Fail(f"Prometheus /api/v1/{path}{q}: {status} {body[:300]!r}")
        return reply["data"]

    def query(self, expr):
        """An instant query: the list of (labels, float value)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def scalar(self, expr):
        """The single value of EXPR, or None while it has no sample."""
        result = self.query(expr)
        return result[0][1] if result else None

    def wait(self, what, fn):
        """Bounded poll until fn() returns something true; returns it."""
        deadline = time.monotonic() + WAIT_S
        last = None
        while True:
            try:
                value = fn()
            except (OSError, ValueError, http.client.HTTPException) as e:
                value, last = None, f"{type(e).__name__}: {e}"
            if value:
                log(f"ok   {what}")
                return value
            if time.monotonic() >= deadline:
                raise Fail(f"{what}: not within {WAIT_S:.0f}s" + (f" ({last})" if last else ""))
            time.sleep(0.25)


def target_up(prom, http_addr):
    """The ringcast target, once it is up with an empty lastError."""
    url = f"http://{http_addr}/metrics"
    for t in prom.api("targets", state="active")["activeTargets"]:
        if t.get("scrapeUrl") == url and t.get("health") == "up" and t.get("lastError") == "":
            return t
    return None


def exposed_families(http_addr):
    """The metric names with at least one sample in ringcast's /metrics."""
    status, body = http_get(http_addr, "/metrics")
    if status != 200:
        raise Fail(f"GET /metrics: {status}")
    names = set()
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


async def traffic(http_addr, ws_url):
    """CONNS connections, the first subscribed to a fresh channel; PUBLISHES publishes to it,
    all received; then every connection closed with 1000."""
    channel = f"promtest:{os.getpid()}-{int(time.time() * 1000)}"
    sep = "&" if "?" in ws_url else "?"
    sub_url = f"{ws_url}{sep}channel={urllib.parse.quote(channel)}&format=raw"
    subscriber = await websockets.connect(sub_url, open_timeout=10)
    others = [await websockets.connect(ws_url, open_timeout=10) for _ in range(CONNS - 1)]
    deadline = time.monotonic() + WAIT_S
    q = urllib.parse.urlencode({"channel": channel})
    while True:  # the subscription reaches the channel's owner a moment after the socket opens
        status, body = http_get(http_addr, f"/api/presence?{q}")
        if status == 200 and json.loads(body).get("conns"):
            break
        if time.monotonic() >= deadline:
            raise Fail(f"the subscriber of {channel} not in presence within {WAIT_S:.0f}s")
        await asyncio.sleep(0.05)
    for n in range(PUBLISHES):
        status, body = http_get(http_addr, "/api/publish", "POST",
                                json.dumps({"channel": channel, "text": f"prom {n}"}))
        if status != 200:
            raise Fail(f"POST /api/publish: {status} {body[:200]!r}")
    for n in range(PUBLISHES):
        got = await asyncio.wait_for(subscriber.recv(), 10)
        if got != f"prom {n}":
            raise Fail(f"subscriber got {got!r}, expected 'prom {n}'")
    for ws in [subscriber] + others:
        await ws.close(1000)
    log(f"traffic: {CONNS} connections opened and closed with 1000, {PUBLISHES} publishes received")


def run(prom_addr, http_addr, ws_url, shards):
    prom = Prom(prom_addr)
    want_shards = shards + (1 if os.environ.get("PROM_WRONG") == "1" else 0)
    t = prom.wait(f"target http://{http_addr}/metrics up, lastError empty",
                  lambda: target_up(prom, http_addr))
    prom.wait(f"count(ringcast_connections) == {want_shards} (a series per shard)",
              lambda: prom.scalar("count(ringcast_connections)") == want_shards)
    up = prom.scalar(f'up{{instance="{http_addr}"}}')
    if up != 1:
        raise Fail(f'up{{instance="{http_addr}"}} is {up}, expected 1')
    shard_labels = sorted(m.get("shard", "") for m, _ in prom.query("ringcast_accepted_total"))
    if shard_labels != [str(i) for i in range(shards)]:
        raise Fail(f"ringcast_accepted_total has shard labels {shard_labels}")

    # Baselines from Prometheus itself (the server has served other tests before this one).
    def sum_of(expr):
        return prom.scalar(f"sum({expr})") or 0.0
    accepted0 = sum_of("ringcast_accepted_total")
    published0 = sum_of("ringcast_published_total")
    closes0 = sum_of('ringcast_closes_total{code="1000"}')
    log(f"baseline: accepted {accepted0:.0f}, published {published0:.0f}, closes 1000 {closes0:.0f}")
    asyncio.run(traffic(http_addr, ws_url))
    prom.wait(f"sum(ringcast_accepted_total) >= {accepted0 + CONNS:.0f}",
              lambda: sum_of("ringcast_accepted_total") >= accepted0 + CONNS)
    prom.wait(f"sum(ringcast_published_total) >= {published0 + PUBLISHES:.0f}",
              lambda: sum_of("ringcast_published_total") >= published0 + PUBLISHES)
    prom.wait(f'sum(ringcast_closes_total{{code="1000"}}) >= {closes0 + CONNS:.0f}',
              lambda: sum_of('ringcast_closes_total{code="1000"}') >= closes0 + CONNS)
    increase = prom.scalar("sum(increase(ringcast_accepted_total[1m]))")
    log(f"sum(increase(ringcast_accepted_total[1m])) = {increase}")

    # Every family with a sample in /metrics is stored under the same name.
    exposed = exposed_families(http_addr)

    def stored():
        names = set(prom.api("label/__name__/values"))
        return exposed <= names and names
    names = prom.wait(f"all {len(exposed)} metric families of /metrics stored", stored)
    t = target_up(prom, http_addr)
    if not t:
        raise Fail("the target is no longer up after the traffic")
    samples = prom.scalar(f'scrape_samples_scraped{{instance="{http_addr}"}}')
    return (f"target up (lastError empty), {shards} shards, {len(exposed)} families, "
            f"{samples:.0f} samples per scrape; accepted +{CONNS}, published +{PUBLISHES}, "
            f"closes 1000 +{CONNS} seen, {len([n for n in names if n.startswith('ringcast_')])} "
            f"ringcast_ names stored")


def main():
    if len(sys.argv) != 5:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        print("PASS " + run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return 0
    except (Fail, OSError, ValueError, KeyError, asyncio.TimeoutError, http.client.HTTPException,
            websockets.exceptions.WebSocketException) as e:
        print(f"FAIL {type(e).__name__ + ': ' if not isinstance(e, Fail) else ''}{e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
