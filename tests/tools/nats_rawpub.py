#!/usr/bin/env python3
"""nats_rawpub.py URL SUBJECT_HEX HEADERS_HEX BODY_HEX

One JetStream publish with arbitrary bytes in the subject, the headers and
the body, written in the NATS client protocol by hand (HPUB with a reply
subject), so that bytes a client library would refuse or re-encode reach
the server exactly. Prints the PubAck (or the error) the server answers.
HEADERS_HEX is the header block without the "NATS/1.0" line, e.g. the hex of
"Nats-Msg-Id: abc\\r\\n"; "" for none. Exit 0 when a PubAck came back.
"""
import socket
import sys
from urllib.parse import urlparse

u = urlparse(sys.argv[1])
subj, hdrs, body = (bytes.fromhex(a) for a in sys.argv[2:5])
s = socket.create_connection((u.hostname, u.port or 4222), timeout=10)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'
          b"SUB _rawpub.ack 1\r\n")
h = b"NATS/1.0\r\n" + hdrs + b"\r\n"
s.sendall(b"HPUB " + subj + b" _rawpub.ack %d %d\r\n" % (len(h), len(h) + len(body)) + h + body + b"\r\n")
while True:
    line = f.readline()
    if not line:
        sys.exit("connection closed")
    if line.startswith(b"PING"):
        s.sendall(b"PONG\r\n")
    elif line.startswith(b"MSG") or line.startswith(b"HMSG"):
        n = int(line.split()[-1])
        data = f.read(n + 2)[:n]
        print(data.decode("utf-8", "replace"))
        sys.exit(0 if b'"seq"' in data else 1)
    elif line.startswith(b"-ERR"):
        sys.exit(line.decode(errors="replace").strip())
