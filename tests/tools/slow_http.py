#!/usr/bin/env python3
"""slow_http.py - hostile HTTP/1.1 clients for tests/integration/http_flood.sh.

Plain sockets (no HTTP library: the point is to misbehave), one thread per
client. Prints one JSON summary object on stdout.

  slow_http.py headers --port P [--clients N] [--interval S] [--duration S]
                       [--path /health] [--reconnect-delay S]
      N clients that send a request line and then one header line every S
      seconds, never finishing the headers. With --reconnect-delay each client
      reconnects that long after the server closed it, for --duration seconds
      in all; without, each client stops once closed.
      Summary: opened, closed, answered (responses seen: must be 0),
      lifetimes_ms (of connections the server closed), open_at_end.

  slow_http.py upload --port P [--clients N] [--path /inbox] [-H 'Name: value']...
                      [--send BYTES] [--content-length L | --chunked] [--hold S]
      N clients that POST: headers, then BYTES of body (in 64 KiB pieces; as
      chunks with --chunked, else with Content-Length L, default BYTES), then
      nothing for up to --hold seconds, reading whatever the server says.
      Summary: statuses {"503": n, ...} of answers received, "none" for
      connections closed (or still open at the end) without an answer,
      answer_ms (time from connect to each answer), closed_ms (time from
      connect to the server closing connections that got no answer).
"""
import argparse
import json
import socket
import threading
import time

lock = threading.Lock()


def now_ms():
    return time.monotonic() * 1000.0


def headers_client(args, stats, stop_at):
    while time.monotonic() < stop_at:
        try:
            s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
        except OSError:
            time.sleep(0.05)
            continue
        t0 = now_ms()
        with lock:
            stats["opened"] += 1
        closed = False
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % args.path).encode())
            n = 0
            while time.monotonic() < stop_at:
                s.settimeout(max(0.01, min(args.interval, stop_at - time.monotonic())))
                try:
                    data = s.recv(4096)
                    if not data:
                        closed = True
                        break
                    with lock:
                        stats["answered"] += 1
                    closed = True
                    break
                except socket.timeout:
                    pass
                n += 1
                s.sendall(("X-Slow-%d: %d\r\n" % (n, n)).encode())
        except OSError:
            closed = True
        finally:
            s.close()
        with lock:
            if closed:
                stats["closed"] += 1
                stats["lifetimes_ms"].append(int(now_ms() - t0))
            else:
                stats["open_at_end"] += 1
        if args.reconnect_delay is None:
            return
        time.sleep(args.reconnect_delay)


def read_answer(s, deadline):
    """Read until a status line is complete, EOF or the deadline.
    Returns (status or None, got_eof)."""
    buf = b""
    while b"\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, False
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            return None, False
        except OSError:
            break
        if not data:
            break
        buf += data
    if buf.startswith(b"HTTP/1.") and b"\r\n" in buf:
        parts = buf.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) >= 2 and parts[1].isdigit():
            return int(parts[1]), False
    return None, True


def upload_client(args, stats):
    t0 = now_ms()
    deadline = time.monotonic() + args.hold
    try:
        s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
    except OSError:
        with lock:
            stats["statuses"]["connect_failed"] = stats["statuses"].get("connect_failed", 0) + 1
        return
    head = "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" % args.path
    for h in args.header:
        head += h + "\r\n"
    if args.chunked:
        head += "Transfer-Encoding: chunked\r\n"
    else:
        cl = args.content_length if args.content_length is not None else args.send
        head += "Content-Length: %d\r\n" % cl
    head += "\r\n"
    status, eof = None, False
    try:
        s.settimeout(5)
        s.sendall(head.encode())
        left = args.send
        piece = b"[" + b" " * 65535
        while left > 0:
            n = min(left, 65536)
            data = piece[:n]
            if args.chunked:
                data = b"%x\r\n" % n + data + b"\r\n"
            s.sendall(data)
            left -= n
            piece = b" " * 65536
    except OSError:
        pass  # refused mid-body: the answer may be waiting to be read
    status, eof = read_answer(s, deadline)
    s.close()
    with lock:
        key = str(status) if status else "none"
        stats["statuses"][key] = stats["statuses"].get(key, 0) + 1
        if status:
            stats["answer_ms"].append(int(now_ms() - t0))
        elif eof:
            stats["closed_ms"].append(int(now_ms() - t0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["headers", "upload"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--path", default=None)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--reconnect-delay", type=float, default=None)
    ap.add_argument("-H", "--header", action="append", default=[])
    ap.add_argument("--send", type=int, default=0)
    ap.add_argument("--content-length", type=int, default=None)
    ap.add_argument("--chunked", action="store_true")
    ap.add_argument("--hold", type=float, default=5.0)
    args = ap.parse_args()
    if args.path is None:
        args.path = "/health" if args.mode == "headers" else "/inbox"
    threads = []
    if args.mode == "headers":
        stats = {"opened": 0, "closed": 0, "answered": 0, "open_at_end": 0, "lifetimes_ms": []}
        stop_at = time.monotonic() + args.duration
        for _ in range(args.clients):
            t = threading.Thread(target=headers_client, args=(args, stats, stop_at), daemon=True)
            t.start()
            threads.append(t)
    else:
        stats = {"statuses": {}, "answer_ms": [], "closed_ms": []}
        for _ in range(args.clients):
            t = threading.Thread(target=upload_client, args=(args, stats), daemon=True)
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    if "lifetimes_ms" in stats:
        stats["lifetimes_ms"].sort()
    print(json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    main()
