#!/usr/bin/env python3
"""What tiny queued frames cost a ringcast server, against what its outbound limits count.

Starts `RINGCAST serve --shards 1` (heartbeat off, so nothing but the queue limits closes the
client), connects one raw subscriber with a 4 KiB receive buffer that never reads, publishes N
empty texts on the control socket (each a 2-byte frame for that subscriber, counted as 2 bytes
against outbound_bytes_max), and prints the server's VmRSS and its stats counters.

    loadtest/scripts/tiny-frames-rss.py target/release/ringcast 400000

Measured with 1319b96: see docs/benchmarks.md, "Server behaviour seen in these runs".
"""
import json, os, socket, subprocess, sys, tempfile, time

def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ringcast, count = sys.argv[1], int(sys.argv[2])
    tmp = tempfile.mkdtemp(prefix="tiny-frames-")
    sock_path, config = os.path.join(tmp, "control.sock"), os.path.join(tmp, "ringcast.toml")
    with open(config, "w") as f:
        f.write("[limits]\nping_interval_ms = 0\n")
    server = subprocess.Popen(
        [ringcast, "serve", "--shards", "1", "--listen", "127.0.0.1:0",
         "--control", "unix:" + sock_path, "--config", config],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in server.stdout:  # wait for the readiness line, never a sleep
            if " ready " in line:
                break
        port = int(line.split("listen=")[1].split()[0].rsplit(":", 1)[1])
        run(server.pid, port, sock_path, count)
    finally:
        server.terminate()
        server.wait()

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

def stats(sock_path):
    c = socket.socket(socket.AF_UNIX)
    c.connect(sock_path)
    c.sendall(b'{"id":1,"method":"stats"}\n')
    reply = b""
    while not reply.endswith(b"\n"):
        reply += c.recv(65536)
    total = json.loads(reply)["result"]["total"]
    return {k: total[k] for k in ("slow_consumers", "shard_outbound_overflows", "closed_by_code")}

def run(pid, port, sock_path, count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /ws?channel=t&format=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head, head
    time.sleep(0.2)  # let the subscription settle (not a readiness wait)
    before = rss(pid)
    c = socket.socket(socket.AF_UNIX)
    c.connect(sock_path)
    batch = b'{"method":"publish","channel":"t","text":"","noreply":true}\n' * 10000
    peak = before
    for i in range(count // 10000):
        c.sendall(batch)
        if i % 20 == 0:
            peak = max(peak, rss(pid))
    counters = stats(sock_path)  # answered after every publish before it was handled
    time.sleep(1.0)
    settled = rss(pid)
    peak = max(peak, settled)
    print(f"{count // 10000 * 10000} empty-text publishes to one subscriber that does not read: "
          f"server VmRSS {before / 2**20:.1f} MiB before, {peak / 2**20:.1f} MiB at most, "
          f"{settled / 2**20:.1f} MiB 1 s after the last was handled; counters {counters}")

if __name__ == "__main__":
    main()
