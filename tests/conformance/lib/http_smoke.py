"""HTTP smoke of ringcast's HTTP listener (serve --http): every endpoint's status and content
type, HEAD, pipelining on one keep-alive connection, POST /api/publish reaching a real /ws
subscriber (the test venv's `websockets`), and the refusals of bad requests.

usage: http_smoke.py HTTP_ADDR WS_URL SHARDS
  HTTP_ADDR  the HTTP listener, 127.0.0.1:PORT (what the `ringcast http listen=` line says)
  WS_URL     the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
  SHARDS     how many shards the server runs (/api/stats must list that many)

Requests are written by hand on raw sockets where the framing is the point (HEAD, pipelining,
the refusals), with http.client elsewhere. Every socket operation times out after
HTTP_SMOKE_WAIT_S seconds (default 10), and so does the wait for the subscriber's message.
Environment: HTTP_SMOKE_WRONG=1 adds one deliberately wrong expectation (GET /healthz answers
418), to see that a failed check fails the run.
Prints one line "PASS N checks ..." or "FAIL K of N checks: ..." (details on stderr).
Exit: 0 pass, 1 fail, 2 usage or connection problem.
"""
import asyncio
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse

import websockets
import websockets.exceptions

WAIT_S = float(os.environ.get("HTTP_SMOKE_WAIT_S", "10"))
BODY_LIMIT = 1024 * 1024  # control_line_bytes_max, the default
T0 = time.monotonic()


def log(text):
    print(f"[http-smoke] {time.monotonic() - T0:6.2f}s {text}", file=sys.stderr, flush=True)


class Checks:
    def __init__(self):
        self.total = 0
        self.failed = []

    def check(self, name, ok, detail=""):
        self.total += 1
        if ok:
            log(f"ok   {name}")
        else:
            self.failed.append(name)
            log(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return ok


# ----- raw HTTP/1.1 on a socket ------------------------------------------------------------------


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> value (the last one)
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower(), "")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"{self.status} {self.reason} {self.headers} {self.body[:200]!r}"


class Conn:
    """One TCP connection; responses are read off it one at a time, framed by Content-Length."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=WAIT_S)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def read_response(self, head_only=False):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(int(status), reason, headers, body)

    def closed_by_peer(self):
        """Whether the server closes the connection (EOF, or a reset) with nothing more sent."""
        if self.buf:
            return False
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def request_bytes(method, target, host, headers=(), body=b""):
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ----- the checks --------------------------------------------------------------------------------


def is_error(resp, status, code):
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (resp.status == status and resp.header("content-type").startswith("application/json")
            and err.get("code") == code and isinstance(err.get("message"), str))


def endpoints(c, host, port, shards):
    """Each endpoint with http.client on one keep-alive connection."""
    conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)

    def get(method, path, body=None, headers=None):
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, r.reason, {k.lower(): v for k, v in r.getheaders()}, data)

    text = "text/plain; charset=utf-8"
    r = get("GET", "/healthz")
    c.check("GET /healthz: 200 text/plain 'ok'",
            (r.status, r.header("content-type"), r.body) == (200, text, b"ok\n"), repr(r))
    if os.environ.get("HTTP_SMOKE_WRONG") == "1":
        c.check("GET /healthz: 418 (a deliberately wrong expectation)", r.status == 418, repr(r))
    r = get("GET", "/readyz")
    c.check("GET /readyz: 200 text/plain 'ready'",
            (r.status, r.header("content-type"), r.body) == (200, text, b"ready\n"), repr(r))
    r = get("GET", "/metrics")
    body = r.body.decode("utf-8", "replace")
    c.check("GET /metrics: 200 text/plain; version=0.0.4, a ringcast_connections sample per shard",
            r.status == 200
            and r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
            and all(f'ringcast_connections{{shard="{i}"}} ' in body for i in range(shards)),
            repr(r)[:300])
    r = get("GET", "/")
    page = r.body
    c.check("GET /: 200 text/html, the dashboard",
            r.status == 200 and r.header("content-type") == "text/html; charset=utf-8"
            and b'id="connections"' in page and b"/api/stats" in page, repr(r)[:300])
    r = get("GET", "/dashboard")
    c.check("GET /dashboard: 200 text/html, the same page as /",
            r.status == 200 and r.header("content-type") == "text/html; charset=utf-8"
            and r.body == page, repr(r)[:300])
    r = get("GET", "/api/stats")
    try:
        n = len(r.json()["shards"])
    except (ValueError, KeyError, TypeError):
        n = None
    c.check(f"GET /api/stats: 200 application/json with {shards} shards",
            r.status == 200 and r.header("content-type").startswith("application/json")
            and n == shards, repr(r)[:300])
    r = get("GET", "/api/presence?channel=httpsmoke%3Anobody")
    try:
        ok = r.json()["conns"] == []
    except (ValueError, KeyError, TypeError):
        ok = False
    c.check("GET /api/presence?channel=...: 200 application/json, no conns",
            r.status == 200 and r.header("content-type").startswith("application/json") and ok,
            repr(r)[:300])
    r = get("GET", "/api/channels")
    try:
        ok = isinstance(r.json()["channels"], dict)
    except (ValueError, KeyError, TypeError):
        ok = False
    c.check("GET /api/channels: 200 application/json",
            r.status == 200 and r.header("content-type").startswith("application/json") and ok,
            repr(r)[:300])
    r = get("POST", "/api/publish", body=json.dumps({"channel": "httpsmoke:void", "text": "x"}))
    try:
        ok = {"offset", "epoch"} <= set(r.json())
    except (ValueError, TypeError):
        ok = False
    c.check("POST /api/publish: 200 application/json {offset, epoch}",
            r.status == 200 and r.header("content-type").startswith("application/json") and ok,
            repr(r)[:300])
    r = get("GET", "/api/publish")
    c.check("GET /api/publish: 405 method_not_allowed, Allow: POST",
            is_error(r, 405, "method_not_allowed") and r.header("allow") == "POST", repr(r))
    r = get("POST", "/healthz", body="{}")
    c.check("POST /healthz: 405 method_not_allowed, Allow: GET, HEAD",
            is_error(r, 405, "method_not_allowed") and r.header("allow") == "GET, HEAD", repr(r))
    r = get("GET", "/nope")
    c.check("GET /nope: 404 not_found", is_error(r, 404, "not_found"), repr(r))
    r = get("GET", "/api/nosuchmethod")
    c.check("GET /api/nosuchmethod: 404", r.status == 404, repr(r))
    r = get("POST", "/api/publish", body="[1]")
    c.check("POST /api/publish [1]: 400 bad_json", is_error(r, 400, "bad_json"), repr(r))
    r = get("GET", "/healthz")
    c.check("the keep-alive connection still answers after the errors",
            (r.status, r.body) == (200, b"ok\n"), repr(r))
    conn.close()


def head_and_pipelining(c, host, port):
    addr = f"{host}:{port}"
    # HEAD: the head a GET gets (its Content-Length), no body: the next response on the same
    # connection must start right after the head.
    k = Conn(host, port)
    k.send(request_bytes("HEAD", "/healthz", addr) + request_bytes("GET", "/readyz", addr))
    r1 = k.read_response(head_only=True)
    r2 = k.read_response()
    c.check("HEAD /healthz: 200, Content-Length 3, no body (the next response follows at once)",
            r1.status == 200 and r1.header("content-length") == "3"
            and r1.header("content-type") == "text/plain; charset=utf-8"
            and (r2.status, r2.body) == (200, b"ready\n"), f"{r1!r} / {r2!r}")
    k.close()

    # A pipelined pair in one write: /api/stats (answered by the shards' executor) before
    # /healthz (answered at once): the answers must come in request order.
    k = Conn(host, port)
    k.send(request_bytes("GET", "/api/stats", addr) + request_bytes("GET", "/healthz", addr))
    r1 = k.read_response()
    r2 = k.read_response()
    try:
        first_is_stats = "shards" in r1.json()
    except (ValueError, TypeError):
        first_is_stats = False
    c.check("pipelined GET /api/stats + GET /healthz on one connection: answered in order",
            r1.status == 200 and first_is_stats and (r2.status, r2.body) == (200, b"ok\n"),
            f"{r1!r} / {r2!r}")
    # Five more on the same connection, mixing methods and paths, again in one write.
    batch = [("GET", "/readyz", b""), ("POST", "/api/presence", b'{"channel":"httpsmoke:x"}'),
             ("GET", "/nope", b""), ("HEAD", "/metrics", b""), ("GET", "/healthz", b"")]
    k.send(b"".join(request_bytes(m, p, addr, body=b) for m, p, b in batch))
    got = [k.read_response(head_only=(m == "HEAD")) for m, _, _ in batch]
    ok = (got[0].body == b"ready\n" and got[1].status == 200 and "conns" in got[1].json()
          and got[2].status == 404 and got[3].status == 200
          and int(got[3].header("content-length") or 0) > 0 and got[4].body == b"ok\n")
    c.check("5 more pipelined requests (GET, POST, 404, HEAD, GET) on the same connection, in order",
            ok, repr(got)[:600])
    k.close()


def refusals(c, host, port):
    addr = f"{host}:{port}"

    def refused(name, data, status, code):
        k = Conn(host, port)
        try:
            k.send(data)
            r = k.read_response()
            closed = k.closed_by_peer()
        except (OSError, EOFError, ValueError) as e:
            c.check(name, False, f"{type(e).__name__}: {e}")
            return
        finally:
            k.close()
        c.check(name, is_error(r, status, code) and r.header("connection").lower() == "close"
                and closed, f"{r!r}, closed afterwards: {closed}")

    body = b'{"channel":"httpsmoke:void","text":"chunked"}'
    chunked = (f"POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    refused("POST with Transfer-Encoding: chunked: 411 length_required, then closed",
            chunked, 411, "length_required")
    # Only the head: the answer must come before any of the body is sent.
    big = (f"POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {BODY_LIMIT + 1}\r\n\r\n").encode()
    refused(f"POST head announcing {BODY_LIMIT + 1} bytes (no body sent): 413 payload_too_large",
            big, 413, "payload_too_large")
    fill = "a" * 10240
    refused("GET with a 10 KiB header: 431 headers_too_large",
            request_bytes("GET", "/healthz", addr, headers=[("X-Fill", fill)]), 431,
            "headers_too_large")


async def publish_reaches_subscriber(c, host, port, ws_url):
    channel = f"httpsmoke:{os.getpid()}-{int(time.time() * 1000)}"
    text = "über the API ✓"
    sep = "&" if "?" in ws_url else "?"
    url = f"{ws_url}{sep}channel={urllib.parse.quote(channel)}&format=raw"
    name = "POST /api/publish reaches a /ws?format=raw subscriber"
    async with websockets.connect(url, open_timeout=WAIT_S) as ws:
        # The subscription made at connect reaches the channel's owner a moment after the socket
        # opens: wait (bounded) until presence lists the subscriber.
        q = urllib.parse.urlencode({"channel": channel})
        deadline = time.monotonic() + WAIT_S
        seen = False
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
            conn.request("GET", f"/api/presence?{q}")
            r = conn.getresponse()
            data = r.read()
            conn.close()
            if r.status == 200 and json.loads(data).get("conns"):
                seen = True
                break
            await asyncio.sleep(0.05)
        if not c.check("GET /api/presence lists the new subscriber", seen):
            return
        conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
        conn.request("POST", "/api/publish", body=json.dumps({"channel": channel, "text": text}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        result = r.read()
        conn.close()
        if not c.check("POST /api/publish to the subscribed channel: 200",
                       r.status == 200, f"{r.status} {result!r}"):
            return
        try:
            got = await asyncio.wait_for(ws.recv(), WAIT_S)
        except asyncio.TimeoutError:
            got = None
        c.check(name, got == text, f"received {got!r}, expected {text!r}")


def main():
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    host, _, port = sys.argv[1].rpartition(":")
    port = int(port)
    ws_url, shards = sys.argv[2], int(sys.argv[3])
    c = Checks()
    try:
        endpoints(c, host, port, shards)
        head_and_pipelining(c, host, port)
        asyncio.run(publish_reaches_subscriber(c, host, port, ws_url))
        refusals(c, host, port)
    except (OSError, EOFError, ValueError, http.client.HTTPException,
            websockets.exceptions.WebSocketException) as e:
        c.check("the exchange", False, f"{type(e).__name__}: {e}")
        print(f"FAIL after {c.total} checks: {type(e).__name__}: {e}")
        return 1
    if c.failed:
        print(f"FAIL {len(c.failed)} of {c.total} checks: " + "; ".join(c.failed))
        return 1
    print(f"PASS {c.total} checks (endpoints, HEAD, pipelining, publish to /ws, 411/413/431/400/405/404)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
