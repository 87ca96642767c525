#!/usr/bin/env python3
"""Publish one message to a ringcast channel through the control socket (docs/control.md).

usage: RINGCAST_CONTROL=unix:/tmp/ringcast.sock python3 publish.py CHANNEL MESSAGE

Python standard library only. The address is unix:PATH or tcp:HOST:PORT (default
unix:/tmp/ringcast.sock); set RINGCAST_CONTROL_TOKEN when the server has a token.
Prints the reply line; exit status 0 published, 1 error reply, 2 usage or connection problem.
"""
import json
import os
import socket
import sys


def connect(address):
    """Opens the control socket named by unix:PATH or tcp:HOST:PORT."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)  # seconds, for the connect and every read
        sock.connect(address[len("unix:"):])
        return sock
    if address.startswith("tcp:"):
        host, _, port = address[len("tcp:"):].rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    raise ValueError("RINGCAST_CONTROL must be unix:PATH or tcp:HOST:PORT")


def main():
    if len(sys.argv) != 3:
        print("usage: publish.py CHANNEL MESSAGE", file=sys.stderr)
        return 2
    channel, message = sys.argv[1], sys.argv[2]
    address = os.environ.get("RINGCAST_CONTROL") or "unix:/tmp/ringcast.sock"
    token = os.environ.get("RINGCAST_CONTROL_TOKEN")

    # One JSON object per line. "text" is delivered as is; use "data" for any JSON value.
    requests = [{"id": 1, "method": "publish", "channel": channel, "text": message}]
    if token:
        requests.insert(0, {"method": "auth", "token": token})
    try:
        with connect(address) as sock:
            sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
            replies = sock.makefile("rb")
            # One reply line per request, in order: {"id":1,"result":{"offset":N,"epoch":E}}
            # or {"id":1,"error":{"code":"...","message":"..."}}.
            for _ in requests:
                line = replies.readline()
                if not line:
                    raise ConnectionError("the server closed the connection")
                reply = json.loads(line)
                if "error" in reply:
                    break
    except (OSError, ValueError) as e:
        print(f"publish.py: {address}: {e}", file=sys.stderr)
        return 2
    print(line.decode().rstrip("\n"))
    return 1 if "error" in reply else 0


if __name__ == "__main__":
    sys.exit(main())
