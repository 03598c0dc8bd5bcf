#!/usr/bin/env python3
"""tests/tools/tcp_forward.py - plain TCP port forwarding for the soak harness.

    tcp_forward.py [--reset-first-after N] LISTEN_HOST:PORT=TARGET_HOST:PORT [...]

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

--reset-first-after N: the first connection accepted is reset (both ends,
RST) once N bytes from the client have been passed on, and "RESET <bytes>"
is printed; later connections are plain. The Redis tests use it to cut the
relay's connection while it is still writing a large pipeline.
"""
import asyncio
import sys


RESET_AFTER = None   # --reset-first-after
CONNECTIONS = 0


async def pipe(reader, writer, budget=None):
    """Copy reader to writer; with budget ([bytes still allowed, the other
    end's writer]), reset both ends once the bytes are used up."""
    try:
        passed = 0
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if budget is not None and len(data) >= budget[0]:
                writer.write(data[:budget[0]])
                passed += budget[0]
                print(f"RESET {passed}", flush=True)
                budget[1].transport.abort()
                writer.transport.abort()
                break
            if budget is not None:
                budget[0] -= len(data)
                passed += len(data)
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
        global CONNECTIONS
        CONNECTIONS += 1
        budget = [RESET_AFTER, cw] if RESET_AFTER is not None and CONNECTIONS == 1 else None
        await asyncio.gather(pipe(cr, tw, budget), pipe(tr, cw))
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
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "--reset-first-after":
        RESET_AFTER = int(args[1])
        args = args[2:]
    if not args:
        sys.exit("usage: tcp_forward.py [--reset-first-after N] LISTEN_HOST:PORT=TARGET_HOST:PORT ...")
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        pass
