#!/usr/bin/env python3
"""tests/tools/sqs_sigv4_listener.py - a stand-in SQS endpoint that checks
AWS Signature Version 4 (the local emulator accepts any signature).

    sqs_sigv4_listener.py <port> <log file> <key_id=secret>[,<key_id=secret>...]

Listens on 127.0.0.1:<port>. For every request it recomputes the SigV4
signature from the request as received (method, path, query, the headers
named in SignedHeaders, the body's SHA-256) with the secret of the key id in
the Authorization header, and appends one JSON line to the log:
    {"target", "authorization", "security_token", "content_type", "path",
     "queue_url", "signature_valid", "why"}
It answers GetQueueAttributes and SendMessageBatch like SQS (every entry
Successful), ReceiveMessage with no message (after at most 1 s of its wait),
anything else with {}.
Prints "READY" once listening. Standard library only.
"""
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
LOG = sys.argv[2]
SECRETS = dict(kv.split("=", 1) for kv in sys.argv[3].split(",") if kv)


def hm(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def verify(method, path, headers, body):
    auth = headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False, "no AWS4-HMAC-SHA256 Authorization header"
    parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    key_id, date, region, service, term = parts["Credential"].split("/")
    if key_id not in SECRETS:
        return False, "unknown key id " + key_id
    signed = parts["SignedHeaders"].split(";")
    for required in ("host", "x-amz-date"):
        if required not in signed:
            return False, required + " is not signed"
    canon_headers = "".join(
        "%s:%s\n" % (h, " ".join((headers.get(h) or "").strip().split())) for h in signed)
    uri, _, query = path.partition("?")
    canonical = "\n".join([method, uri, query, canon_headers, ";".join(signed),
                           hashlib.sha256(body).hexdigest()])
    amz_date = headers.get("X-Amz-Date", "")
    if not amz_date.startswith(date):
        return False, "X-Amz-Date does not match the credential scope date"
    scope = "/".join([date, region, service, term])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = hm(("AWS4" + SECRETS[key_id]).encode(), date)
    k = hm(hm(hm(k, region), service), term)
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, parts["Signature"]):
        return False, "signature mismatch"
    return True, ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        valid, why = verify("POST", self.path, self.headers, body)
        target = self.headers.get("X-Amz-Target", "")
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            req = {}
        with open(LOG, "a") as f:
            f.write(json.dumps({
                "target": target, "authorization": self.headers.get("Authorization"),
                "security_token": self.headers.get("X-Amz-Security-Token"),
                "content_type": self.headers.get("Content-Type"), "path": self.path,
                "queue_url": req.get("QueueUrl"), "signature_valid": valid, "why": why}) + "\n")
        action = target.rpartition(".")[2]
        if action == "GetQueueAttributes":
            out = {"Attributes": {"ApproximateNumberOfMessages": "0",
                                  "ApproximateNumberOfMessagesNotVisible": "0",
                                  "VisibilityTimeout": "30"}}
        elif action == "SendMessageBatch":
            out = {"Successful": [{"Id": e["Id"], "MessageId": "m-" + e["Id"]}
                                  for e in req.get("Entries", [])]}
        elif action == "ReceiveMessage":
            time.sleep(min(float(req.get("WaitTimeSeconds", 0)), 1.0))  # a short long poll
            out = {}
        else:
            out = {}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("READY", flush=True)
server.serve_forever()
