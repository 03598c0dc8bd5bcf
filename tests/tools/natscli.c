/*
 * natscli.c - a small NATS/JetStream client for the tests and benchmarks
 * (there is no `nats` CLI on Debian 12). Plain nats.c, nothing of the relay
 * but its NKey helpers.
 *
 *   natscli [-s URL] [--user U --password P] COMMAND ARGS...
 *
 *   stream-add NAME SUBJECT [--dup-ms N] [--memory] [--max-msgs N] [--max-msg-size N]
 *              [--discard-new]   create a stream
 *   stream-info NAME          {"messages","bytes","first_seq","last_seq"}; exit 3: no stream
 *   stream-delete NAME        delete a stream (exit 0 when it did not exist)
 *   stream-list               stream names, one per line
 *   stream-purge NAME         remove every message of a stream
 *   dump NAME                 every stored message, one JSON object per line:
 *                             {"seq","subject","headers":{..},"data":"<body>"}
 *                             ("data_hex" instead for a body that is not UTF-8)
 *   get NAME SEQ              one stored message, same shape
 *   pub SUBJECT DATA [--id MSGID] [-H Key:Value]...
 *                             JetStream publish, waits for the PubAck:
 *                             {"stream","seq","duplicate"}
 *   pub-many SUBJECT COUNT [--data TEXT] [--id-prefix P]
 *                             asynchronous JetStream publishes (4096 in
 *                             flight) with ids P<i>, every PubAck awaited (the benchmark's
 *                             reference publisher): {"count","seconds","rate"}
 *   pub-many-core SUBJECT COUNT [--data TEXT] [--id-prefix P]
 *                             the same guarantee with core NATS: each message
 *                             published with Nats-Msg-Id and a reply subject of
 *                             its own under one inbox, the PubAcks read from one
 *                             wildcard subscription on the publishing thread,
 *                             4096 in flight; every PubAck checked
 *   consumer-info STREAM NAME {"num_pending","num_ack_pending","num_redelivered",
 *                             "delivered_consumer_seq","delivered_stream_seq",
 *                             "ack_floor_stream_seq"}; exit 3: no consumer
 *   consumer-delete STREAM NAME
 *   consumer-add-push STREAM NAME DELIVER_SUBJECT   a durable push consumer
 *   latency STREAM SUBJECT COUNT TIMEOUT_S
 *                             ordered consumer from now on; each body is a
 *                             relay envelope whose payload has "t_us" (wall
 *                             clock microseconds at the outbox commit); prints
 *                             "ready" once subscribed, then
 *                             {"count","p50_ms","p99_ms","max_ms"}
 *   kv-get BUCKET KEY         the value of a KV key; exit 3: no bucket/key
 *   request SUBJECT DATA [TIMEOUT_MS]
 *                             core NATS request, prints the reply
 *   nkey-gen [U|A|O]          "SEED PUBLIC" of a fresh key pair
 *   jwt-setup DIR             operator/account/user keys for decentralised
 *                             auth: DIR/server.conf (operator, MEMORY resolver
 *                             with the account preloaded, JetStream enabled for
 *                             it) and DIR/user.creds
 * Exit 0 on success, 1 on errors (message on stderr), 2 on bad usage.
 */
#include <inttypes.h>
#include <jansson.h>
#include <nats/nats.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "client/nats.h"

static const char *url = "nats://127.0.0.1:4222";
static const char *user, *password;
static natsConnection *nc;
static jsCtx *js;

static void die(const char *what, natsStatus s, jsErrCode jerr)
{
    char txt[512];
    nats_status_text(s, jerr, txt, sizeof txt);
    fprintf(stderr, "natscli: %s: %s\n", what, txt);
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: natscli [-s URL] [--user U --password P] COMMAND ARGS... "
                    "(see tests/tools/natscli.c)\n");
    exit(2);
}

static long pub_errors;

static void count_errors(jsCtx *ctx, jsPubAckErr *pae, void *closure)
{
    (void)ctx;
    (void)pae;
    (void)closure;
    pub_errors++;
}

static void connect_js(int64_t max_pending)
{
    natsOptions *o;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, url);
    if (s == NATS_OK && user)
        s = natsOptions_SetUserInfo(o, user, password);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK)
        die("connect", s, 0);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = max_pending;
    jo.PublishAsync.StallWait = 10000;
    jo.PublishAsync.ErrHandler = count_errors;
    s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK)
        die("jetstream", s, 0);
}

static void disconnect(void)
{
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *opt_value(int argc, char **argv, const char *name)
{
    for (int i = 0; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return NULL;
}

static int has_flag(int argc, char **argv, const char *name)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

/* ---- streams and consumers ------------------------------------------------- */

static int cmd_stream_add(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *dup = opt_value(argc, argv, "--dup-ms");
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = argv[0];
    const char *subs[1] = {argv[1]};
    sc.Subjects = subs;
    sc.SubjectsLen = 1;
    sc.Storage = has_flag(argc, argv, "--memory") ? js_MemoryStorage : js_FileStorage;
    if (dup)
        sc.Duplicates = strtoll(dup, NULL, 10) * 1000000LL;
    const char *maxmsgs = opt_value(argc, argv, "--max-msgs");
    const char *maxsize = opt_value(argc, argv, "--max-msg-size");
    if (maxmsgs)
        sc.MaxMsgs = strtoll(maxmsgs, NULL, 10);
    if (maxsize)
        sc.MaxMsgSize = (int32_t)strtol(maxsize, NULL, 10);
    if (has_flag(argc, argv, "--discard-new"))
        sc.Discard = js_DiscardNew;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddStream(&si, js, &sc, NULL, &jerr);
    if (s != NATS_OK)
        die("stream-add", s, jerr);
    jsStreamInfo_Destroy(si);
    return 0;
}

static int cmd_stream_info(int argc, char **argv)
{
    if (argc < 1)
        usage();
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, argv[0], NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        printf("{\"error\":\"not found\"}\n");
        return 3;
    }
    if (s != NATS_OK)
        die("stream-info", s, jerr);
    printf("{\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"first_seq\":%" PRIu64
           ",\"last_seq\":%" PRIu64 ",\"duplicate_window_ms\":%" PRId64 "}\n",
           si->State.Msgs, si->State.Bytes, si->State.FirstSeq, si->State.LastSeq,
           si->Config->Duplicates / 1000000);
    jsStreamInfo_Destroy(si);
    return 0;
}

static int cmd_stream_delete(int argc, char **argv)
{
    if (argc < 1)
        usage();
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteStream(js, argv[0], NULL, &jerr);
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr)
        die("stream-delete", s, jerr);
    return 0;
}

static int cmd_stream_purge(int argc, char **argv)
{
    if (argc < 1)
        usage();
    jsErrCode jerr = 0;
    natsStatus s = js_PurgeStream(js, argv[0], NULL, &jerr);
    if (s != NATS_OK)
        die("stream-purge", s, jerr);
    return 0;
}

static int cmd_stream_list(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    jsStreamNamesList *l = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_StreamNames(&l, js, NULL, &jerr);
    if (s == NATS_NOT_FOUND)
        return 0;
    if (s != NATS_OK)
        die("stream-list", s, jerr);
    for (int i = 0; i < l->Count; i++)
        puts(l->List[i]);
    jsStreamNamesList_Destroy(l);
    return 0;
}

static void put_msg_json(uint64_t seq, natsMsg *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    json_object_set_new(o, "subject", json_string(natsMsg_GetSubject(m)));
    json_t *h = json_object();
    const char **keys = NULL;
    int nkeys = 0;
    if (natsMsgHeader_Keys(m, &keys, &nkeys) == NATS_OK) {
        for (int i = 0; i < nkeys; i++) {
            const char *v = NULL;
            if (natsMsgHeader_Get(m, keys[i], &v) == NATS_OK)
                json_object_set_new(h, keys[i], json_string(v ? v : ""));
        }
        free((void *)keys);
    }
    json_object_set_new(o, "headers", h);
    const char *d = natsMsg_GetData(m);
    size_t dn = (size_t)natsMsg_GetDataLength(m);
    json_t *data = json_stringn(d, dn);
    if (data) {
        json_object_set_new(o, "data", data);
    } else { /* not UTF-8 (e.g. MessagePack): hex */
        char *hex = malloc(2 * dn + 1);
        for (size_t i = 0; i < dn; i++)
            sprintf(hex + 2 * i, "%02x", (unsigned char)d[i]);
        hex[2 * dn] = '\0';
        json_object_set_new(o, "data_hex", json_string(hex));
        free(hex);
    }
    char *txt = json_dumps(o, JSON_COMPACT);
    puts(txt);
    free(txt);
    json_decref(o);
}

static int cmd_dump(int argc, char **argv)
{
    if (argc < 1)
        usage();
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, argv[0], NULL, &jerr);
    if (s != NATS_OK)
        die("dump", s, jerr);
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq, n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    if (n == 0)
        return 0;
    for (uint64_t seq = first; seq <= last; seq++) {
        natsMsg *m = NULL;
        s = js_GetMsg(&m, js, argv[0], seq, NULL, &jerr);
        if (s == NATS_NOT_FOUND)
            continue; /* deleted */
        if (s != NATS_OK)
            die("dump: get", s, jerr);
        put_msg_json(seq, m);
        natsMsg_Destroy(m);
    }
    return 0;
}

static int cmd_get(int argc, char **argv)
{
    if (argc < 2)
        usage();
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    uint64_t seq = strtoull(argv[1], NULL, 10);
    natsStatus s = js_GetMsg(&m, js, argv[0], seq, NULL, &jerr);
    if (s != NATS_OK)
        die("get", s, jerr);
    put_msg_json(seq, m);
    natsMsg_Destroy(m);
    return 0;
}

/* kv-get BUCKET KEY: the value of a key (exit 3: no bucket or no key). */
static int cmd_kv_get(int argc, char **argv)
{
    if (argc < 2)
        usage();
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    natsStatus s = js_KeyValue(&kv, js, argv[0]);
    if (s == NATS_NOT_FOUND)
        return 3;
    if (s != NATS_OK)
        die("kv", s, 0);
    s = kvStore_Get(&e, kv, argv[1]);
    if (s == NATS_NOT_FOUND) {
        kvStore_Destroy(kv);
        return 3;
    }
    if (s != NATS_OK)
        die("kv-get", s, 0);
    fwrite(kvEntry_ValueString(e), 1, (size_t)kvEntry_ValueLen(e), stdout);
    printf("\n");
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    return 0;
}

/* request SUBJECT DATA [TIMEOUT_MS]: a core NATS request; prints the reply. */
static int cmd_request(int argc, char **argv)
{
    if (argc < 2)
        usage();
    natsMsg *r = NULL;
    int64_t t = argc > 2 ? strtoll(argv[2], NULL, 10) : 5000;
    natsStatus s = natsConnection_RequestString(&r, nc, argv[0], argv[1], t);
    if (s != NATS_OK)
        die("request", s, 0);
    fwrite(natsMsg_GetData(r), 1, (size_t)natsMsg_GetDataLength(r), stdout);
    printf("\n");
    natsMsg_Destroy(r);
    return 0;
}

static int cmd_consumer_info(int argc, char **argv)
{
    if (argc < 2)
        usage();
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, argv[0], argv[1], NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        printf("{\"error\":\"not found\"}\n");
        return 3;
    }
    if (s != NATS_OK)
        die("consumer-info", s, jerr);
    printf("{\"num_pending\":%" PRIu64 ",\"num_ack_pending\":%" PRId64 ",\"num_redelivered\":%" PRId64
           ",\"num_waiting\":%" PRId64 ",\"delivered_consumer_seq\":%" PRIu64
           ",\"delivered_stream_seq\":%" PRIu64 ",\"ack_floor_stream_seq\":%" PRIu64
           ",\"ack_wait_ms\":%" PRId64 ",\"max_deliver\":%" PRId64 ",\"filter_subject\":\"%s\"}\n",
           ci->NumPending, ci->NumAckPending, ci->NumRedelivered, ci->NumWaiting,
           ci->Delivered.Consumer, ci->Delivered.Stream, ci->AckFloor.Stream,
           ci->Config->AckWait / 1000000, ci->Config->MaxDeliver,
           ci->Config->FilterSubject ? ci->Config->FilterSubject : "");
    jsConsumerInfo_Destroy(ci);
    return 0;
}

static int cmd_consumer_delete(int argc, char **argv)
{
    if (argc < 2)
        usage();
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteConsumer(js, argv[0], argv[1], NULL, &jerr);
    if (s != NATS_OK)
        die("consumer-delete", s, jerr);
    return 0;
}

/* A durable push consumer: something the NATS source must refuse to use. */
static int cmd_consumer_add_push(int argc, char **argv)
{
    if (argc < 3)
        usage();
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = argv[1];
    cc.DeliverSubject = argv[2];
    cc.AckPolicy = js_AckExplicit;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, js, argv[0], &cc, NULL, &jerr);
    if (s != NATS_OK)
        die("consumer-add-push", s, jerr);
    jsConsumerInfo_Destroy(ci);
    return 0;
}

/* ---- publishing ------------------------------------------------------------- */

static int cmd_pub(int argc, char **argv)
{
    if (argc < 2)
        usage();
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, argv[0], NULL, argv[1], (int)strlen(argv[1]));
    for (int i = 2; s == NATS_OK && i + 1 < argc; i++) {
        if (strcmp(argv[i], "-H") != 0)
            continue;
        char *kv = strdup(argv[++i]);
        char *colon = strchr(kv, ':');
        if (!colon)
            usage();
        *colon = '\0';
        s = natsMsgHeader_Add(m, kv, colon + 1);
        free(kv);
    }
    if (s != NATS_OK)
        die("pub: message", s, 0);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = opt_value(argc, argv, "--id");
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    s = js_PublishMsg(&pa, js, m, &po, &jerr);
    natsMsg_Destroy(m);
    if (s != NATS_OK)
        die("pub", s, jerr);
    printf("{\"stream\":\"%s\",\"seq\":%" PRIu64 ",\"duplicate\":%s}\n", pa->Stream, pa->Sequence,
           pa->Duplicate ? "true" : "false");
    jsPubAck_Destroy(pa);
    return 0;
}

/* A PubAck body is {"stream":..,"seq":..} or {"error":{..}}: an error is
 * the only reply that names "error". */
static int puback_failed(natsMsg *m)
{
    if (natsMsg_IsNoResponders(m))
        return 1;
    const char *d = natsMsg_GetData(m);
    return !d || strstr(d, "\"error\"") != NULL;
}

/* The arguments of pub-many and pub-many-core. */
typedef struct pub_many_args {
    long count;
    const char *data, *prefix;
} pub_many_args;

static pub_many_args pub_many_parse(int argc, char **argv)
{
    if (argc < 2)
        usage();
    pub_many_args a = {strtol(argv[1], NULL, 10), opt_value(argc, argv, "--data"),
                       opt_value(argc, argv, "--id-prefix")};
    if (!a.data)
        a.data = "{\"n\":1}";
    if (!a.prefix)
        a.prefix = "ref-";
    return a;
}

static int cmd_pub_many_core(int argc, char **argv)
{
    pub_many_args a = pub_many_parse(argc, argv);
    long count = a.count;
    const char *data = a.data, *prefix = a.prefix;
    int dlen = (int)strlen(data);
    const long window = 4096;
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    char wildcard[128], reply[160], id[128];
    natsStatus s = natsInbox_Create(&inbox);
    snprintf(wildcard, sizeof wildcard, "%s.*", s == NATS_OK ? (const char *)inbox : "");
    if (s == NATS_OK)
        s = natsConnection_SubscribeSync(&sub, nc, wildcard);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s != NATS_OK)
        die("pub-many-core: subscribe", s, 0);
    double t0 = now_s();
    long sent = 0, acked = 0, errors = 0;
    while (acked < count) {
        while (sent < count && sent - acked < window) {
            natsMsg *m = NULL;
            snprintf(reply, sizeof reply, "%s.%ld", (const char *)inbox, sent);
            snprintf(id, sizeof id, "%s%ld", prefix, sent);
            s = natsMsg_Create(&m, argv[0], reply, data, dlen);
            if (s == NATS_OK)
                s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
            if (s == NATS_OK)
                s = natsConnection_PublishMsg(nc, m);
            natsMsg_Destroy(m);
            if (s != NATS_OK)
                die("pub-many-core: publish", s, 0);
            sent++;
        }
        natsMsg *r = NULL;
        s = natsSubscription_NextMsg(&r, sub, 10000);
        if (s != NATS_OK)
            die("pub-many-core: waiting for PubAcks", s, 0);
        errors += puback_failed(r);
        natsMsg_Destroy(r);
        acked++;
    }
    double t = now_s() - t0;
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    if (errors) {
        fprintf(stderr, "natscli: pub-many-core: %ld PubAck errors\n", errors);
        return 1;
    }
    printf("{\"count\":%ld,\"seconds\":%.4f,\"rate\":%.0f}\n", count, t, (double)count / t);
    return 0;
}

static int cmd_pub_many(int argc, char **argv)
{
    pub_many_args a = pub_many_parse(argc, argv);
    long count = a.count;
    const char *data = a.data, *prefix = a.prefix;
    natsStatus s;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    char id[128];
    int dlen = (int)strlen(data);
    double t0 = now_s();
    for (long i = 0; i < count; i++) {
        snprintf(id, sizeof id, "%s%ld", prefix, i);
        po.MsgId = id;
        s = js_PublishAsync(js, argv[0], data, dlen, &po);
        if (s != NATS_OK)
            die("pub-many", s, 0);
    }
    jsPubOptions wo;
    jsPubOptions_Init(&wo);
    wo.MaxWait = 60000;
    s = js_PublishAsyncComplete(js, &wo);
    double t = now_s() - t0;
    if (s != NATS_OK)
        die("pub-many: waiting for PubAcks", s, 0);
    if (pub_errors) {
        fprintf(stderr, "natscli: pub-many: %ld PubAck errors\n", pub_errors);
        return 1;
    }
    printf("{\"count\":%ld,\"seconds\":%.4f,\"rate\":%.0f}\n", count, t, (double)count / t);
    return 0;
}

/* ---- latency ----------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_latency(int argc, char **argv)
{
    if (argc < 4)
        usage();
    long want = strtol(argv[2], NULL, 10);
    double timeout = strtod(argv[3], NULL);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = argv[0];
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverNew;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_SubscribeSync(&sub, js, argv[1], NULL, &so, &jerr);
    if (s != NATS_OK)
        die("latency: subscribe", s, jerr);
    natsSubscription_SetPendingLimits(sub, -1, -1);
    printf("ready\n");
    fflush(stdout);
    double *lat = calloc((size_t)want, sizeof *lat);
    long n = 0;
    double end = now_s() + timeout;
    while (n < want && now_s() < end) {
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, sub, 200);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK)
            die("latency: next", s, 0);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double now_us = (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
        json_t *env = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
        json_t *p = json_object_get(env, "payload");
        json_t *t = json_object_get(p, "t_us");
        if (json_is_number(t))
            lat[n++] = (now_us - json_number_value(t)) / 1000.0;
        json_decref(env);
        natsMsg_Destroy(m);
    }
    natsSubscription_Destroy(sub);
    if (n == 0) {
        fprintf(stderr, "natscli: latency: no message received\n");
        free(lat);
        return 1;
    }
    qsort(lat, (size_t)n, sizeof *lat, cmp_double);
    printf("{\"count\":%ld,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f}\n", n,
           lat[(n - 1) / 2], lat[(size_t)((double)(n - 1) * 0.99)], lat[n - 1]);
    free(lat);
    return 0;
}

/* ---- keys and JWTs -------------------------------------------------------------- */

static void new_key(char type, unsigned char raw[32], char *seed, size_t seedlen, char *pub,
                    size_t publen)
{
    char err[200];
    if (RAND_bytes(raw, 32) != 1) {
        fprintf(stderr, "natscli: no randomness\n");
        exit(1);
    }
    nats_nkey_encode(type, raw, 1, seed, seedlen);
    if (nats_nkey_public_from_seed(seed, pub, publen, err, sizeof err) < 0) {
        fprintf(stderr, "natscli: %s\n", err);
        exit(1);
    }
}

static int cmd_nkey_gen(int argc, char **argv)
{
    char type = argc > 0 ? argv[0][0] : 'U';
    char seed[64], pub[64];
    unsigned char raw[32];
    new_key(type, raw, seed, sizeof seed, pub, sizeof pub);
    printf("%s %s\n", seed, pub);
    return 0;
}

static void b64url(const unsigned char *p, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = a[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = a[v & 63];
    }
    out[o] = '\0';
}

/* A JWT (header.claims.signature) over `claims`, signed (ed25519) with the
 * raw 32-byte seed of the issuer. */
static char *jwt_sign(const char *claims, const unsigned char seed[32])
{
    static const char header[] = "{\"typ\":\"JWT\",\"alg\":\"ed25519-nkey\"}";
    size_t cl = strlen(claims);
    char *out = malloc(64 + 2 * cl + 200);
    b64url((const unsigned char *)header, strlen(header), out);
    strcat(out, ".");
    b64url((const unsigned char *)claims, cl, out + strlen(out));
    unsigned char sig[64];
    size_t siglen = sizeof sig;
    EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!pk || !md || EVP_DigestSignInit(md, NULL, NULL, NULL, pk) != 1 ||
        EVP_DigestSign(md, sig, &siglen, (const unsigned char *)out, strlen(out)) != 1) {
        fprintf(stderr, "natscli: jwt-setup: ed25519 signing failed\n");
        exit(1);
    }
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    strcat(out, ".");
    b64url(sig, siglen, out + strlen(out));
    return out;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "natscli: cannot write %s\n", path);
        exit(1);
    }
    chmod(path, 0600);
}

static int cmd_jwt_setup(int argc, char **argv)
{
    if (argc < 1)
        usage();
    const char *dir = argv[0];
    char oseed[64], opub[64], aseed[64], apub[64], useed[64], upub[64], sseed[64], spub[64];
    char claims[2048];
    unsigned char oraw[32], araw[32], uraw[32], sraw[32];
    new_key('O', oraw, oseed, sizeof oseed, opub, sizeof opub);
    new_key('A', sraw, sseed, sizeof sseed, spub, sizeof spub);
    new_key('A', araw, aseed, sizeof aseed, apub, sizeof apub);
    new_key('U', uraw, useed, sizeof useed, upub, sizeof upub);
    long iat = (long)time(NULL);
    snprintf(claims, sizeof claims,
             "{\"jti\":\"OPJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"relay-test-operator\","
             "\"sub\":\"%s\",\"nats\":{\"type\":\"operator\",\"version\":2}}",
             iat, iat, opub, opub);
    char *ojwt = jwt_sign(claims, oraw);
    snprintf(claims, sizeof claims,
             "{\"jti\":\"ACJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"relay-test-account\","
             "\"sub\":\"%s\",\"nats\":{\"limits\":{\"subs\":-1,\"data\":-1,\"payload\":-1,"
             "\"imports\":-1,\"exports\":-1,\"wildcards\":true,\"conn\":-1,\"leaf\":-1,"
             "\"mem_storage\":-1,\"disk_storage\":-1,\"streams\":-1,\"consumer\":-1},"
             "\"default_permissions\":{\"pub\":{},\"sub\":{}},\"type\":\"account\",\"version\":2}}",
             iat, iat, opub, apub);
    char *ajwt = jwt_sign(claims, oraw);
    snprintf(claims, sizeof claims,
             "{\"jti\":\"SYJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"SYS\",\"sub\":\"%s\","
             "\"nats\":{\"limits\":{\"subs\":-1,\"data\":-1,\"payload\":-1,\"imports\":-1,"
             "\"exports\":-1,\"wildcards\":true,\"conn\":-1,\"leaf\":-1},"
             "\"type\":\"account\",\"version\":2}}",
             iat, iat, opub, spub);
    char *sjwt = jwt_sign(claims, oraw);
    snprintf(claims, sizeof claims,
             "{\"jti\":\"USJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"relay-test-user\","
             "\"sub\":\"%s\",\"nats\":{\"pub\":{},\"sub\":{},\"subs\":-1,\"data\":-1,"
             "\"payload\":-1,\"type\":\"user\",\"version\":2}}",
             iat, iat, apub, upub);
    char *ujwt = jwt_sign(claims, araw);

    char path[1024], text[8192];
    snprintf(path, sizeof path, "%s/operator.jwt", dir);
    write_file(dir, "operator.jwt", ojwt);
    snprintf(text, sizeof text,
             "operator: \"%s\"\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n"
             "  %s: \"%s\"\n  %s: \"%s\"\n}\n",
             path, spub, apub, ajwt, spub, sjwt);
    write_file(dir, "server.conf", text);
    snprintf(text, sizeof text,
             "-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
             "************************* IMPORTANT *************************\n"
             "NKEY Seed printed below can be used to sign and prove identity.\n"
             "NKEYs are sensitive and should be treated as secrets.\n\n"
             "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n\n"
             "*************************************************************\n",
             ujwt, useed);
    write_file(dir, "user.creds", text);
    free(ojwt);
    free(ajwt);
    free(sjwt);
    free(ujwt);
    return 0;
}

/* ---- main ---------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            url = argv[++i];
        else if (strcmp(argv[i], "--user") == 0 && i + 1 < argc)
            user = argv[++i];
        else if (strcmp(argv[i], "--password") == 0 && i + 1 < argc)
            password = argv[++i];
        else
            break;
    }
    if (i >= argc)
        usage();
    const char *cmd = argv[i];
    int rest = argc - i - 1;
    char **args = argv + i + 1;
    if (strcmp(cmd, "nkey-gen") == 0)
        return cmd_nkey_gen(rest, args);
    if (strcmp(cmd, "jwt-setup") == 0)
        return cmd_jwt_setup(rest, args);

    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"stream-add", cmd_stream_add}, {"stream-info", cmd_stream_info},
        {"stream-delete", cmd_stream_delete}, {"stream-list", cmd_stream_list},
        {"stream-purge", cmd_stream_purge},
        {"dump", cmd_dump}, {"get", cmd_get},
        {"consumer-info", cmd_consumer_info}, {"consumer-delete", cmd_consumer_delete},
        {"consumer-add-push", cmd_consumer_add_push}, {"pub", cmd_pub},
        {"pub-many", cmd_pub_many}, {"pub-many-core", cmd_pub_many_core},
        {"latency", cmd_latency},
        {"kv-get", cmd_kv_get}, {"request", cmd_request},
    };
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
        if (strcmp(cmd, cmds[c].name) != 0)
            continue;
        connect_js(4096);
        int rc = cmds[c].fn(rest, args);
        fflush(stdout);
        disconnect();
        return rc;
    }
    usage();
    return 2;
}
