#!/usr/bin/env python3
"""tests/tools/sqs_fault_proxy.py - an HTTP proxy in front of an SQS endpoint
that fails chosen actions on demand, for the SQS fault tests.

    sqs_fault_proxy.py <port> <upstream URL> <control file>

Listens on 127.0.0.1:<port> and forwards every POST (headers and body) to
<upstream URL>. While <control file> exists, a request whose X-Amz-Target
action is named in it (one action per line, e.g. DeleteMessageBatch) is
not forwarded but answered with HTTP 500 {"__type":"...#InternalFailure"};
each such request is counted in <control file>.hits. Prints "READY" once
listening. Standard library only.
"""
import os
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, UPSTREAM, CONTROL = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def failing(action):
    try:
        with open(CONTROL) as f:
            return action in (line.strip() for line in f)
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, data, ctype="application/x-amz-json-1.0"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        action = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
        if failing(action):
            with open(CONTROL + ".hits", "a") as f:
                f.write(action + "\n")
            return self.reply(500, b'{"__type":"com.amazon.coral.service#InternalFailure",'
                                   b'"message":"injected by sqs_fault_proxy"}')
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        req = urllib.request.Request(UPSTREAM + self.path, data=body, headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                self.reply(r.status, r.read(), r.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as e:
            self.reply(e.code, e.read(), e.headers.get("Content-Type", ""))
        except OSError as e:
            self.reply(502, str(e).encode(), "text/plain")


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("READY", flush=True)
server.serve_forever()
