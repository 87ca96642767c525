"""Publish one JSON document to a channel through the control socket, N times, and check that the
server compressed it for a permessage-deflate subscriber (Python stdlib only).

usage: python3 publish_deflate.py CONTROL CHANNEL COUNT INTERVAL_S DOC_FILE
  CONTROL  unix:PATH or tcp:HOST:PORT
  DOC_FILE one line of compact JSON, published as `data` byte for byte (a `format=raw`
           subscriber receives exactly that text: the server keeps a JSON value's text as sent)

The server compresses a message once, at the channel's owner, and only when a subscriber
negotiated permessage-deflate (docs/protocol.md, "Compression"); the shards' `frames_compressed`
counter (control `stats`) therefore rises only if a deflate subscriber was there to receive it.
Prints one line: frames_compressed before, after, and the delta. Exit 0 when the delta is at least
1, 1 when it is 0, 2 on a connection problem or an error reply.
"""
import json
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from control import connect  # noqa: E402


def request(sock, reader, req, raw_data=None):
    line = json.dumps(req)
    if raw_data is not None:
        line = line[:-1] + ',"data":' + raw_data + "}"
    sock.sendall((line + "\n").encode())
    line = reader.readline()
    if not line:
        raise ConnectionError("control socket closed")
    reply = json.loads(line)
    if "error" in reply:
        raise RuntimeError(f"error reply to {req['method']}: {reply['error']}")
    return reply["result"]


def compressed(sock, reader):
    stats = request(sock, reader, {"id": 0, "method": "stats"})
    return sum(s["frames_compressed"] for s in stats["shards"])


def main():
    if len(sys.argv) != 6:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    control, channel, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with open(sys.argv[5], encoding="utf-8") as f:
        doc = f.read().strip()
    json.loads(doc)  # the file must be JSON; a broken fixture is a setup problem
    try:
        sock = connect(control)
        reader = sock.makefile("rb")
        before = compressed(sock, reader)
        for i in range(count):
            request(sock, reader, {"id": i + 1, "method": "publish", "channel": channel}, doc)
            time.sleep(interval)
        after = compressed(sock, reader)
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:
        print(f"publish_deflate: {e}", file=sys.stderr)
        return 2
    print(f"frames_compressed before={before} after={after} delta={after - before}")
    return 0 if after > before else 1


if __name__ == "__main__":
    sys.exit(main())
