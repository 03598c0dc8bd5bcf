#!/usr/bin/python3
"""rmqcli.py - a small RabbitMQ client for the tests, on python3-pika (a
client this project did not write), so what the relay publishes and acks is
checked independently of rabbitmq-c.

  rmqcli.py [--url URL] declare-exchange NAME [TYPE]
  rmqcli.py declare-queue NAME [--quorum] [--bind EXCHANGE ROUTING_KEY]...
  rmqcli.py delete-queue NAME | delete-exchange NAME | purge NAME
  rmqcli.py count NAME               ready messages (passive declare)
  rmqcli.py drain NAME [--max N]     every message as a JSON line, acked
  rmqcli.py publish EXCHANGE ROUTING_KEY N [--id-prefix P] [--type T]
            [--header K=V]... [--body B] [--no-id] [--start S] [--print-ids]
            N messages with confirms; the body B may contain {i};
            --print-ids prints each message id once it is confirmed
  rmqcli.py publish-one EXCHANGE ROUTING_KEY_HEX [--message-id-hex H]
            [--type-hex H] [--header K=V]... [--header-hex K=H]...
            [--header-int K=N]... [--body-hex H]
            one message with exactly these bytes (hostile inputs); a
            --header-hex value is sent as a byte array ('x')
The URL defaults to $PGT_RABBITMQ_URL. Exit status 1 on any error.
"""
import argparse
import base64
import json
import os
import sys

import pika


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def text(v):
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + v.hex()
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=os.environ.get("PGT_RABBITMQ_URL"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("declare-exchange")
    p.add_argument("name")
    p.add_argument("type", nargs="?", default="topic")
    p = sub.add_parser("declare-queue")
    p.add_argument("name")
    p.add_argument("--quorum", action="store_true")
    p.add_argument("--bind", nargs=2, action="append", default=[])
    for c in ("delete-queue", "delete-exchange", "purge", "count"):
        sub.add_parser(c).add_argument("name")
    p = sub.add_parser("drain")
    p.add_argument("name")
    p.add_argument("--max", type=int, default=1 << 30)
    p = sub.add_parser("publish")
    p.add_argument("exchange")
    p.add_argument("routing_key")
    p.add_argument("n", type=int)
    p.add_argument("--id-prefix", default="m")
    p.add_argument("--start", type=int, default=1)
    p.add_argument("--type")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--body", default='{"n":{i}}')
    p.add_argument("--no-id", action="store_true")
    p.add_argument("--print-ids", action="store_true",
                   help="print each message id once the broker confirmed it")
    p = sub.add_parser("publish-one")
    p.add_argument("exchange")
    p.add_argument("routing_key_hex")
    p.add_argument("--message-id-hex")
    p.add_argument("--type-hex")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--header-hex", action="append", default=[])
    p.add_argument("--header-int", action="append", default=[])
    p.add_argument("--body-hex", default="")
    a = ap.parse_args()

    conn = connect(a.url)
    ch = conn.channel()
    if a.cmd == "declare-exchange":
        ch.exchange_declare(a.name, exchange_type=a.type, durable=True)
    elif a.cmd == "declare-queue":
        args = {"x-queue-type": "quorum"} if a.quorum else None
        ch.queue_declare(a.name, durable=True, arguments=args)
        for ex, rk in a.bind:
            ch.queue_bind(a.name, ex, routing_key=rk)
    elif a.cmd == "delete-queue":
        ch.queue_delete(a.name)
    elif a.cmd == "delete-exchange":
        ch.exchange_delete(a.name)
    elif a.cmd == "purge":
        ch.queue_purge(a.name)
    elif a.cmd == "count":
        print(ch.queue_declare(a.name, passive=True).method.message_count)
    elif a.cmd == "drain":
        n = 0
        while n < a.max:
            m, props, body = ch.basic_get(a.name, auto_ack=False)
            if m is None:
                break
            out = {
                "exchange": m.exchange, "routing_key": m.routing_key,
                "redelivered": m.redelivered, "message_id": props.message_id,
                "delivery_mode": props.delivery_mode, "content_type": props.content_type,
                "type": props.type, "timestamp": props.timestamp, "app_id": props.app_id,
                "headers": {k: text(v) for k, v in (props.headers or {}).items()},
            }
            try:
                out["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                out["body_b64"] = base64.b64encode(body).decode()
            print(json.dumps(out))
            ch.basic_ack(m.delivery_tag)
            n += 1
    elif a.cmd == "publish":
        ch.confirm_delivery()
        headers = dict(h.split("=", 1) for h in a.header) or None
        for i in range(a.start, a.start + a.n):
            props = pika.BasicProperties(
                message_id=None if a.no_id else "%s-%d" % (a.id_prefix, i),
                delivery_mode=2, type=a.type, headers=headers,
                content_type="application/json")
            ch.basic_publish(a.exchange, a.routing_key, a.body.replace("{i}", str(i)).encode(),
                             props, mandatory=True)
            if a.print_ids:  # basic_publish returned: the broker confirmed it
                print(props.message_id, flush=True)
    elif a.cmd == "publish-one":
        ch.confirm_delivery()
        h = {}
        for kv in a.header:
            k, v = kv.split("=", 1)
            h[k] = v
        for kv in a.header_hex:
            k, v = kv.split("=", 1)
            h[k] = bytes.fromhex(v)
        for kv in a.header_int:
            k, v = kv.split("=", 1)
            h[k] = int(v)
        hx = lambda v: bytes.fromhex(v) if v is not None else None
        props = pika.BasicProperties(message_id=hx(a.message_id_hex), type=hx(a.type_hex),
                                     headers=h or None, delivery_mode=2)
        ch.basic_publish(a.exchange, bytes.fromhex(a.routing_key_hex), bytes.fromhex(a.body_hex),
                         props, mandatory=True)
    conn.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a test reads the reason on stderr
        print("rmqcli: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
