"""Publishes text payloads to a ringcast channel as a /ws client (client publish must be enabled
for the channel's namespace). Used by the push-mode smokes: it publishes COUNT times, INTERVAL
seconds apart, so a subscriber whose subscription reaches the channel's owner a moment after its
socket opened still receives messages. Bounded: COUNT * INTERVAL seconds plus a 10 s connect limit.

usage: publish_ws.py URL CHANNEL COUNT INTERVAL
"""
import asyncio
import json
import sys

import websockets


async def main(url: str, channel: str, count: int, interval: float) -> None:
    async with websockets.connect(url, open_timeout=10, max_size=None) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome.get("op") == "welcome", welcome
        for n in range(count):
            await ws.send(json.dumps({"op": "publish", "channel": channel, "data": f"push {n} ✓"}))
            await asyncio.sleep(interval)


if __name__ == "__main__":
    url, channel, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    asyncio.run(main(url, channel, count, interval))
