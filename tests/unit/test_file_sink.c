/*
 * test_file_sink.c - the stdout/file sink: configuration errors, the exact
 * bytes of each format, rotation without split batches or lost events, and
 * failure handling (a failed batch is truncated away; a closed stdout pipe
 * is an error, not a crash).
 *
 * Every test works in its own mkdtemp() directory, removed afterwards.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hostpath.h"
#include "buf.h"
#include "hostpath.h"
#include "encode.h"
#include "message.h"
#include "sink/sink.h"

extern const relay_sink_ops relay_sink_file_ops;
extern const relay_sink_ops relay_sink_stdout_ops;

/* ---- fixtures ---------------------------------------------------------- */

typedef struct {
    char dir[64];
    char path[128];
    relay_batch batch;
    relay_msg *ptrs[64];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/relay-file-sink-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/out", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    DIR *d = opendir(f->dir);
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(f->dir);
    batch_free(&f->batch);
    free(f);
    return 0;
}

static relay_msg *add_msg(fixture *f, const char *key, const char *subject, relay_op op,
                          const char *payload, int64_t outbox_id, const char *refresh_id)
{
    relay_batch *b = &f->batch;
    relay_msg *m = batch_add(b);
    m->dedup_key = arena_strdup(&b->arena, key);
    m->subject = subject ? arena_strdup(&b->arena, subject) : NULL;
    m->op = op;
    if (payload) {
        m->payload = arena_strdup(&b->arena, payload);
        m->payload_len = strlen(payload);
    }
    m->outbox_id = outbox_id;
    m->refresh_id = refresh_id ? arena_strdup(&b->arena, refresh_id) : NULL;
    return m;
}

/* The two messages most tests publish. */
static void add_orders(fixture *f)
{
    add_msg(f, "outbox_orders:5:0", "pgtrickle.orders.insert", OP_INSERT,
            "{\"id\":1,\"name\":\"a,b\"}", 5, NULL);
    add_msg(f, "outbox_orders:5:1", "pgtrickle.orders.delete", OP_DELETE,
            "{\"id\":2,\"note\":\"say \\\"hi\\\"\"}", 5, "r-1");
}

/* Pointers to batch messages [from, from+n): taken after the batch stops growing. */
static relay_msg **ptrs(fixture *f, size_t from, size_t n)
{
    assert_true(from + n <= f->batch.n && n <= 64);
    for (size_t i = 0; i < n; i++)
        f->ptrs[i] = &f->batch.msgs[from + i];
    return f->ptrs;
}

static relay_sink *create(const relay_sink_ops *ops, const char *json, char *err, size_t errlen)
{
    json_error_t je;
    json_t *cfg = json_loads(json, 0, &je);
    assert_non_null(cfg);
    err[0] = '\0';
    relay_sink *s = ops->create(cfg, NULL, err, errlen);
    json_decref(cfg);
    return s;
}

static relay_sink *create_file(fixture *f, const char *extra)
{
    char json[512], err[256];
    snprintf(json, sizeof json, "{\"type\":\"file\",\"output\":\"%s\"%s%s}", f->path,
             extra ? "," : "", extra ? extra : "");
    relay_sink *s = create(&relay_sink_file_ops, json, err, sizeof err);
    if (!s)
        fail_msg("create failed: %s", err);
    assert_int_equal(s->ops->open(s, err, sizeof err), 0);
    return s;
}

static void publish_ok(relay_sink *s, relay_msg **msgs, size_t n)
{
    char err[256] = "";
    if (s->ops->publish(s, msgs, n, err, sizeof err) != 0)
        fail_msg("publish failed: %s", err);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(msgs[i]->state, MSG_CONFIRMED);
}

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    relay_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0)
        buf_append(&b, chunk, n);
    fclose(fp);
    return buf_steal(&b);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void assert_file_equals(const char *path, const char *expect)
{
    char *got = slurp(path);
    assert_string_equal(got, expect);
    free(got);
}

static const char ORDERS_JSONL[] =
    "{\"dedup_key\":\"outbox_orders:5:0\",\"subject\":\"pgtrickle.orders.insert\",\"op\":\"insert\","
    "\"payload\":{\"id\":1,\"name\":\"a,b\"},\"is_full_refresh\":false,\"outbox_id\":5,"
    "\"refresh_id\":null}\n"
    "{\"dedup_key\":\"outbox_orders:5:1\",\"subject\":\"pgtrickle.orders.delete\",\"op\":\"delete\","
    "\"payload\":{\"id\":2,\"note\":\"say \\\"hi\\\"\"},\"is_full_refresh\":false,\"outbox_id\":5,"
    "\"refresh_id\":\"r-1\"}\n";

static const char CSV_HEADER[] = "dedup_key,subject,op,is_full_refresh,outbox_id,refresh_id,payload\n";

static const char ORDERS_CSV_ROWS[] =
    "outbox_orders:5:0,pgtrickle.orders.insert,insert,false,5,,\"{\"\"id\"\":1,\"\"name\"\":\"\"a,b\"\"}\"\n"
    "outbox_orders:5:1,pgtrickle.orders.delete,delete,false,5,r-1,"
    "\"{\"\"id\"\":2,\"\"note\"\":\"\"say \\\"\"hi\\\"\"\"\"}\"\n";

/* ---- configuration ----------------------------------------------------- */

static void assert_create_fails(const relay_sink_ops *ops, const char *json, const char *prefix)
{
    char err[256];
    relay_sink *s = create(ops, json, err, sizeof err);
    if (s) {
        s->ops->destroy(s);
        fail_msg("config accepted: %s", json);
    }
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", err, prefix);
}

static void test_config_errors(void **state)
{
    (void)state;
    const relay_sink_ops *file = &relay_sink_file_ops;
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"/tmp/x\",\"bogus\":1}",
                        "sink.bogus: unknown key");
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"/tmp/x\",\"format\":\"xml\"}",
                        "sink.format: expected one of jsonl, json_pretty, csv, msgpack");
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"/tmp/x\",\"format\":7}",
                        "sink.format: expected a string");
    assert_create_fails(file, "{\"type\":\"file\"}", "sink.output: required");
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"\"}", "sink.output: required");
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"/tmp/x\",\"rotate_bytes\":-1}",
                        "sink.rotate_bytes:");
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"/tmp/x\",\"rotate_bytes\":\"lots\"}",
                        "sink.rotate_bytes:");
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"/tmp/x\",\"fsync\":\"maybe\"}",
                        "sink.fsync: expected true or false");
    assert_create_fails(file, "{\"type\":\"file\",\"output\":\"/tmp/x\",\"subject_template\":\"a.{nope}\"}",
                        "sink.subject_template: unknown variable {nope}");
    assert_create_fails(&relay_sink_stdout_ops, "{\"type\":\"stdout\",\"rotate_bytes\":10}",
                        "sink.rotate_bytes: rotation needs an output file");
}

static void test_config_valid(void **state)
{
    (void)state;
    char err[256];
    relay_sink *s = create(&relay_sink_file_ops,
                           "{\"type\":\"file\",\"output\":\"/tmp/x\",\"format\":\"csv\","
                           "\"rotate_bytes\":0,\"fsync\":false,"
                           "\"subject_template\":\"app.{stream_table}.{op}\"}",
                           err, sizeof err);
    assert_non_null(s);
    assert_ptr_equal(s->ops, &relay_sink_file_ops);
    assert_string_equal(s->ops->type, "file");
    assert_string_equal(s->subject_template, "app.{stream_table}.{op}");
    relay_buf d = {0};
    s->ops->describe(s, &d);
    assert_string_equal(d.data, "{\"output\":\"/tmp/x\",\"format\":\"csv\",\"bytes_written\":0,\"rotations\":0}");
    buf_free(&d);
    s->ops->destroy(s);

    /* "stdout" accepts (and ignores) output; no template means the source default. */
    s = create(&relay_sink_stdout_ops, "{\"type\":\"stdout\",\"output\":\"/tmp/ignored\"}", err,
               sizeof err);
    assert_non_null(s);
    assert_string_equal(s->ops->type, "stdout");
    assert_null(s->subject_template);
    s->ops->describe(s, &d);
    assert_string_equal(d.data, "{\"output\":\"-\",\"format\":\"jsonl\",\"bytes_written\":0,\"rotations\":0}");
    buf_free(&d);
    s->ops->destroy(s);

    s = create(&relay_sink_file_ops, "{\"type\":\"file\",\"output\":\"-\",\"format\":\"json_pretty\"}",
               err, sizeof err);
    assert_non_null(s);
    s->ops->destroy(s);
}

/* ---- formats ----------------------------------------------------------- */

static void test_jsonl(void **state)
{
    fixture *f = *state;
    add_orders(f);
    relay_sink *s = create_file(f, NULL);
    publish_ok(s, ptrs(f, 0, 2), 2);
    assert_file_equals(f->path, ORDERS_JSONL);

    /* A second batch appends; describe() reports the bytes. */
    publish_ok(s, ptrs(f, 0, 1), 1);
    char *got = slurp(f->path);
    assert_int_equal(strlen(got), strlen(ORDERS_JSONL) + strchr(ORDERS_JSONL, '\n') - ORDERS_JSONL + 1);
    free(got);
    relay_buf d = {0};
    s->ops->describe(s, &d);
    json_t *doc = json_loads(d.data, 0, NULL);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "output")), f->path);
    assert_string_equal(json_string_value(json_object_get(doc, "format")), "jsonl");
    assert_int_equal(json_integer_value(json_object_get(doc, "bytes_written")), file_size(f->path));
    assert_int_equal(json_integer_value(json_object_get(doc, "rotations")), 0);
    json_decref(doc);
    buf_free(&d);
    s->ops->destroy(s);
}

/* A partial record left by a crash mid-write is cut back to the last
 * newline on open, so the redelivered batch starts on a clean line. */
static void test_partial_record_repaired(void **state)
{
    fixture *f = *state;
    add_orders(f);
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fputs("{\"dedup_key\":\"old\"}\n{\"dedup_key\":\"outbox_ord", fp);
    fclose(fp);
    relay_sink *s = create_file(f, NULL);
    publish_ok(s, ptrs(f, 0, 2), 2);
    char *got = slurp(f->path);
    char want[1024];
    snprintf(want, sizeof want, "{\"dedup_key\":\"old\"}\n%s", ORDERS_JSONL);
    assert_string_equal(got, want);
    free(got);
    s->ops->destroy(s);

    /* A file without any newline is cut to empty. */
    fp = fopen(f->path, "w");
    fputs("{\"partial", fp);
    fclose(fp);
    s = create_file(f, NULL);
    assert_int_equal(file_size(f->path), 0);
    s->ops->destroy(s);
}

/* Issue 12 #4: format "msgpack" writes length-prefixed records (4-byte
 * big-endian length, then the MessagePack body the worker encoded); the
 * worker is asked to encode; a torn last record is cut on open, however it
 * was torn (inside the length or inside the body). */
static void test_msgpack_frames(void **state)
{
    fixture *f = *state;
    add_orders(f);
    relay_sink *s = create_file(f, "\"format\":\"msgpack\"");
    assert_int_equal(s->encode, 1);
    assert_int_equal(s->format, RELAY_FORMAT_MSGPACK);
    relay_buf bodies = {0};
    size_t lens[2];
    for (size_t i = 0; i < 2; i++) {
        relay_msg *m = &f->batch.msgs[i];
        relay_buf one = {0};
        char err[128];
        assert_int_equal(relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &one, err, sizeof err), 0);
        m->body = arena_strndup(&f->batch.arena, one.data, one.len);
        m->body_len = lens[i] = one.len;
        buf_append(&bodies, one.data, one.len);
        buf_free(&one);
    }
    publish_ok(s, ptrs(f, 0, 2), 2);
    s->ops->destroy(s);
    assert_int_equal(file_size(f->path), 8 + bodies.len);
    char *got = slurp(f->path);
    const unsigned char *u = (const unsigned char *)got;
    assert_int_equal(((size_t)u[0] << 24 | (size_t)u[1] << 16 | (size_t)u[2] << 8 | u[3]), lens[0]);
    assert_memory_equal(got + 4, bodies.data, lens[0]);
    u += 4 + lens[0];
    assert_int_equal(((size_t)u[0] << 24 | (size_t)u[1] << 16 | (size_t)u[2] << 8 | u[3]), lens[1]);
    assert_memory_equal(got + 8 + lens[0], bodies.data + lens[0], lens[1]);
    free(got);

    /* torn inside the body, then inside the length: cut after record 1 */
    off_t whole = file_size(f->path);
    for (int torn = 0; torn < 2; torn++) {
        assert_int_equal(truncate(f->path, whole - (torn ? (off_t)lens[1] + 2 : 3)), 0);
        s = create_file(f, "\"format\":\"msgpack\"");
        assert_int_equal(file_size(f->path), 4 + (off_t)lens[0]);
        /* the redelivered batch follows the last whole record */
        publish_ok(s, ptrs(f, 1, 1), 1);
        s->ops->destroy(s);
        assert_int_equal(file_size(f->path), whole);
    }
    buf_free(&bodies);
}

/* Whitespace inside a payload's text never splits a JSONL line. */
static void test_jsonl_payload_whitespace(void **state)
{
    fixture *f = *state;
    add_msg(f, "k:1", "s", OP_INSERT, "{\n  \"a\": [1,\r\n 2]\n}", 1, NULL);
    relay_sink *s = create_file(f, "\"fsync\":false");
    publish_ok(s, ptrs(f, 0, 1), 1);
    char *got = slurp(f->path);
    assert_int_equal(strchr(got, '\n') - got, (long)strlen(got) - 1);
    json_t *doc = json_loads(got, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(json_array_size(json_object_get(json_object_get(doc, "payload"), "a")), 2);
    json_decref(doc);
    free(got);
    s->ops->destroy(s);
}

static void test_json_pretty(void **state)
{
    fixture *f = *state;
    add_orders(f);
    add_msg(f, "k:2", NULL, OP_UPDATE, "{\"empty\":{},\"list\":[],\"nested\":[[1,{\"x\":null}],true]}",
            -1, NULL);
    relay_sink *s = create_file(f, "\"format\":\"json_pretty\"");
    publish_ok(s, ptrs(f, 0, 1), 1);
    assert_file_equals(f->path,
                       "{\n"
                       "  \"dedup_key\": \"outbox_orders:5:0\",\n"
                       "  \"subject\": \"pgtrickle.orders.insert\",\n"
                       "  \"op\": \"insert\",\n"
                       "  \"payload\": {\n"
                       "    \"id\": 1,\n"
                       "    \"name\": \"a,b\"\n"
                       "  },\n"
                       "  \"is_full_refresh\": false,\n"
                       "  \"outbox_id\": 5,\n"
                       "  \"refresh_id\": null\n"
                       "}\n");

    /* The layout is jansson's JSON_INDENT(2), envelope by envelope. */
    publish_ok(s, ptrs(f, 1, 2), 2);
    relay_buf expect = {0};
    for (size_t i = 0; i < 3; i++) {
        relay_buf env = {0};
        msg_encode_native(&f->batch.msgs[i], &env);
        json_t *doc = json_loads(env.data, 0, NULL);
        assert_non_null(doc);
        char *text = json_dumps(doc, JSON_INDENT(2));
        buf_puts(&expect, text);
        buf_putc(&expect, '\n');
        free(text);
        json_decref(doc);
        buf_free(&env);
    }
    assert_file_equals(f->path, expect.data);
    buf_free(&expect);
    s->ops->destroy(s);
}

/* Numbers are copied verbatim, never re-formatted by a JSON library. */
static void test_json_pretty_keeps_numbers(void **state)
{
    fixture *f = *state;
    add_msg(f, "k", "s", OP_INSERT, "{\"price\":1.10,\"big\":123456789012345678901234567890}", 1, NULL);
    relay_sink *s = create_file(f, "\"format\":\"json_pretty\"");
    publish_ok(s, ptrs(f, 0, 1), 1);
    char *got = slurp(f->path);
    assert_non_null(strstr(got, "    \"price\": 1.10,\n    \"big\": 123456789012345678901234567890\n"));
    free(got);
    s->ops->destroy(s);
}

static void test_csv(void **state)
{
    fixture *f = *state;
    add_orders(f);
    relay_sink *s = create_file(f, "\"format\":\"csv\"");
    publish_ok(s, ptrs(f, 0, 2), 2);
    /* The header is written once per file, not once per batch. */
    publish_ok(s, ptrs(f, 0, 2), 2);
    relay_buf expect = {0};
    buf_puts(&expect, CSV_HEADER);
    buf_puts(&expect, ORDERS_CSV_ROWS);
    buf_puts(&expect, ORDERS_CSV_ROWS);
    assert_file_equals(f->path, expect.data);
    buf_free(&expect);
    s->ops->destroy(s);

    /* Reopening a non-empty file does not repeat the header. */
    s = create_file(f, "\"format\":\"csv\"");
    publish_ok(s, ptrs(f, 0, 1), 1);
    char *got = slurp(f->path);
    assert_null(strstr(got + 1, "dedup_key,subject"));
    free(got);
    s->ops->destroy(s);
}

static void test_csv_quoting(void **state)
{
    fixture *f = *state;
    relay_msg *m = add_msg(f, "a,b", "say \"x\"", OP_SNAPSHOT, NULL, -1, "line1\nline2");
    m->is_full_refresh = 1;
    add_msg(f, "plain", "cr\rhere", OP_TRUNCATE, "[]", 0, "");
    relay_sink *s = create_file(f, "\"format\":\"csv\"");
    publish_ok(s, ptrs(f, 0, 2), 2);
    relay_buf expect = {0};
    buf_puts(&expect, CSV_HEADER);
    buf_puts(&expect, "\"a,b\",\"say \"\"x\"\"\",snapshot,true,,\"line1\nline2\",\n");
    buf_puts(&expect, "plain,\"cr\rhere\",truncate,false,0,,[]\n");
    assert_file_equals(f->path, expect.data);
    buf_free(&expect);
    s->ops->destroy(s);
}

/* ---- rotation ---------------------------------------------------------- */

static char *rotated_path(const fixture *f, int n)
{
    static char p[160];
    snprintf(p, sizeof p, "%s.%d", f->path, n);
    return p;
}

/* Each rotated file holds whole batches, and reading output.1, output.2, ...,
 * then output gives every event exactly once, in order. */
static void test_rotation(void **state)
{
    fixture *f = *state;
    char key[32];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "outbox_t:%d:0", i);
        add_msg(f, key, "pgtrickle.t.insert", OP_INSERT, "{\"pad\":\"xxxxxxxxxxxxxxxxxxxx\"}", i, NULL);
    }
    /* Room for exactly 3 of the longest lines per file. */
    size_t line = 0;
    for (size_t i = 0; i < f->batch.n; i++) {
        relay_buf one = {0};
        msg_encode_native(&f->batch.msgs[i], &one);
        if (one.len + 1 > line)
            line = one.len + 1;
        buf_free(&one);
    }

    char extra[64];
    snprintf(extra, sizeof extra, "\"rotate_bytes\":%zu", 3 * line);
    relay_sink *s = create_file(f, extra);
    size_t sizes[] = {2, 2, 2, 5, 1, 2, 2, 4};
    size_t from = 0;
    for (size_t b = 0; b < sizeof sizes / sizeof sizes[0]; b++) {
        publish_ok(s, ptrs(f, from, sizes[b]), sizes[b]);
        from += sizes[b];
    }
    assert_int_equal(from, 20);

    /* Expected: [2][2][2][5 (> rotate_bytes, alone)][1+2 = 3 lines][2][4]: the
     * 1-line batch and the next 2-line batch share a file (exactly 3 lines). */
    size_t expect_lines[] = {2, 2, 2, 5, 3, 2, 4};
    size_t nfiles = sizeof expect_lines / sizeof expect_lines[0];
    int next_id = 0;
    for (size_t i = 0; i < nfiles; i++) {
        const char *p = i + 1 < nfiles ? rotated_path(f, (int)i + 1) : f->path;
        char *got = slurp(p);
        size_t lines = 0;
        for (char *l = got; *l; l = strchr(l, '\n') + 1) {
            snprintf(key, sizeof key, "\"outbox_t:%d:0\"", next_id++);
            assert_non_null(strstr(l, key));
            assert_true(strstr(l, key) < strchr(l, '\n'));
            lines++;
        }
        if (lines != expect_lines[i])
            fail_msg("%s has %zu lines, expected %zu", p, lines, expect_lines[i]);
        free(got);
    }
    assert_int_equal(next_id, 20);
    assert_int_equal(access(rotated_path(f, (int)nfiles), F_OK), -1);

    relay_buf d = {0};
    s->ops->describe(s, &d);
    char expect_rot[32];
    snprintf(expect_rot, sizeof expect_rot, "\"rotations\":%zu}", nfiles - 1);
    assert_non_null(strstr(d.data, expect_rot));
    buf_free(&d);
    s->ops->destroy(s);
}

/* The new suffix is one past the highest existing numeric one. */
static void test_rotation_suffix(void **state)
{
    fixture *f = *state;
    const char *pre[] = {".3", ".x", ".12a", ".", "x.7"};
    for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s%s", f->path, pre[i]);
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        assert_true(fd >= 0);
        close(fd);
    }
    add_orders(f);
    relay_sink *s = create_file(f, "\"rotate_bytes\":10,\"format\":\"csv\"");
    publish_ok(s, ptrs(f, 0, 1), 1);
    publish_ok(s, ptrs(f, 1, 1), 1);
    s->ops->destroy(s);
    /* The first file moved to .4; both files start with the CSV header. */
    char *old = slurp(rotated_path(f, 4));
    char *cur = slurp(f->path);
    assert_int_equal(strncmp(old, CSV_HEADER, strlen(CSV_HEADER)), 0);
    assert_int_equal(strncmp(cur, CSV_HEADER, strlen(CSV_HEADER)), 0);
    assert_non_null(strstr(old, "outbox_orders:5:0"));
    assert_non_null(strstr(cur, "outbox_orders:5:1"));
    assert_null(strstr(cur, "outbox_orders:5:0"));
    free(old);
    free(cur);
}

static void test_rotation_disabled(void **state)
{
    fixture *f = *state;
    add_orders(f);
    relay_sink *s = create_file(f, "\"rotate_bytes\":0");
    for (int i = 0; i < 5; i++)
        publish_ok(s, ptrs(f, 0, 2), 2);
    s->ops->destroy(s);
    assert_int_equal(file_size(f->path), 5 * (off_t)strlen(ORDERS_JSONL));
    assert_int_equal(access(rotated_path(f, 1), F_OK), -1);
}

/* ---- failures ---------------------------------------------------------- */

static void test_open_error(void **state)
{
    fixture *f = *state;
    add_orders(f);
    char json[256], err[256];
    snprintf(json, sizeof json, "{\"type\":\"file\",\"output\":\"%s/missing/out\"}", f->dir);
    relay_sink *s = create(&relay_sink_file_ops, json, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(s->ops->open(s, err, sizeof err), -1);
    assert_non_null(strstr(err, "No such file or directory"));
    relay_msg **m = ptrs(f, 0, 2);
    assert_int_equal(s->ops->publish(s, m, 2, err, sizeof err), -1);
    assert_int_equal(m[0]->state, MSG_RETRY);
    assert_int_equal(m[1]->state, MSG_RETRY);
    s->ops->destroy(s);
}

/* A write that fails half way (here: the file size limit) leaves the file as
 * it was before the batch; the retry then writes the batch exactly once. */
static void test_failed_write_is_truncated(void **state)
{
    fixture *f = *state;
    add_orders(f);
    relay_sink *s = create_file(f, NULL);
    publish_ok(s, ptrs(f, 0, 1), 1);
    off_t before = file_size(f->path);

    struct rlimit saved, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = saved;
    lim.rlim_cur = (rlim_t)before + 40;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    char err[256];
    relay_msg **m = ptrs(f, 0, 2);
    int rc = s->ops->publish(s, m, 2, err, sizeof err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, old_handler);

    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "File too large"));
    assert_int_equal(m[0]->state, MSG_RETRY);
    assert_int_equal(m[1]->state, MSG_RETRY);
    assert_int_equal(file_size(f->path), before);

    /* The worker reopens and retries the same batch. */
    assert_int_equal(s->ops->open(s, err, sizeof err), 0);
    publish_ok(s, m, 2);
    relay_buf expect = {0};
    buf_append(&expect, ORDERS_JSONL, (size_t)(strchr(ORDERS_JSONL, '\n') - ORDERS_JSONL + 1));
    buf_puts(&expect, ORDERS_JSONL);
    assert_file_equals(f->path, expect.data);
    buf_free(&expect);
    s->ops->destroy(s);
}

/* ---- stdout ------------------------------------------------------------ */

/* Run `fn` with fd 1 redirected to the write end of a pipe; returns the read end. */
static int with_stdout_pipe(int close_reader, void (*fn)(fixture *), fixture *f)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    assert_true(saved >= 0);
    if (close_reader) {
        close(p[0]);
        p[0] = -1;
    }
    assert_int_equal(dup2(p[1], STDOUT_FILENO), STDOUT_FILENO);
    close(p[1]);
    fn(f);
    assert_int_equal(dup2(saved, STDOUT_FILENO), STDOUT_FILENO);
    close(saved);
    return p[0];
}

static void publish_csv_to_stdout(fixture *f)
{
    char err[256];
    relay_sink *s = create(&relay_sink_stdout_ops, "{\"type\":\"stdout\",\"format\":\"csv\"}", err,
                           sizeof err);
    assert_non_null(s);
    assert_int_equal(s->ops->open(s, err, sizeof err), 0);
    publish_ok(s, ptrs(f, 0, 2), 2);
    publish_ok(s, ptrs(f, 0, 2), 2);
    s->ops->destroy(s); /* must not close the process's stdout */
}

static void test_stdout_csv(void **state)
{
    fixture *f = *state;
    add_orders(f);
    int rd = with_stdout_pipe(0, publish_csv_to_stdout, f);
    relay_buf got = {0};
    char chunk[4096];
    ssize_t n;
    while ((n = read(rd, chunk, sizeof chunk)) > 0)
        buf_append(&got, chunk, (size_t)n);
    close(rd);
    relay_buf expect = {0};
    buf_puts(&expect, CSV_HEADER);
    buf_puts(&expect, ORDERS_CSV_ROWS);
    buf_puts(&expect, ORDERS_CSV_ROWS);
    assert_string_equal(got.data, expect.data);
    buf_free(&got);
    buf_free(&expect);
    assert_true(fcntl(STDOUT_FILENO, F_GETFD) >= 0);
}

static void publish_to_closed_pipe(fixture *f)
{
    char err[256];
    relay_sink *s = create(&relay_sink_stdout_ops, "{\"type\":\"stdout\",\"fsync\":true}", err,
                           sizeof err);
    assert_non_null(s);
    relay_msg **m = ptrs(f, 0, 2);
    assert_int_equal(s->ops->publish(s, m, 2, err, sizeof err), -1);
    assert_non_null(strstr(err, "Broken pipe"));
    assert_int_equal(m[0]->state, MSG_RETRY);
    assert_int_equal(m[1]->state, MSG_RETRY);
    /* Still an error, still no crash, on the retry. */
    assert_int_equal(s->ops->open(s, err, sizeof err), 0);
    assert_int_equal(s->ops->publish(s, m, 2, err, sizeof err), -1);
    s->ops->destroy(s);
}

static void test_stdout_epipe(void **state)
{
    fixture *f = *state;
    add_orders(f);
    void (*old_handler)(int) = signal(SIGPIPE, SIG_IGN);
    with_stdout_pipe(1, publish_to_closed_pipe, f);
    signal(SIGPIPE, old_handler);
}

int main(void)
{
    /* The paths these tests name are checked for their keys, not for
     * --allow-path (the integration tests cover that): allow every path. */
    char allow_err[256];
    if (hostpath_allow("/", allow_err, sizeof allow_err) < 0) {
        fprintf(stderr, "%s\n", allow_err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_config_valid),
        cmocka_unit_test_setup_teardown(test_jsonl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jsonl_payload_whitespace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_pretty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_pretty_keeps_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_csv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_csv_quoting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_suffix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_disabled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_is_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stdout_csv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stdout_epipe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_record_repaired, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msgpack_frames, setup, teardown),
    };
    /* file outputs must lie under --allow-path (hostpath.h) */
    char why[512];
    if (hostpath_allow("/tmp", why, sizeof why) < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
