"""WebSocket smoke test with the PyPI `websockets` client.

usage: python smoke_client.py URL
Environment: SMOKE_MODE (echo|push), SMOKE_SEND, SMOKE_EXPECT, SMOKE_TIMEOUT (seconds),
             SMOKE_OPEN_FILE (written once the socket is open).
echo: sends the messages of PLAN (text, non-ASCII text, binary, empty text, empty binary,
      256 KiB text), expects each back unchanged and in order, closes with 1000, expects 1000.
push: sends SMOKE_SEND once if set, waits for SMOKE_EXPECT messages (default 1), closes.
Prints one "PASS ..." or "FAIL ..." line on stdout; exit 0 or 1.
"""

import asyncio
import os
import sys

import websockets
from websockets.asyncio.client import connect

PLAN = [
    "hello",
    "κόσμε — UTF-8 ✓ 🚀",
    bytes(i & 0xFF for i in range(300)),
    "",
    b"",
    "x" * (256 * 1024),
]


async def run(url, mode, send, expect, open_file, progress):
    async with connect(url, max_size=64 * 2**20, open_timeout=5, close_timeout=5) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        print(f"open, extensions={ext!r}", file=sys.stderr)
        if open_file:
            with open(open_file, "w") as f:
                f.write("open\n")
        if mode == "echo":
            for m in PLAN:
                await ws.send(m)
            for i, want in enumerate(PLAN):
                got = await ws.recv()
                if type(got) is not type(want) or got != want:
                    return False, f"echo mismatch at message {i} (got {type(got).__name__} of {len(got)})"
                progress[0] += 1
        else:
            if send is not None:
                await ws.send(send)
            for _ in range(expect):
                got = await ws.recv()
                progress[0] += 1
                shown = got[:200] if isinstance(got, str) else f"[binary {len(got)} bytes]"
                print(f"message {progress[0]}: {shown}", file=sys.stderr)
        await ws.close(1000, "bye")
    rcvd = ws.protocol.close_rcvd
    if rcvd is None or rcvd.code != 1000:
        return False, f"server close frame: {rcvd}, wanted 1000"
    return True, (f"{mode}: {progress[0]} messages, clean close 1000, extensions={ext!r}, "
                  f"websockets {websockets.__version__}")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    url = sys.argv[1]
    mode = os.environ.get("SMOKE_MODE", "echo")
    send = os.environ.get("SMOKE_SEND")
    expect = int(os.environ.get("SMOKE_EXPECT", "1"))
    timeout = float(os.environ.get("SMOKE_TIMEOUT", "10"))
    open_file = os.environ.get("SMOKE_OPEN_FILE")
    progress = [0]
    try:
        ok, msg = asyncio.run(asyncio.wait_for(run(url, mode, send, expect, open_file, progress), timeout))
    except asyncio.TimeoutError:
        ok, msg = False, f"timeout after {timeout:g} s ({progress[0]} messages received)"
    except Exception as e:  # refused, handshake rejected, closed early...
        ok, msg = False, f"{type(e).__name__}: {e} ({progress[0]} messages received)"
    print(("PASS " if ok else "FAIL ") + msg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
