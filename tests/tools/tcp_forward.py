#!/usr/bin/env python3
"""tests/tools/tcp_forward.py - plain TCP port forwarding for the soak harness.

    tcp_forward.py LISTEN_HOST:PORT=TARGET_HOST:PORT [...]

Each mapping accepts connections on LISTEN_HOST:PORT and copies bytes both
ways to a new connection to TARGET_HOST:PORT; when either side closes or
fails, both are closed. Prints "READY" once every listener is open.

Why: a relay in a network namespace (tests/soak/soak.sh) must reach servers
that only listen on the host's 127.0.0.1 (librdkafka's mock cluster cannot
bind elsewhere and advertises 127.0.0.1). One forwarder in the namespace
listens on the namespace's 127.0.0.1 and connects to the host's veth
address, where a second forwarder passes the bytes on to the host's
127.0.0.1. A partition of that peer drops the packets between the two, so
the relay sees silence, never a reset.
"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def handler(target_host, target_port):
    async def handle(cr, cw):
        try:
            tr, tw = await asyncio.open_connection(target_host, target_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, tw), pipe(tr, cw))
    return handle


async def main(mappings):
    servers = []
    for m in mappings:
        listen, target = m.split("=", 1)
        lh, lp = listen.rsplit(":", 1)
        th, tp = target.rsplit(":", 1)
        servers.append(await asyncio.start_server(handler(th, int(tp)), lh, int(lp),
                                                  reuse_address=True))
    print("READY", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: tcp_forward.py LISTEN_HOST:PORT=TARGET_HOST:PORT ...")
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
