"""Tests examples/event-consumer/ against a running server with Python websockets clients.

usage: python event_consumer.py WS_URL CONTROL_ADDR EXAMPLE_DIR WORK_DIR
  WS_URL        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
  CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT
  EXAMPLE_DIR   examples/event-consumer (consumer.php, token.php)
  WORK_DIR      scratch directory (the messages file, the consumers' logs)
Environment: RINGCAST_HS256_SECRET (for token.php), PHP (default php), USERS_WAIT_S (bound of
every wait, seconds, default 20).

1. A probe connection of alice sends {"op":"send"} while no consumer runs: no_consumer.
2. Two consumers (php consumer.php, group "workers") start; each must log "ready".
3. Alice (two more tabs), bob and an anonymous client connect; each connection's `connect`
   event must be in exactly one consumer's log (the group shares connections).
4. Alice's two new tabs and bob send 3 messages each (quotes, a backslash, non-ASCII), with ids;
   every one must get "sent"; every alice tab (the probe too) must get an ack for each of
   alice's 6 messages, bob for his 3 (send_user reaches every tab of the sender), each from the
   consumer that logged the sender's `connect`; every subscriber of chat:lobby must get the 9
   messages, attributed to their sender, each sender's in order; the messages file must hold
   each exactly once with the right user and connection. The anonymous client is refused with
   a push to that connection only; a client's own publish to chat:lobby is refused (forbidden).
5. Alice closes a tab: its consumer logs the `close` with code 1000.
6. The consumers stop (SIGTERM): the probe's send must get no_consumer again.
Prints one "PASS ..." or "FAIL ..." line on stdout (details on stderr); exit 0 or 1.
"""
import asyncio
import json
import os
import random
import re
import signal
import string
import subprocess
import sys
import time

import websockets

WAIT_S = float(os.environ.get("USERS_WAIT_S", "20"))
PHP = os.environ.get("PHP", "php")
T0 = time.monotonic()


def step(text):
    print(f"[event-consumer] {time.monotonic() - T0:.2f}s {text}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Fail(what)


def token(example_dir, user):
    r = subprocess.run(["timeout", "20", PHP, os.path.join(example_dir, "token.php"), user],
                       capture_output=True, text=True, check=False)
    expect(r.returncode == 0 and r.stdout.count(".") == 2,
           f"php token.php {user} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout.strip()


class Client:
    """One /ws connection; every message it receives is kept, in order."""

    def __init__(self, label):
        self.label = label
        self.got = []
        self.ws = None
        self.conn = None
        self.reader = None

    async def open(self, url):
        self.ws = await websockets.connect(url, open_timeout=10, max_size=None)
        welcome = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT_S))
        expect(welcome.get("op") == "welcome", f"{self.label}: first message {welcome}")
        self.conn = welcome["conn"]
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self):
        try:
            async for text in self.ws:
                self.got.append(json.loads(text))
        except websockets.ConnectionClosed:
            pass

    async def send(self, command):
        await self.ws.send(json.dumps(command, ensure_ascii=False))

    def where(self, pred):
        return [m for m in self.got if pred(m)]

    async def wait(self, what, pred, count=1):
        """Bounded poll until `count` received messages satisfy pred; returns them."""
        deadline = time.monotonic() + WAIT_S
        while True:
            found = self.where(pred)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise Fail(f"{self.label}: no {what} within {WAIT_S:.0f}s (has {len(found)} of "
                           f"{count}; last messages: {json.dumps(self.got[-3:])[:300]})")
            await asyncio.sleep(0.02)

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
            await asyncio.wait_for(self.reader, WAIT_S)


def reply_to(id_):
    return lambda m: m.get("id") == id_ and m.get("op") in ("sent", "error")


async def expect_no_consumer(client, ref):
    """Sends until the reply is no_consumer (bounded: a stopping consumer leaves in a moment)."""
    deadline = time.monotonic() + WAIT_S
    n = 0
    while True:
        n += 1
        id_ = f"{ref}-{n}"
        await client.send({"op": "send", "data": {"text": "anyone?", "ref": id_}, "id": id_})
        (reply,) = await client.wait(f"the reply to {id_}", reply_to(id_))
        if reply.get("op") == "error" and reply.get("code") == "no_consumer":
            return n
        expect(time.monotonic() < deadline, f"still no no_consumer after {n} tries: {reply}")
        await asyncio.sleep(0.05)


class Consumer:
    def __init__(self, name, example_dir, work, control_addr):
        self.name = name
        self.log_path = os.path.join(work, f"{name}.log")
        env = dict(os.environ, RINGCAST_CONTROL=control_addr, WORKER_NAME=name,
                   MESSAGES_FILE=os.path.join(work, "messages.jsonl"))
        env.pop("CONSUMER_GROUP", None)  # the example's default group, "workers"
        self.log = open(self.log_path, "w")
        # timeout(1) bounds the consumer's life and passes a SIGTERM on to it.
        self.proc = subprocess.Popen(
            ["timeout", "--kill-after=2", str(int(WAIT_S * 4 + 30)), PHP,
             os.path.join(example_dir, "consumer.php")],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    async def wait_log(self, what, pattern):
        deadline = time.monotonic() + WAIT_S
        while not re.search(pattern, self.text(), re.M):
            if self.proc.poll() is not None:
                raise Fail(f"consumer {self.name} exited {self.proc.returncode} before {what}: "
                           f"{self.text()[-300:]}")
            if time.monotonic() > deadline:
                raise Fail(f"consumer {self.name}: no {what} within {WAIT_S:.0f}s: {self.text()[-300:]}")
            await asyncio.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


async def main(ws_url, control_addr, example_dir, work):
    tag = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    tokens = {u: token(example_dir, u) for u in (alice, bob)}
    url = lambda user: f"{ws_url}?token={tokens[user]}"  # noqa: E731
    clients = []
    consumers = []
    try:
        # 1. Nobody listens for message events.
        probe = await Client("alice probe").open(url(alice))
        clients.append(probe)
        tries = await expect_no_consumer(probe, "before")
        expect(tries == 1, "the first send without a consumer did not get no_consumer")
        step("no consumer: no_consumer")

        # 2. Two workers of one group.
        consumers = [Consumer(n, example_dir, work, control_addr) for n in ("w1", "w2")]
        for c in consumers:
            await c.wait_log("ready line", r"\] ready: ")
        step("both consumers ready")

        # 3. Connections after the consumers: their connect events.
        a1 = await Client("alice tab 1").open(url(alice))
        a2 = await Client("alice tab 2").open(url(alice))
        b1 = await Client("bob tab").open(url(bob))
        anon = await Client("anonymous").open(ws_url)
        clients += [a1, a2, b1, anon]
        owner = {}
        for cl in (a1, a2, b1, anon):
            pattern = rf"\] connect conn={cl.conn} "
            deadline = time.monotonic() + WAIT_S
            while True:
                found = [c.name for c in consumers if re.search(pattern, c.text())]
                if found or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            expect(len(found) == 1, f"{cl.label}: connect event logged by {found or 'no consumer'}, expected one")
            owner[cl.conn] = found[0]
        step("connect events: " + ", ".join(f"{cl.label} -> {owner[cl.conn]}" for cl in (a1, a2, b1, anon)))
        for cl in (probe, a1, a2, b1):
            await cl.wait("subscribed to chat:lobby",
                          lambda m: m.get("op") == "subscribed" and m.get("channel") == "chat:lobby")

        # 4. Messages.
        sent = []  # (client, user, ref, text)
        for cl, user in ((a1, alice), (a2, alice), (b1, bob)):
            for k in range(1, 4):
                ref = f"{cl.conn}-{k}"
                text = f'{cl.label} #{k} {tag}: "quoted" \\ é ✓'
                await cl.send({"op": "send", "data": {"room": "lobby", "text": text, "ref": ref}, "id": ref})
                sent.append((cl, user, ref, text))
        await anon.send({"op": "send", "data": {"text": "hi", "ref": "anon-1"}, "id": "anon-1"})
        await a1.send({"op": "publish", "channel": "chat:lobby", "data": {"user": bob, "text": "spoof"},
                       "id": "spoof"})
        for cl, _, ref, _ in sent:
            (r,) = await cl.wait(f"the reply to {ref}", reply_to(ref))
            expect(r.get("op") == "sent", f"{cl.label}: send {ref} answered {r}")
        (r,) = await anon.wait("the reply to anon-1", reply_to("anon-1"))
        expect(r.get("op") == "sent", f"anonymous: send answered {r}")
        (r,) = await a1.wait("the reply to the client publish", reply_to("spoof"))
        expect(r.get("op") == "error" and r.get("code") == "forbidden",
               f"a client publish to chat:lobby was not refused: {r}")

        def acks(m):
            return m.get("op") == "push" and isinstance(m.get("data"), dict) and "ack" in m["data"]

        for cl, user in ((probe, alice), (a1, alice), (a2, alice), (b1, bob)):
            want = sorted(ref for _, u, ref, _ in sent if u == user)
            got = await cl.wait(f"{len(want)} acks", acks, len(want))
            refs = sorted(m["data"]["ack"] for m in got)
            expect(refs == want, f"{cl.label}: acks {refs}, expected {want} (each once)")
            for m in got:
                sender = next(s for s, _, ref, _ in sent if ref == m["data"]["ack"])
                expect(m["data"]["worker"] == owner[sender.conn],
                       f"{cl.label}: ack {m['data']['ack']} from {m['data']['worker']}, but "
                       f"{owner[sender.conn]} has the sender's connection")
        (r,) = await anon.wait("the refusal", lambda m: m.get("op") == "push")
        expect(r["data"] == {"error": "log in to chat", "ref": "anon-1"}, f"anonymous got {r}")
        step("acks: every tab of the sender, from the sender's consumer")

        want_room = [(u, t) for _, u, _, t in sent]
        for cl in (probe, a1, a2, b1):
            got = await cl.wait("9 room messages",
                                lambda m: m.get("op") == "message" and m.get("channel") == "chat:lobby",
                                len(want_room))
            seen = [(m["data"]["user"], m["data"]["text"]) for m in got]
            expect(sorted(seen) == sorted(want_room),
                   f"{cl.label}: chat:lobby messages differ: {json.dumps(seen)[:300]}")
            for s in (a1, a2, b1):
                mine = [t for _, t in seen if t.startswith(s.label + " #")]
                expect(mine == [t for c, _, _, t in sent if c is s], f"{cl.label}: {s.label}'s messages out of order")
        step("chat:lobby: 9 messages, attributed, in order per sender")

        path = os.path.join(work, "messages.jsonl")
        expect(os.path.exists(path), "the consumers wrote no messages file")
        with open(path) as f:
            stored = [json.loads(line) for line in f if line.strip()]
        expect(sorted((r["user"], r["conn"], r["text"]) for r in stored) ==
               sorted((u, c.conn, t) for c, u, _, t in sent),
               f"the messages file differs: {json.dumps(stored)[:400]}")
        per_worker = {c.name: sum(1 for r in stored if r["worker"] == c.name) for c in consumers}

        # 5. A tab closes: its consumer sees the close.
        await a2.close()
        await consumers[[c.name for c in consumers].index(owner[a2.conn])].wait_log(
            "close event of alice tab 2", rf"\] close conn={a2.conn} user={alice} code=1000$")

        # 6. The consumers stop: no_consumer again.
        for c in consumers:
            c.stop()
        consumers = []
        tries = await expect_no_consumer(probe, "after")
        step(f"consumers stopped: no_consumer (after {tries} send(s))")
        return (f"no_consumer without a consumer; 2 consumers of group workers took the "
                f"connections ({', '.join(f'{k}: {v} messages' for k, v in per_worker.items())}); "
                f"{len(sent)} messages stored once, published to chat:lobby in order, acked to every "
                f"tab of the sender; anonymous refused; client publish forbidden; close seen; "
                f"no_consumer after they stopped")
    finally:
        for c in consumers:
            c.stop()
        for cl in clients:
            try:
                await asyncio.wait_for(cl.close(), 5)
            except Exception:  # noqa: BLE001 (closing what is left; the verdict is made)
                pass


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    try:
        summary = asyncio.run(main(*sys.argv[1:]))
    except Fail as e:
        print(f"FAIL {e}")
        sys.exit(1)
    except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as e:
        print(f"FAIL {type(e).__name__}: {e}")
        sys.exit(1)
    print(f"PASS {summary}; {time.monotonic() - T0:.1f}s")
