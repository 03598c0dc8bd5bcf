/*
 * pgoutput.h - a pure decoder of PostgreSQL's logical replication stream:
 * the CopyData framing of the streaming replication protocol ('w' XLogData,
 * 'k' primary keepalive) and the pgoutput messages of protocol version 1
 * (PostgreSQL docs, "Streaming Replication Protocol" and "Logical
 * Replication Message Formats").
 *
 * Bytes in, a decoded struct out: no I/O, no global state. Decoded strings
 * and values point into the caller's buffer (pgoutput strings are
 * NUL-terminated on the wire, and the decoder checks that they are), so
 * nothing is copied; arrays (columns, tuple values, truncated relations)
 * live in the decoder's scratch space and stay valid until the next call.
 * Malformed or truncated input is an error naming the message and the byte
 * offset, never a crash or an out-of-bounds read.
 *
 * The relation cache and the value mapping to JSON are here too, because
 * they are as pure as the decoder and are unit-tested with it:
 *   int2, int4, int8, oid          -> JSON number (the text as sent)
 *   float4, float8                 -> JSON number; NaN, Infinity and
 *                                     -Infinity -> JSON string
 *   bool                           -> true / false
 *   json, jsonb                    -> the JSON value itself, embedded
 *   numeric and every other type   -> JSON string of PostgreSQL's text
 *                                     output (arrays too: "{1,2,3}";
 *                                     bytea: "\\xdeadbeef"; timestamptz:
 *                                     "2025-01-02 03:04:05.123456+00")
 * A column sent in binary form ('b', only with binary 'true', which the
 * relay never requests) is emitted as a string of its bytes in hex.
 */
#ifndef RELAY_PGOUTPUT_H
#define RELAY_PGOUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "../buf.h"

/* ---- replication protocol framing ------------------------------------- */

typedef struct pgo_copydata {
    char kind;            /* 'w' XLogData, 'k' primary keepalive */
    uint64_t wal_start;   /* w: LSN of the data; k: unused */
    uint64_t wal_end;     /* w, k: server's current end of WAL */
    int64_t send_time;    /* microseconds since 2000-01-01 */
    int reply_requested;  /* k: the server asks for a status update now */
    const uint8_t *data;  /* w: the pgoutput message */
    size_t len;
} pgo_copydata;

/* Parse one CopyData message of a START_REPLICATION stream.
 * Returns 0, or -1 with err ("... at offset N"). */
int pgo_parse_copydata(const uint8_t *buf, size_t len, pgo_copydata *out, char *err,
                       size_t errlen);

/* Build a standby status update ('r', 34 bytes) reporting `lsn` as
 * written, flushed and applied. */
void pgo_standby_status(uint8_t out[34], uint64_t lsn, int64_t now_pg_us, int reply_requested);

/* ---- pgoutput messages --------------------------------------------------- */

typedef struct pgo_value {
    char kind;            /* 'n' NULL, 'u' unchanged TOAST, 't' text, 'b' binary */
    const char *data;     /* 't'/'b': bytes in the input buffer (not NUL-terminated) */
    uint32_t len;
} pgo_value;

typedef struct pgo_tuple {
    uint16_t ncols;
    pgo_value *cols;      /* decoder scratch */
} pgo_tuple;

typedef struct pgo_column {
    uint8_t flags;        /* 1: part of the replica identity key */
    const char *name;
    uint32_t type_oid;
    int32_t typmod;
} pgo_column;

typedef struct pgo_msg {
    char type; /* 'B' 'C' 'O' 'R' 'Y' 'I' 'U' 'D' 'T' 'M' */
    union {
        struct { uint64_t final_lsn; int64_t commit_time; uint32_t xid; } begin;
        struct { uint8_t flags; uint64_t commit_lsn, end_lsn; int64_t commit_time; } commit;
        struct { uint64_t lsn; const char *name; } origin;
        struct {
            uint32_t oid;
            const char *nspname;   /* "" means pg_catalog (as the protocol says) */
            const char *relname;
            char replident;        /* 'd' default, 'n' nothing, 'f' full, 'i' index */
            uint16_t ncols;
            pgo_column *cols;      /* decoder scratch */
        } relation;
        struct { uint32_t oid; const char *nspname; const char *name; } type;
        struct {
            uint32_t relid;
            char old_kind;         /* 0 none, 'K' key only, 'O' whole old row */
            pgo_tuple old;
            pgo_tuple new_;        /* insert, update */
        } change;                  /* 'I' 'U' 'D' */
        struct {
            uint32_t nrels;
            uint8_t options;       /* 1 CASCADE, 2 RESTART IDENTITY */
            uint32_t *relids;      /* decoder scratch */
        } truncate;
        struct {
            uint8_t flags;         /* 1: transactional */
            uint64_t lsn;
            const char *prefix;
            const char *content;   /* in the input buffer, `len` bytes */
            uint32_t len;
        } message;
    } u;
} pgo_msg;

/* Scratch space reused across calls; zero-initialise, pgo_decoder_free. */
typedef struct pgo_decoder {
    pgo_value *vals;
    size_t vals_cap;
    pgo_column *cols;
    size_t cols_cap;
    uint32_t *relids;
    size_t relids_cap;
} pgo_decoder;

/* Decode one pgoutput message (proto_version 1). Returns 0, or -1 with err
 * naming the message type and the byte offset of the problem. */
int pgo_decode(pgo_decoder *d, const uint8_t *buf, size_t len, pgo_msg *out, char *err,
               size_t errlen);
void pgo_decoder_free(pgo_decoder *d);

/* ---- relation cache --------------------------------------------------------- */

typedef struct pgo_rel_col {
    char *name;
    char *json_key;       /* "\"name\":" pre-escaped, for fast row encoding */
    size_t json_key_len;
    uint32_t type_oid;
    int32_t typmod;
    int key;              /* part of the replica identity */
} pgo_rel_col;

typedef struct pgo_rel {
    uint32_t oid;
    char *schema;         /* "pg_catalog" when the protocol sent "" */
    char *name;
    char replident;
    uint16_t ncols;
    pgo_rel_col *cols;
    uint32_t generation;  /* bumped when a Relation message changed the shape */
    int user_flag;        /* free for the caller (e.g. table filter result) */
    void *user;           /* free for the caller */
} pgo_rel;

typedef struct pgo_relcache {
    pgo_rel **rels;
    size_t n, cap;
    pgo_rel *last;        /* last lookup hit */
} pgo_relcache;

/* Insert or replace the relation described by a decoded 'R' message.
 * *changed is set to 1 when it is new or its name/columns/types differ. */
pgo_rel *pgo_relcache_put(pgo_relcache *c, const pgo_msg *m, int *changed);
pgo_rel *pgo_relcache_get(pgo_relcache *c, uint32_t oid);
void pgo_relcache_free(pgo_relcache *c);

/* ---- values to JSON ----------------------------------------------------- */

/* Append the JSON value of a text-format column of type `type_oid`. */
void pgo_value_json(uint32_t type_oid, const char *data, size_t len, relay_buf *out);

/* Append a tuple as a JSON object {"col": value, ...} in column order.
 * 'u' (unchanged TOAST) columns are omitted and, when `toast` is given,
 * their names appended to it as a JSON array body ("\"a\",\"b\"").
 * key_only: emit only replica-identity key columns (for 'K' tuples, whose
 * other columns PostgreSQL sends as NULL although they are not).
 * Returns 0, or -1 with err when the tuple does not match the relation. */
int pgo_tuple_json(const pgo_rel *rel, const pgo_tuple *t, int key_only, relay_buf *out,
                   relay_buf *toast, char *err, size_t errlen);

/* ---- helpers ------------------------------------------------------------------- */

/* "16/B374D848" (upper-case hex, as PostgreSQL prints it). buf >= 20 bytes. */
void pgo_lsn_format(uint64_t lsn, char *buf, size_t buflen);
/* Parse "16/B374D848". Returns 0, or -1. */
int pgo_lsn_parse(const char *s, uint64_t *out);
/* ISO 8601 UTC with microseconds, "2025-01-02T03:04:05.123456Z", from
 * microseconds since 2000-01-01 (PostgreSQL's epoch). buf >= 32 bytes. */
void pgo_time_format(int64_t pg_us, char *buf, size_t buflen);
/* Microseconds since 2000-01-01 of the current wall clock. */
int64_t pgo_now_us(void);

#endif
