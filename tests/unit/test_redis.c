/*
 * test_redis.c - the Redis backend's pure parts: redis:// URL parsing and
 * display, the classification of error replies, the decoding of
 * XREADGROUP / XAUTOCLAIM replies into inbox messages (replies parsed by
 * hiredis's own reader from RESP bytes), and the config validation of the
 * sink and the source (no server needed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <string.h>

#include "client/redis.h"
#include "sink/sink.h"
#include "source/redis.h"
#include "source/source.h"

extern const relay_sink_ops relay_sink_redis_ops;
extern const relay_source_ops relay_source_redis_ops;

/* ---- URLs ---------------------------------------------------------------- */

static void urls_are_parsed(void **state)
{
    (void)state;
    struct {
        const char *url, *host, *user, *password;
        int port, db;
        const char *display;
    } cases[] = {
        {"redis://127.0.0.1", "127.0.0.1", NULL, NULL, 6379, 0, "redis://127.0.0.1:6379/0"},
        {"redis://h:7000/3", "h", NULL, NULL, 7000, 3, "redis://h:7000/3"},
        {"redis://h/", "h", NULL, NULL, 6379, 0, "redis://h:6379/0"},
        {"redis://:pw@h", "h", NULL, "pw", 6379, 0, "redis://h:6379/0"},
        {"redis://secret@h", "h", NULL, "secret", 6379, 0, "redis://h:6379/0"},
        {"redis://alice:pw@h:1/2", "h", "alice", "pw", 1, 2, "redis://alice@h:1/2"},
        /* the user info ends at the last '@': '@', ':' and '/' need no encoding */
        {"redis://:a@b:c/d@h:6380", "h", NULL, "a@b:c/d", 6380, 0, "redis://h:6380/0"},
        {"redis://u%3Ax:p%40%zz@h", "h", "u:x", "p@%zz", 6379, 0, "redis://u:x@h:6379/0"},
        {"redis://[::1]:6390/1", "::1", NULL, NULL, 6390, 1, "redis://[::1]:6390/1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        relay_redis_url u;
        char err[256] = "";
        if (redis_url_parse(cases[i].url, "sink.url", &u, err, sizeof err) != 0)
            fail_msg("%s: %s", cases[i].url, err);
        assert_string_equal(u.host, cases[i].host);
        assert_int_equal(u.port, cases[i].port);
        assert_int_equal(u.db, cases[i].db);
        if (cases[i].user)
            assert_string_equal(u.user, cases[i].user);
        else
            assert_null(u.user);
        if (cases[i].password)
            assert_string_equal(u.password, cases[i].password);
        else
            assert_null(u.password);
        relay_buf d = {0};
        redis_url_display(&u, &d);
        assert_string_equal(d.data, cases[i].display);
        buf_free(&d);
        redis_url_free(&u);
    }
}

static void bad_urls_are_refused(void **state)
{
    (void)state;
    struct {
        const char *url, *expect;
    } cases[] = {
        {"rediss://h", "sink.url: rediss:// (TLS) is not supported"},
        {"http://h", "sink.url: expected redis://"},
        {"h:6379", "sink.url: expected redis://"},
        {"redis://", "sink.url: no host name"},
        {"redis://:pw@", "sink.url: no host name"},
        {"redis://h:0", "the port must be a number from 1 to 65535"},
        {"redis://h:65536", "the port must be a number from 1 to 65535"},
        {"redis://h:12ab", "the port must be a number"},
        {"redis://h:", "the port must be a number"},
        {"redis://h/x", "the database (after the '/') must be a number"},
        {"redis://h/-1", "the database"},
        {"redis://[::1", "unterminated IPv6 address"},
        {"redis://h/0?db=1", "unexpected \"?db=1\""},
        {"redis://h#x", "unexpected \"#x\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        relay_redis_url u;
        char err[256] = "";
        if (redis_url_parse(cases[i].url, "sink.url", &u, err, sizeof err) != -1 ||
            !strstr(err, cases[i].expect))
            fail_msg("%s: expected an error containing \"%s\", got \"%s\"", cases[i].url,
                     cases[i].expect, err);
        assert_null(u.host);
    }
    /* the password never appears in an error */
    relay_redis_url u;
    char err[256];
    assert_int_equal(redis_url_parse("redis://:topsecret@h:99999", "sink.url", &u, err, sizeof err), -1);
    assert_null(strstr(err, "topsecret"));
}

/* ---- error replies --------------------------------------------------------- */

static void errors_are_classified(void **state)
{
    (void)state;
    struct {
        const char *text;
        redis_err_class want;
    } cases[] = {
        {"WRONGTYPE Operation against a key holding the wrong kind of value", REDIS_ERR_WRONGTYPE},
        {"WRONGTYPE Operation against a key holding the wrong kind of value script: abc, on "
         "@user_script:2.", REDIS_ERR_WRONGTYPE},
        {"NOSCRIPT No matching script. Please use EVAL.", REDIS_ERR_NOSCRIPT},
        {"NOGROUP No such key 'k' or consumer group 'g'", REDIS_ERR_NOGROUP},
        {"NOAUTH Authentication required.", REDIS_ERR_TRANSIENT},
        {"WRONGPASS invalid username-password pair or user is disabled.", REDIS_ERR_TRANSIENT},
        {"NOPERM this user has no permissions to run the 'xadd' command", REDIS_ERR_TRANSIENT},
        {"READONLY You can't write against a read only replica.", REDIS_ERR_TRANSIENT},
        {"MISCONF Redis is configured to save RDB snapshots", REDIS_ERR_TRANSIENT},
        {"MOVED 3999 127.0.0.1:6381", REDIS_ERR_TRANSIENT},
        {"OOM command not allowed when used memory > 'maxmemory'.", REDIS_ERR_TRANSIENT},
        {"LOADING Redis is loading the dataset in memory", REDIS_ERR_TRANSIENT},
        {"BUSY Redis is busy running a script.", REDIS_ERR_TRANSIENT},
        {"ERR Protocol error: invalid bulk length", REDIS_ERR_MESSAGE},
        {"ERR string exceeds maximum allowed size (proto-max-bulk-len)", REDIS_ERR_TRANSIENT},
        {"ERR unknown command", REDIS_ERR_TRANSIENT},
        {"WRONGTYPEX not the code", REDIS_ERR_TRANSIENT},
        {"ASKING", REDIS_ERR_TRANSIENT},
        {"", REDIS_ERR_TRANSIENT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (redis_error_classify(cases[i].text, strlen(cases[i].text)) != cases[i].want)
            fail_msg("\"%s\": expected class %d", cases[i].text, (int)cases[i].want);
    assert_int_equal(redis_error_classify(NULL, 0), REDIS_ERR_TRANSIENT);
    /* only `len` bytes count */
    assert_int_equal(redis_error_classify("NOSCRIPTS", 8), REDIS_ERR_NOSCRIPT);
}

/* ---- reply decoding ------------------------------------------------------------ */

/* Parse one RESP2 reply with hiredis's reader. */
static redisReply *resp(const char *bytes, size_t n)
{
    redisReader *rd = redisReaderCreate();
    void *r = NULL;
    assert_int_equal(redisReaderFeed(rd, bytes, n), REDIS_OK);
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    return r;
}
#define RESP(lit) resp(lit, sizeof lit - 1)

static void xreadgroup_replies_are_decoded(void **state)
{
    (void)state;
    redisReply *r = RESP("*1\r\n*2\r\n$1\r\nk\r\n*3\r\n"
                         "*2\r\n$3\r\n1-0\r\n*4\r\n$9\r\ndedup_key\r\n$3\r\nk-1\r\n$7\r\npayload\r\n$7\r\n{\"a\":1}\r\n"
                         "*2\r\n$3\r\n2-5\r\n*8\r\n$10\r\nevent_type\r\n$3\r\nx.y\r\n$6\r\namount\r\n$3\r\n1\"2\r\n"
                         "$12\r\naggregate_id\r\n$2\r\no7\r\n$11\r\ntraceparent\r\n$2\r\ntp\r\n"
                         "*2\r\n$3\r\n3-0\r\n*-1\r\n");
    const redisReply *entries;
    char err[256];
    assert_int_equal(redis_read_entries(r, &entries, err, sizeof err), 0);
    assert_non_null(entries);
    assert_int_equal(entries->elements, 3);
    relay_batch b = {0};
    const char *id;
    assert_int_equal(redis_entry_to_msg(entries->element[0], "k", "redis:k", &b, &id, err, sizeof err), 1);
    assert_string_equal(id, "1-0");
    relay_msg *m = &b.msgs[0];
    assert_string_equal(m->dedup_key, "k-1");
    assert_string_equal(m->subject, "k");
    assert_string_equal(m->payload, "{\"a\":1}");
    assert_int_equal(m->payload_is_json, 1);
    assert_string_equal(m->source_name, "redis:k");
    assert_string_equal(m->ack, "1-0");
    assert_int_equal(m->op, OP_EVENT);
    assert_null(m->aggregate_id);

    assert_int_equal(redis_entry_to_msg(entries->element[1], "k", "redis:k", &b, &id, err, sizeof err), 1);
    m = &b.msgs[1];
    assert_string_equal(m->dedup_key, "redis:k:2-5");
    assert_string_equal(m->subject, "x.y");
    assert_string_equal(m->payload, "{\"event_type\":\"x.y\",\"amount\":\"1\\\"2\",\"aggregate_id\":\"o7\","
                                    "\"traceparent\":\"tp\"}");
    assert_int_equal(m->payload_is_json, 1);
    assert_string_equal(m->aggregate_id, "o7");
    assert_string_equal(m->trace_id, "tp");

    /* deleted while pending: no message, its id */
    assert_int_equal(redis_entry_to_msg(entries->element[2], "k", "redis:k", &b, &id, err, sizeof err), 0);
    assert_string_equal(id, "3-0");
    assert_int_equal(b.n, 2);
    batch_free(&b);
    freeReplyObject(r);

    r = RESP("*-1\r\n"); /* BLOCK timed out */
    assert_int_equal(redis_read_entries(r, &entries, err, sizeof err), 0);
    assert_null(entries);
    freeReplyObject(r);
    r = RESP("*1\r\n*2\r\n$1\r\nk\r\n*0\r\n"); /* nothing pending */
    assert_int_equal(redis_read_entries(r, &entries, err, sizeof err), 0);
    assert_int_equal(entries->elements, 0);
    freeReplyObject(r);
    r = RESP("*2\r\n$1\r\nk\r\n*0\r\n");
    assert_int_equal(redis_read_entries(r, &entries, err, sizeof err), -1);
    assert_non_null(strstr(err, "unexpected XREADGROUP reply"));
    freeReplyObject(r);
}

static void bodies_keep_their_bytes(void **state)
{
    (void)state;
    char err[256];
    const char *id;
    relay_batch b = {0};
    /* a payload that is not JSON; an empty dedup_key falls back to the id */
    redisReply *r = RESP("*2\r\n$5\r\n10-20\r\n*4\r\n$9\r\ndedup_key\r\n$0\r\n\r\n$7\r\npayload\r\n$5\r\nhello\r\n");
    assert_int_equal(redis_entry_to_msg(r, "s", "redis:s", &b, &id, err, sizeof err), 1);
    assert_string_equal(b.msgs[0].dedup_key, "redis:s:10-20");
    assert_int_equal(b.msgs[0].payload_is_json, 0);
    freeReplyObject(r);
    /* binary field values: kept byte for byte, so the body is not JSON */
    r = RESP("*2\r\n$3\r\n1-1\r\n*4\r\n$9\r\ndedup_key\r\n$3\r\na\0b\r\n$1\r\nv\r\n$3\r\n\xff\x01z\r\n");
    assert_int_equal(redis_entry_to_msg(r, "s", "redis:s", &b, &id, err, sizeof err), 1);
    relay_msg *m = &b.msgs[1];
    assert_int_equal(m->dedup_key_len, 3);
    assert_memory_equal(m->dedup_key, "a\0b", 3);
    static const char want[] = "{\"dedup_key\":\"a\\u0000b\",\"v\":\"\xff\\u0001z\"}";
    assert_int_equal(m->payload_len, sizeof want - 1);
    assert_memory_equal(m->payload, want, sizeof want - 1);
    assert_int_equal(m->payload_is_json, 0);
    freeReplyObject(r);
    batch_free(&b);
}

static void malformed_entries_are_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "*2\r\n$3\r\nabc\r\n*0\r\n",                  /* not an entry id */
        "*2\r\n$2\r\n1-\r\n*0\r\n",
        "*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\na\r\n",        /* odd field list */
        "*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n:5\r\n",  /* a value that is not a string */
        "*3\r\n$3\r\n1-0\r\n*0\r\n*0\r\n",
        "+OK\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        redisReply *r = resp(bad[i], strlen(bad[i]));
        relay_batch b = {0};
        const char *id;
        char err[256] = "";
        assert_int_equal(redis_entry_to_msg(r, "s", "redis:s", &b, &id, err, sizeof err), -1);
        assert_true(err[0] != '\0');
        assert_int_equal(b.n, 0);
        batch_free(&b);
        freeReplyObject(r);
    }
}

static void xautoclaim_replies_are_decoded(void **state)
{
    (void)state;
    char cursor[64], err[256];
    const redisReply *entries;
    redisReply *r = RESP("*3\r\n$4\r\n17-3\r\n*1\r\n*2\r\n$3\r\n9-0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n*1\r\n$3\r\n8-0\r\n");
    assert_int_equal(redis_autoclaim_entries(r, cursor, sizeof cursor, &entries, err, sizeof err), 0);
    assert_string_equal(cursor, "17-3");
    assert_int_equal(entries->elements, 1);
    freeReplyObject(r);
    r = RESP("*2\r\n$3\r\n0-0\r\n*0\r\n"); /* Redis 6.2: no deleted ids */
    assert_int_equal(redis_autoclaim_entries(r, cursor, sizeof cursor, &entries, err, sizeof err), 0);
    assert_string_equal(cursor, "0-0");
    freeReplyObject(r);
    r = RESP("*2\r\n$3\r\nx-0\r\n*0\r\n");
    assert_int_equal(redis_autoclaim_entries(r, cursor, sizeof cursor, &entries, err, sizeof err), -1);
    freeReplyObject(r);
}

/* ---- config ------------------------------------------------------------------ */

static int sink_create(const char *json, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    relay_sink *s = relay_sink_redis_ops.create(cfg, NULL, err, errlen);
    json_decref(cfg);
    if (!s)
        return -1;
    relay_sink_redis_ops.destroy(s);
    return 0;
}

static void sink_config_is_checked(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(sink_create("{\"type\":\"redis\",\"url\":\"redis://:pw@h:1/2\",\"stream_key\":"
                                 "\"s:{stream_table}:{op}\",\"maxlen\":1000,"
                                 "\"dedup_window_seconds\":3600,\"format\":\"msgpack\","
                                 "\"subject_template\":\"x.{op}\",\"connect_timeout_ms\":100,"
                                 "\"command_timeout_ms\":100}",
                                 err, sizeof err), 0);
    assert_int_equal(sink_create("{\"type\":\"redis\"}", err, sizeof err), 0);
    struct {
        const char *cfg, *expect;
    } cases[] = {
        {"{\"type\":\"redis\",\"stream_key\":\"{nope}\"}", "sink.stream_key: unknown variable {nope}"},
        {"{\"type\":\"redis\",\"stream_key\":\"\"}", "sink.stream_key: must not be empty"},
        {"{\"type\":\"redis\",\"stream_key\":7}", "sink.stream_key"},
        {"{\"type\":\"redis\",\"subject_template\":\"{op\"}", "sink.subject_template"},
        {"{\"type\":\"redis\",\"maxlen\":-1}", "sink.maxlen"},
        {"{\"type\":\"redis\",\"dedup_window_seconds\":\"1h\"}", "sink.dedup_window_seconds"},
        {"{\"type\":\"redis\",\"format\":\"xml\"}", "sink.format"},
        {"{\"type\":\"redis\",\"url\":\"rediss://h\"}", "sink.url: rediss://"},
        {"{\"type\":\"redis\",\"connect_timeout_ms\":0}", "sink.connect_timeout_ms"},
        {"{\"type\":\"redis\",\"stream\":\"x\"}", "sink.stream"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (sink_create(cases[i].cfg, err, sizeof err) != -1 || !strstr(err, cases[i].expect))
            fail_msg("%s: expected error containing \"%s\", got \"%s\"", cases[i].cfg,
                     cases[i].expect, err);
    }
}

static int source_create(const char *json, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    relay_source *s = relay_source_redis_ops.create(cfg, NULL, err, errlen);
    json_decref(cfg);
    if (!s)
        return -1;
    relay_source_redis_ops.destroy(s);
    return 0;
}

static void source_config_is_checked(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(source_create("{\"type\":\"redis\",\"stream_key\":\"k\",\"group_name\":\"g\","
                                   "\"consumer_name\":\"c\",\"create_group\":false,\"start_id\":\"$\","
                                   "\"batch_size\":10,\"block_ms\":50,\"claim_idle_ms\":0}",
                                   err, sizeof err), 0);
    struct {
        const char *cfg, *expect;
    } cases[] = {
        {"{\"type\":\"redis\"}", "source.stream_key"},
        {"{\"type\":\"redis\",\"stream_key\":\"\"}", "source.stream_key"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"group_name\":\"\"}", "source.group_name: must not be empty"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"consumer_name\":\"\"}", "source.consumer_name"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"create_group\":\"yes\"}", "source.create_group"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"batch_size\":0}", "source.batch_size"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"block_ms\":0}", "source.block_ms"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"claim_idle_ms\":-5}", "source.claim_idle_ms"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"url\":\"redis://h:x\"}", "source.url"},
        {"{\"type\":\"redis\",\"stream_key\":\"k\",\"count\":5}", "source.count"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (source_create(cases[i].cfg, err, sizeof err) != -1 || !strstr(err, cases[i].expect))
            fail_msg("%s: expected error containing \"%s\", got \"%s\"", cases[i].cfg,
                     cases[i].expect, err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(urls_are_parsed),
        cmocka_unit_test(bad_urls_are_refused),
        cmocka_unit_test(errors_are_classified),
        cmocka_unit_test(xreadgroup_replies_are_decoded),
        cmocka_unit_test(bodies_keep_their_bytes),
        cmocka_unit_test(malformed_entries_are_refused),
        cmocka_unit_test(xautoclaim_replies_are_decoded),
        cmocka_unit_test(sink_config_is_checked),
        cmocka_unit_test(source_config_is_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
