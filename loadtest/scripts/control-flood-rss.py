#!/usr/bin/env python3
"""The control-plane flood of the hardening issue, against a running server, with its RSS.

usage: control-flood-rss.py WS_ADDR CONTROL_PATH SERVER_PID [SUBSCRIBERS]

1. SUBSCRIBERS (default 2000) raw /ws subscribers on channel `flood`, read by one thread;
2. connection A pipelines 500,000 noreply publishes to `flood` while connection B publishes with
   a reply every 5 ms (counts replies: every request must get one, an offset or `overloaded`);
3. afterwards a new `info` on A and on B must be answered within 1 s;
4. connection C pipelines 600,000 `stats` requests without reading (the server must close it,
   saying why), then every connection closes.
Prints the server's VmRSS before, at the peak, after the flood, and after everything closed.
Loopback only; every wait is bounded.
"""
import json, os, selectors, socket, sys, threading, time

ws_host, ws_port = sys.argv[1].rsplit(":", 1)
ctl_path, pid = sys.argv[2], int(sys.argv[3])
n_subs = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
assert ws_host.startswith("127."), "loopback only"


def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


peak = [0.0]
stop = threading.Event()


def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mib())
        time.sleep(0.1)


def subscriber():
    s = socket.create_connection((ws_host, int(ws_port)), timeout=10)
    s.sendall(b"GET /ws?channel=flood&format=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    s.setblocking(False)
    return s


subs = [subscriber() for _ in range(n_subs)]
sel = selectors.DefaultSelector()
for s in subs:
    sel.register(s, selectors.EVENT_READ)


def read_subs():
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            try:
                if not key.fileobj.recv(1 << 16):
                    sel.unregister(key.fileobj)
            except (BlockingIOError, ConnectionError):
                pass


threading.Thread(target=read_subs, daemon=True).start()
threading.Thread(target=sample, daemon=True).start()


def control():
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(10)
    c.connect(ctl_path)
    return c, c.makefile("rb")


def call(conn, req, timeout=1.0):
    sock, f = conn
    sock.settimeout(timeout)
    t0 = time.monotonic()
    sock.sendall((json.dumps(req) + "\n").encode())
    line = f.readline()
    return json.loads(line), time.monotonic() - t0


a, b = control(), control()
time.sleep(1.0)  # the subscriptions reach their owner (a bound, not a condition: informational run)
before = rss_mib()


def flood():
    line = b'{"method":"publish","channel":"flood","text":"0123456789","noreply":true}\n'
    batch = line * 1000
    for _ in range(500):
        a[0].sendall(batch)


t = threading.Thread(target=flood)
t.start()
sent = answered = overloaded = 0
b[0].settimeout(10)
while t.is_alive() or sent < 200:
    b[0].sendall((json.dumps({"id": sent, "method": "publish", "channel": "flood", "text": "b"}) + "\n").encode())
    r = json.loads(b[1].readline())
    sent += 1
    answered += r.get("id") == sent - 1
    overloaded += r.get("error", {}).get("code") == "overloaded"
    time.sleep(0.005)
t.join()
after_flood = rss_mib()
ra, da = call(a, {"id": "a", "method": "info"})
rb, db = call(b, {"id": "b", "method": "info"})
print(f"flood: {sent} publishes with a reply, {answered} answered in order ({overloaded} overloaded)")
print(f"after the flood: info on A answered in {da*1000:.0f} ms, on B in {db*1000:.0f} ms")

c = control()
c[0].settimeout(30)
closed_why = None
try:
    line = b'{"method":"stats"}\n' * 10000
    for _ in range(60):
        c[0].sendall(line)
except (BrokenPipeError, ConnectionResetError):
    pass
try:
    last = None
    for raw in c[1]:
        last = raw
    closed_why = json.loads(last)["error"]["code"] if last else None
except (OSError, ValueError):
    pass
print(f"stats flood: closed, last line's code {closed_why}")
for conn in (a, b, c):
    conn[0].close()
for s in subs:
    s.close()
time.sleep(2.0)
stop.set()
print(f"server VmRSS: before {before:.1f} MiB, peak {peak[0]:.1f} MiB, after the flood {after_flood:.1f} MiB, "
      f"2 s after every connection closed {rss_mib():.1f} MiB")
