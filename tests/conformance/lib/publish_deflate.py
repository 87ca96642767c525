"""Publish one JSON document to a channel through the control socket, N times, and check that the
server compressed it for a permessage-deflate subscriber (Python stdlib only).

usage: python3 publish_deflate.py CONTROL CHANNEL COUNT INTERVAL_S DOC_FILE
  CONTROL  unix:PATH or tcp:HOST:PORT
  DOC_FILE one line of compact JSON, published as `data` byte for byte (a `format=raw`
           subscriber receives exactly that text: the server keeps a JSON value's text as sent)

The server compresses a message once, at the channel's owner, when it has an audience
(docs/protocol.md, "Compression"), and sends the compressed frame to the subscribers that
negotiated permessage-deflate. Two counters of control `stats` (summed over shards) show it:
`frames_compressed` rises by 2 for each message that had an audience (its envelope and its raw
frame), and `bytes_out` — everything the server sent meanwhile — must stay below that many
uncompressed copies of the document: the publishes ask for no reply, so what was sent is the
first `stats` reply (its length is known), the subscriber's messages and its close frame, and
plain frames would be at least the document's length each.
Prints one line with both deltas. Exit 0 when both hold, 1 when one does not, 2 on a connection
problem or an error reply.
"""
import json
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from control import connect  # noqa: E402


def publish(sock, channel, raw_data):
    line = json.dumps({"method": "publish", "channel": channel, "noreply": True})
    sock.sendall((line[:-1] + ',"data":' + raw_data + "}\n").encode())


def counters(sock, reader):
    """(frames_compressed, bytes_out, bytes of this reply as sent)."""
    sock.sendall(b'{"id":0,"method":"stats"}\n')
    line = reader.readline()
    if not line:
        raise ConnectionError("control socket closed")
    reply = json.loads(line)
    if "error" in reply:
        raise RuntimeError(f"error reply to stats: {reply['error']}")
    shards = reply["result"]["shards"]
    return (sum(s["frames_compressed"] for s in shards), sum(s["bytes_out"] for s in shards),
            len(line))


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
        zipped0, out0, reply0 = counters(sock, reader)
        for _ in range(count):
            publish(sock, channel, doc)
            time.sleep(interval)
        zipped1, out1, _ = counters(sock, reader)
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:
        print(f"publish_deflate: {e}", file=sys.stderr)
        return 2
    sent = out1 - out0 - reply0
    delivered = (zipped1 - zipped0) // 2
    plain = delivered * len(doc)
    print(f"frames_compressed +{zipped1 - zipped0} ({delivered} messages with an audience); "
          f"bytes sent to the subscriber {sent}, uncompressed they would be over {plain}")
    return 0 if delivered >= 3 and 0 < sent < plain else 1


if __name__ == "__main__":
    sys.exit(main())
