// tests/integration/ce_check.js - read messages the relay sent and decode them
// with the official CloudEvents JavaScript SDK (npm "cloudevents"), an
// independent implementation of the HTTP and Kafka protocol bindings and the
// JSON event format. Every event must pass the SDK's validation.
//
//   node ce_check.js http  FILE   webhook_recv records ({"headers","body"}) and
//                                 natscli dump lines ({"headers","data"}):
//                                 the HTTP binding (NATS uses the same "ce-"
//                                 headers and Content-Type rules)
//   node ce_check.js kafka FILE   kcli consume records ({"key","value","headers"})
//
// Prints one JSON line per event: its attributes and data as the SDK sees
// them, plus "mode" (binary / structured) as the SDK's detection says. Exits
// 1 with the SDK's error when a message is not a valid CloudEvent.
'use strict';
const fs = require('fs');
const { HTTP, Kafka } = require('cloudevents');

const [kind, file] = process.argv.slice(2);
const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');

function out(ev, mode) {
    ev.validate(); // throws ValidationError
    const attrs = {};
    for (const [k, v] of Object.entries(ev)) if (!k.startsWith('data_')) attrs[k] = v;
    attrs.mode = mode;
    process.stdout.write(JSON.stringify(attrs) + '\n');
}

for (const line of lines) {
    const rec = JSON.parse(line);
    try {
        if (kind === 'kafka') {
            const headers = {};
            for (const [k, v] of Object.entries(rec.headers || {})) headers[k] = v;
            const msg = { key: rec.key, value: Buffer.from(rec.value, 'utf8'), headers };
            const mode = Kafka.isEvent(msg) && headers['content-type'] &&
                headers['content-type'].startsWith('application/cloudevents') ? 'structured' : 'binary';
            out(Kafka.toEvent(msg), mode);
        } else {
            const headers = {};
            for (const [k, v] of Object.entries(rec.headers || {})) headers[k.toLowerCase()] = v;
            const body = rec.body !== undefined ? rec.body : rec.data;
            const msg = { headers, body };
            const ct = headers['content-type'] || '';
            const mode = ct.startsWith('application/cloudevents') ? 'structured' : 'binary';
            const evs = HTTP.toEvent(msg);
            for (const ev of Array.isArray(evs) ? evs : [evs]) out(ev, mode);
        }
    } catch (err) {
        process.stderr.write(`not a valid CloudEvent: ${err.message} ${JSON.stringify(err.errors || '')}\n${line}\n`);
        process.exit(1);
    }
}
