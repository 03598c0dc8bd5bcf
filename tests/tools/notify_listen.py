#!/usr/bin/env python3
"""notify_listen.py SOCKET LOG [URL] - a stand-in for systemd's notification
socket (sd_notify(3)): binds a datagram socket at SOCKET and appends every
notification it receives to LOG as one JSON object per line,
{"t": <monotonic seconds>, "lines": ["READY=1", "STATUS=..."]}.
With URL, a notification holding READY=1 also records what a GET of URL
answered at that moment ("http": status code, 0 when nothing answered), so
a test can check that the relay listened before it said READY.
Runs until killed."""
import json
import os
import socket
import sys
import time
import urllib.request


def main():
    path, log = sys.argv[1], sys.argv[2]
    url = sys.argv[3] if len(sys.argv) > 3 else None
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o777)
    with open(log, "a", encoding="utf-8") as out:
        out.write(json.dumps({"t": time.monotonic(), "lines": ["LISTENING"]}) + "\n")
        out.flush()
        while True:
            data = sock.recv(65536)
            rec = {"t": time.monotonic(),
                   "lines": data.decode("utf-8", "replace").split("\n")}
            if url and "READY=1" in rec["lines"]:
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        rec["http"] = r.status
                except urllib.error.HTTPError as e:
                    rec["http"] = e.code
                except OSError:
                    rec["http"] = 0
            out.write(json.dumps(rec) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
