/*
 * inbox_floor.c - the database floor of a reverse pipeline: one plain libpq
 * client writing rows into an inbox table with the inbox writer's own
 * statement (inbox_insert_sql(), src/sink/pg_inbox.h), in batches of the
 * relay's size, each batch one statement (one transaction), like the relay.
 * No broker, no relay loop: what PostgreSQL takes for these rows.
 *
 *   inbox_floor CONNINFO SCHEMA.TABLE COPYFILE BATCH
 *
 * COPYFILE holds the rows in COPY text format, columns event_id,
 * event_type, source, aggregate_id, payload, trace_id (what
 * `\copy (SELECT event_id, event_type, source, aggregate_id, payload,
 * trace_id FROM inbox) TO file` writes). Prints
 * {"rows","batches","seconds","rate"}; exit 1 on errors.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "sink/pg_inbox.h"

#define NCOL 6

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Decode one COPY text field in place; returns NULL for \N. */
static char *copy_unescape(char *f)
{
    if (strcmp(f, "\\N") == 0)
        return NULL;
    char *o = f;
    for (char *p = f; *p; p++) {
        if (*p != '\\' || !p[1]) {
            *o++ = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 't': *o++ = '\t'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'v': *o++ = '\v'; break;
        default: *o++ = *p; break;
        }
    }
    *o = '\0';
    return f;
}

/* Append v (NULL: SQL NULL) to an array literal, quoted and escaped. */
static void arr_put(relay_buf *a, const char *v)
{
    if (a->len > 1)
        buf_putc(a, ',');
    if (!v) {
        buf_puts(a, "NULL");
        return;
    }
    buf_putc(a, '"');
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            buf_putc(a, '\\');
        buf_putc(a, *v);
    }
    buf_putc(a, '"');
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: inbox_floor CONNINFO SCHEMA.TABLE COPYFILE BATCH\n");
        return 2;
    }
    long batch = strtol(argv[4], NULL, 10);
    char *dot = strchr(argv[2], '.');
    FILE *f = fopen(argv[3], "r");
    if (batch < 1 || !dot || !f) {
        fprintf(stderr, "inbox_floor: bad arguments\n");
        return 2;
    }
    *dot = '\0';
    PGconn *c = PQconnectdb(argv[1]);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "inbox_floor: %s", PQerrorMessage(c));
        return 1;
    }
    char *qs = PQescapeIdentifier(c, argv[2], strlen(argv[2]));
    char *qt = PQescapeIdentifier(c, dot + 1, strlen(dot + 1));
    char *sql = inbox_insert_sql(qs, qt);
    PQfreemem(qs);
    PQfreemem(qt);

    /* the arrays in the statement's order: id, subject, src, agg, trace, p;
     * the file's: event_id, event_type, source, aggregate_id, payload, trace_id */
    static const int from_file[NCOL] = {0, 1, 2, 3, 5, 4};
    relay_buf arr[NCOL] = {{0}};
    char *line = NULL;
    size_t cap = 0;
    long rows = 0, batches = 0, in_batch = 0;
    double busy = 0;
    int eof = 0;
    while (!eof) {
        ssize_t n = getline(&line, &cap, f);
        eof = n < 0;
        if (!eof) {
            if (n > 0 && line[n - 1] == '\n')
                line[--n] = '\0';
            char *field[NCOL] = {0};
            char *p = line;
            for (int i = 0; i < NCOL; i++) {
                field[i] = p;
                p = strchr(p, '\t');
                if (!p && i < NCOL - 1) {
                    fprintf(stderr, "inbox_floor: line %ld has %d fields\n", rows + 1, i + 1);
                    return 1;
                }
                if (p)
                    *p++ = '\0';
            }
            for (int i = 0; i < NCOL; i++) {
                if (in_batch == 0) {
                    buf_clear(&arr[i]);
                    buf_putc(&arr[i], '{');
                }
                arr_put(&arr[i], copy_unescape(field[from_file[i]]));
            }
            in_batch++;
            rows++;
        }
        if (in_batch == batch || (eof && in_batch > 0)) {
            for (int i = 0; i < NCOL; i++)
                buf_putc(&arr[i], '}');
            const char *params[10] = {arr[0].data, arr[1].data, arr[2].data, arr[3].data,
                                      arr[4].data, arr[5].data, "event_type", NULL, NULL, NULL};
            double t0 = now_s();
            PGresult *r = PQexecParams(c, sql, 10, NULL, params, NULL, NULL, 0);
            busy += now_s() - t0;
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                fprintf(stderr, "inbox_floor: %s", PQerrorMessage(c));
                return 1;
            }
            PQclear(r);
            batches++;
            in_batch = 0;
        }
    }
    printf("{\"rows\":%ld,\"batches\":%ld,\"seconds\":%.4f,\"rate\":%.0f}\n", rows, batches, busy,
           busy > 0 ? (double)rows / busy : 0.0);
    free(line);
    free(sql);
    for (int i = 0; i < NCOL; i++)
        buf_free(&arr[i]);
    PQfinish(c);
    fclose(f);
    return 0;
}
