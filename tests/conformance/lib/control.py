"""Send NDJSON requests to a ringcast control socket and print the replies (Python stdlib only).

usage: python3 control.py ADDRESS < requests.ndjson
  ADDRESS  unix:PATH or tcp:HOST:PORT

Every non-empty line of standard input is one request; they are written pipelined on one
connection, then one reply per request is read (docs/control.md: replies come in request
order) and printed, one per line. Every socket operation times out after 10 s.
Exit: 0 when every reply is a result, 1 when one is an error, 2 on a connection problem.
"""
import json
import socket
import sys


def connect(address):
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(address[len("unix:"):])
        return sock
    if address.startswith("tcp:"):
        host, _, port = address[len("tcp:"):].rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    raise ValueError("ADDRESS must be unix:PATH or tcp:HOST:PORT, got " + address)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    requests = [line.strip() for line in sys.stdin if line.strip()]
    try:
        sock = connect(sys.argv[1])
        sock.sendall("".join(r + "\n" for r in requests).encode())
        replies = sock.makefile("rb")
        failed = False
        for _ in requests:
            line = replies.readline()
            if not line:
                print("control.py: the server closed the connection early", file=sys.stderr)
                return 2
            reply = json.loads(line)
            failed = failed or "result" not in reply
            print(json.dumps(reply), flush=True)
        sock.close()
    except (OSError, ValueError) as e:
        print("control.py: " + str(e), file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
