/*
 * coordinator.c - pipeline discovery, hot reload and ownership.
 *
 * The coordinator runs on the main thread with one PostgreSQL connection:
 *
 *   LISTEN pgtrickle_relay_config
 *   loop:
 *     wait on (connection socket | signal pipe | next discovery tick | a
 *             stopping worker to finish)
 *     notification or tick -> list_relay_configs() -> reconcile
 *
 * reconcile() compares the catalog with the workers it runs:
 *   - enabled, not running here, not locked by another relay -> validate the
 *     config (secrets, source/sink keys) and start a worker; a bad config is
 *     logged once and remembered, so it is retried only when it changes;
 *   - running here but disabled or deleted -> stop it;
 *   - running here with a different config -> stop it; it is started again
 *     with the new config once the old worker has released its lock.
 * A worker stopped by a catalog change gets RELOAD_GRACE_MS, not the whole
 * --shutdown-timeout, to confirm its batch in flight: a healthy sink needs
 * milliseconds, and a sink that keeps failing is the usual reason for the
 * change, so the batch is left unacknowledged (the next worker reads it
 * again) and the new config takes effect at once.
 * Whether another relay owns a pipeline is read from pg_locks (granted
 * advisory locks with our group's key), which avoids opening a connection
 * per foreign pipeline on every tick. The worker's own
 * pg_try_advisory_lock stays the authority.
 *
 * Pipelines are keyed by direction and name: pg_trickle allows the same
 * name in relay_outbox_config and relay_inbox_config.
 *
 * Sharing the pipelines between the relays of a group.  Each coordinator
 * holds a shared advisory lock on a key derived from the group
 * (pg_advisory_lock_shared(hashtextextended('pgtrickle-relay group:' ||
 * group, 0)), a one-bigint key, so it never meets the two-int pipeline
 * locks); counting the granted holders in pg_locks gives the relays alive
 * in the group, and a relay that dies drops out with its connection. With
 * M relays and N enabled pipelines a relay runs at most ceil(N / M) of them
 * (its fair share):
 *   - it starts a free pipeline only while below its share, except one that
 *     stayed free for ORPHAN_INTERVALS discovery intervals (no other relay
 *     wants it, e.g. one built without that backend): that one it takes;
 *   - when every enabled pipeline is owned and it runs more than its share,
 *     it stops the surplus (RELOAD_GRACE_MS, as for a config change) and,
 *     once their locks are released, NOTIFYs pgtrickle_relay_config so the
 *     others pick them up at once rather than on their next tick;
 *   - a pipeline it handed over that came back to it (nobody else took it)
 *     is not handed over again for NO_REHANDOVER_MS, so that cannot loop.
 * A relay that starts NOTIFYs too, so running relays make room for it.
 */
#include "coordinator.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "buf.h"
#include "catalog.h"
#include "http.h"
#include "log.h"
#include "notify.h"
#include "pg.h"
#include "stats.h"
#include "worker.h"

#define ERRLEN 1024

/* Discovery intervals a pipeline must stay free before a relay at its fair
 * share takes it anyway; how recent a handover must be for a pipeline that
 * comes back to count as handed back (ms); how long such a pipeline is then
 * kept (ms). See "Sharing the pipelines" above. */
#define ORPHAN_INTERVALS 2
#define HANDED_BACK_MS 60000
#define NO_REHANDOVER_MS 600000

typedef struct pipeline {
    char *name;
    int forward;
    relay_worker *worker;   /* NULL when not running here */
    char *failed_config;    /* config text that failed validation (not retried) */
    int seen;               /* mark for reconcile */
    int64_t free_since_ms;  /* free (no relay runs it) and left alone since; 0: not */
    int64_t handed_over_ms; /* when this relay last stopped it to rebalance */
    int64_t keep_until_ms;  /* not handed over again before this */
} pipeline;

static struct {
    const relay_options *opts;
    PGconn *pg;
    pipeline *pipes;
    size_t npipes;
    relay_worker **stopping; /* workers asked to stop, not yet joined */
    size_t nstopping;
    int handovers;           /* of those, stopped to rebalance: NOTIFY when joined */
    int sig_pipe[2];
} co;

static atomic_int stop_requested;

void coordinator_request_stop(void)
{
    atomic_store(&stop_requested, 1);
    if (co.sig_pipe[1] > 0) {
        char c = 1;
        ssize_t rc = write(co.sig_pipe[1], &c, 1);
        (void)rc;
    }
}

/* ---- bookkeeping ---------------------------------------------------------- */

static pipeline *find_pipe(const char *name, int forward)
{
    for (size_t i = 0; i < co.npipes; i++)
        if (co.pipes[i].forward == forward && strcmp(co.pipes[i].name, name) == 0)
            return &co.pipes[i];
    return NULL;
}

static pipeline *add_pipe(const char *name, int forward)
{
    co.pipes = xrealloc(co.pipes, (co.npipes + 1) * sizeof *co.pipes);
    pipeline *p = &co.pipes[co.npipes++];
    memset(p, 0, sizeof *p);
    p->name = xstrdup(name);
    p->forward = forward;
    return p;
}

/* How long a worker stopped by a catalog change may take to confirm its
 * batch in flight (at most --shutdown-timeout), in ms. */
#define RELOAD_GRACE_MS 500

/* Ask the worker to stop, finishing its batch in flight within grace_ms. */
static void stop_worker(pipeline *p, const char *why, int64_t grace_ms)
{
    if (!p->worker)
        return;
    log_info(p->name, "stopping pipeline (%s)", why);
    if (grace_ms > co.opts->shutdown_timeout_ms)
        grace_ms = co.opts->shutdown_timeout_ms;
    worker_request_stop(p->worker, now_mono_ms() + grace_ms);
    co.stopping = xrealloc(co.stopping, (co.nstopping + 1) * sizeof *co.stopping);
    co.stopping[co.nstopping++] = p->worker;
    p->worker = NULL;
}

/* NOTIFY pgtrickle_relay_config so every relay reconciles at once; `event`
 * says why ({"event": ..., "group": ...}). Returns 0 or -1 (err). */
static int notify_group(const char *event, char *err, size_t errlen)
{
    if (!co.pg) {
        snprintf(err, errlen, "not connected");
        return -1;
    }
    const char *params[2] = {event, co.opts->group_id};
    return pg_exec(co.pg, "SELECT pg_notify('pgtrickle_relay_config',"
                   " json_build_object('event', $1::text, 'group', $2::text)::text)",
                   2, params, err, errlen);
}

/* Is a worker for this name (either being stopped, or running) still alive here? */
static int still_stopping(const char *name, int forward)
{
    for (size_t i = 0; i < co.nstopping; i++)
        if (co.stopping[i]->cfg.forward == forward && strcmp(co.stopping[i]->cfg.name, name) == 0)
            return 1;
    return 0;
}

/* Join stopped workers and workers whose threads ended on their own (lost
 * the lock race, another relay took over). Returns how many were reaped. */
static int reap(void)
{
    int reaped = 0;
    for (size_t i = 0; i < co.nstopping;) {
        relay_worker *w = co.stopping[i];
        int st = atomic_load(&w->state);
        if (st == WORKER_EXITED || st == WORKER_NOT_OWNER || st == WORKER_FAILED) {
            worker_free(w);
            co.stopping[i] = co.stopping[--co.nstopping];
            reaped++;
        } else {
            i++;
        }
    }
    if (co.handovers && co.nstopping == 0) {
        /* The pipelines handed over are free now: wake the other relays. */
        char err[ERRLEN];
        if (notify_group("handover", err, sizeof err) < 0)
            log_debug(NULL, "handover notification failed: %s", err);
        co.handovers = 0;
    }
    for (size_t i = 0; i < co.npipes; i++) {
        pipeline *p = &co.pipes[i];
        if (!p->worker)
            continue;
        int st = atomic_load(&p->worker->state);
        if (st == WORKER_NOT_OWNER || st == WORKER_FAILED || st == WORKER_EXITED) {
            log_debug(p->name, "worker ended (%s)",
                      st == WORKER_NOT_OWNER ? "owned by another relay" : "exited");
            worker_free(p->worker);
            p->worker = NULL;
            reaped++;
        }
    }
    return reaped;
}

/* ---- discovery -------------------------------------------------------------- */

/* Names (as a text[] literal of "f:name"/"r:name") whose advisory lock is
 * held by some session of this database: owned elsewhere (or by us). */
static int foreign_locked(const char *const *names, size_t n, char ***out, size_t *nout,
                          char *err, size_t errlen)
{
    *out = NULL;
    *nout = 0;
    if (n == 0)
        return 0;
    relay_buf arr = {0};
    buf_putc(&arr, '{');
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_putc(&arr, ',');
        buf_putc(&arr, '"');
        for (const char *s = names[i]; *s; s++) {
            if (*s == '"' || *s == '\\')
                buf_putc(&arr, '\\');
            buf_putc(&arr, *s);
        }
        buf_putc(&arr, '"');
    }
    buf_putc(&arr, '}');
    const char *params[2] = {co.opts->group_id, arr.data};
    PGresult *r = pg_query(co.pg,
                           "SELECT n FROM unnest($2::text[]) AS n WHERE EXISTS ("
                           " SELECT 1 FROM pg_catalog.pg_locks l"
                           " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
                           "   AND l.database = (SELECT oid FROM pg_catalog.pg_database"
                           "                     WHERE datname = current_database())"
                           "   AND l.classid = hashtext($1)::oid AND l.objid = hashtext(n)::oid)",
                           2, params, err, errlen);
    buf_free(&arr);
    if (!r)
        return -1;
    *nout = (size_t)PQntuples(r);
    *out = xcalloc(*nout + 1, sizeof **out);
    for (size_t i = 0; i < *nout; i++)
        (*out)[i] = xstrdup(PQgetvalue(r, (int)i, 0));
    PQclear(r);
    return 0;
}

static int in_list(char **list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0)
            return 1;
    return 0;
}

static void start_pipeline(pipeline *p, const char *direction, int enabled, const char *config)
{
    char err[ERRLEN];
    relay_pipeline_cfg cfg;
    if (p->failed_config && strcmp(p->failed_config, config) == 0)
        return; /* already reported; waits for a config change */
    if (pipeline_cfg_load(&cfg, p->name, direction, enabled, config, err, sizeof err) == 0) {
        p->worker = worker_start(&cfg, co.opts, err, sizeof err);
        if (p->worker) {
            free(p->failed_config);
            p->failed_config = NULL;
            stats_clear_rejected(p->name, p->forward);
            log_debug(p->name, "worker started, acquiring ownership");
            return;
        }
        pipeline_cfg_free(&cfg);
    }
    log_error(p->name, "pipeline not started: %s (fix the config with set_relay_*; it is "
              "retried when the config changes)", err);
    free(p->failed_config);
    p->failed_config = xstrdup(config);
    stats_set_rejected(p->name, p->forward, err);
}

/* ---- sharing the pipelines between the relays of a group ------------------- */

/* The group's membership lock: shared, one bigint key (see the top). */
#define MEMBER_KEY_SQL "hashtextextended('pgtrickle-relay group:' || $1::text, 0)"

static int join_group(char *err, size_t errlen)
{
    const char *params[1] = {co.opts->group_id};
    if (pg_exec(co.pg, "SELECT pg_advisory_lock_shared(" MEMBER_KEY_SQL ")", 1, params, err,
                errlen) < 0)
        return -1;
    return notify_group("relay joined", err, errlen); /* the others make room for it */
}

/* Leaving (shutdown): drop out of the count before stopping the workers,
 * so the other relays' fair share covers this relay's pipelines. */
static void leave_group(void)
{
    char err[ERRLEN];
    const char *params[1] = {co.opts->group_id};
    if (co.pg && pg_exec(co.pg, "SELECT pg_advisory_unlock_shared(" MEMBER_KEY_SQL ")", 1, params,
                         err, sizeof err) < 0)
        log_debug(NULL, "leaving the group: %s", err);
}

/* Relays alive in the group (holders of the membership lock), or 1 when it
 * cannot be read (then this relay runs whatever it can, as if alone). */
static int count_members(void)
{
    char err[ERRLEN];
    const char *params[1] = {co.opts->group_id};
    PGresult *r = pg_query(co.pg,
                           "SELECT count(*) FROM pg_catalog.pg_locks l,"
                           " (SELECT " MEMBER_KEY_SQL " AS k) m"
                           " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                           "   AND l.database = (SELECT oid FROM pg_catalog.pg_database"
                           "                     WHERE datname = current_database())"
                           "   AND l.classid = ((m.k >> 32) & 4294967295)::oid"
                           "   AND l.objid = (m.k & 4294967295)::oid",
                           1, params, err, sizeof err);
    if (!r) {
        log_debug(NULL, "cannot count the relays of the group: %s", err);
        return 1;
    }
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n > 0 ? n : 1;
}

/* A config this relay could not load (it waits for a change). */
static int unusable_here(const pipeline *p, const char *config)
{
    return p->failed_config && strcmp(p->failed_config, config) == 0;
}

/* Stop the pipelines this relay runs beyond its fair share, leaving alone
 * those that came back after an earlier handover. */
static void hand_over_surplus(size_t mine, size_t share, int members)
{
    int64_t now = now_mono_ms();
    for (size_t i = co.npipes; i-- > 0 && mine > share;) {
        pipeline *p = &co.pipes[i];
        if (!p->worker || p->keep_until_ms > now)
            continue;
        char why[160];
        snprintf(why, sizeof why, "handing it over: %d relays in group \"%.60s\", "
                 "fair share %zu pipelines", members, co.opts->group_id, share);
        stop_worker(p, why, RELOAD_GRACE_MS);
        p->handed_over_ms = now;
        co.handovers++;
        mine--;
    }
}

/* Read the catalog and start/stop workers. Returns 0, or -1 when the
 * coordinator connection failed. */
static int reconcile(void)
{
    char err[ERRLEN];
    PGresult *r = pg_query(co.pg,
                           "SELECT name, direction, enabled, config::text"
                           " FROM pgtrickle.list_relay_configs()",
                           0, NULL, err, sizeof err);
    if (!r) {
        log_error(NULL, "reading pipeline configs failed: %s", err);
        return pg_broken(co.pg) ? -1 : 0;
    }
    int rows = PQntuples(r);
    for (size_t i = 0; i < co.npipes; i++)
        co.pipes[i].seen = 0;

    /* Candidates for start: enabled, not running here. */
    const char **cand = xcalloc((size_t)rows + 1, sizeof *cand);
    char **cand_keys = xcalloc((size_t)rows + 1, sizeof *cand_keys);
    size_t ncand = 0;

    for (int i = 0; i < rows; i++) {
        const char *name = PQgetvalue(r, i, 0);
        int forward = strcmp(PQgetvalue(r, i, 1), "forward") == 0;
        int enabled = strcmp(PQgetvalue(r, i, 2), "t") == 0;
        const char *config = PQgetvalue(r, i, 3);
        pipeline *p = find_pipe(name, forward);
        if (!p)
            p = add_pipe(name, forward);
        p->seen = 1;
        if (!enabled && p->failed_config) {
            free(p->failed_config);
            p->failed_config = NULL;
            stats_clear_rejected(name, forward);
        }
        if (p->worker) {
            if (!enabled)
                stop_worker(p, "disabled", RELOAD_GRACE_MS);
            else if (strcmp(p->worker->cfg.config_text, config) != 0)
                stop_worker(p, "config changed; restarting with the new config", RELOAD_GRACE_MS);
        }
        if (enabled && !p->worker && !still_stopping(name, forward)) {
            cand[ncand] = name;
            cand_keys[ncand] = xstrdup(name);
            ncand++;
        }
    }
    for (size_t i = 0; i < co.npipes; i++)
        if (!co.pipes[i].seen && co.pipes[i].worker)
            stop_worker(&co.pipes[i], "deleted", RELOAD_GRACE_MS);

    char **locked = NULL;
    size_t nlocked = 0;
    if (foreign_locked(cand, ncand, &locked, &nlocked, err, sizeof err) < 0) {
        log_warn(NULL, "cannot read advisory locks: %s", err);
        nlocked = 0;
    }
    /* This relay's fair share of the pipelines it could run. */
    int members = count_members();
    size_t total = 0, mine = 0, nfree = 0;
    for (int i = 0; i < rows; i++) {
        pipeline *p = find_pipe(PQgetvalue(r, i, 0), strcmp(PQgetvalue(r, i, 1), "forward") == 0);
        int enabled = strcmp(PQgetvalue(r, i, 2), "t") == 0;
        total += enabled && !unusable_here(p, PQgetvalue(r, i, 3));
        mine += p->worker != NULL;
    }
    size_t share = (total + (size_t)members - 1) / (size_t)members;
    stats_set_group(members, (int)share);
    int64_t now = now_mono_ms();
    int64_t orphan_after = ORPHAN_INTERVALS * co.opts->discovery_interval_ms;
    /* Start at a position of our own, so relays starting together do not
     * all race for the same pipelines first. */
    int first = rows > 0 ? (int)((unsigned)getpid() % (unsigned)rows) : 0;
    for (int k = 0; k < rows; k++) {
        int i = (first + k) % rows;
        const char *name = PQgetvalue(r, i, 0);
        int forward = strcmp(PQgetvalue(r, i, 1), "forward") == 0;
        int enabled = strcmp(PQgetvalue(r, i, 2), "t") == 0;
        pipeline *p = find_pipe(name, forward);
        if (!enabled || p->worker || still_stopping(name, forward) || in_list(locked, nlocked, name)) {
            p->free_since_ms = 0;
            /* Another relay took over what we handed over: if it comes back
             * later (that relay left), it was not handed back to us. */
            if (!p->worker && in_list(locked, nlocked, name))
                p->handed_over_ms = 0;
            continue;
        }
        if (unusable_here(p, PQgetvalue(r, i, 3)))
            continue; /* already reported; neither ours nor waiting for us */
        if (!p->free_since_ms)
            p->free_since_ms = now;
        if (mine >= share && now - p->free_since_ms < orphan_after) {
            nfree++; /* another relay below its share takes it */
            continue;
        }
        start_pipeline(p, PQgetvalue(r, i, 1), enabled, PQgetvalue(r, i, 3));
        if (!p->worker)
            continue;
        mine++;
        p->free_since_ms = 0;
        if (p->handed_over_ms && now - p->handed_over_ms < HANDED_BACK_MS) {
            log_info(p->name, "no other relay took the pipeline over: keeping it");
            p->keep_until_ms = now + NO_REHANDOVER_MS;
        }
    }
    /* Pipelines this relay just failed to load no longer count: the share
     * (and what /status and relay_status show) follows what it can run. */
    size_t total_now = 0;
    for (int i = 0; i < rows; i++) {
        pipeline *p = find_pipe(PQgetvalue(r, i, 0), strcmp(PQgetvalue(r, i, 1), "forward") == 0);
        total_now += strcmp(PQgetvalue(r, i, 2), "t") == 0 && !unusable_here(p, PQgetvalue(r, i, 3));
    }
    if (total_now != total) {
        total = total_now;
        share = (total + (size_t)members - 1) / (size_t)members;
        stats_set_group(members, (int)share);
    }
    if (members > 1 && nfree == 0 && nlocked + mine >= total && mine > share)
        hand_over_surplus(mine, share, members);
    for (size_t i = 0; i < nlocked; i++)
        free(locked[i]);
    free(locked);
    for (size_t i = 0; i < ncand; i++)
        free(cand_keys[i]);
    free(cand_keys);
    free(cand);
    PQclear(r);

    /* Forget pipelines that no longer exist and have nothing running. */
    for (size_t i = 0; i < co.npipes;) {
        pipeline *p = &co.pipes[i];
        if (!p->seen && !p->worker) {
            stats_clear_rejected(p->name, p->forward);
            free(p->name);
            free(p->failed_config);
            co.pipes[i] = co.pipes[--co.npipes];
        } else {
            i++;
        }
    }
    return 0;
}

/* ---- relay_status and clean deletes ------------------------------------------ */

/* Write this relay's view of its pipelines to pgtrickle.relay_status
 * (sql/008_relay_status.sql): the pipelines it owns with their state,
 * last error, progress and lag, and those it rejected. `clear` reports
 * nothing (at shutdown: its rows go away). Failures are logged at debug
 * level only: the report is informational. */
static void report_status(int clear)
{
    char err[ERRLEN];
    if (!co.pg)
        return;
    json_t *rows = json_array();
    if (!clear) {
        size_t n;
        relay_stats **snap = stats_snapshot(&n);
        int64_t now = now_wall_ms();
        for (size_t i = 0; i < n; i++) {
            relay_stats *s = snap[i];
            if (atomic_load(&s->running)) {
                const char *why = stats_degraded_reason(s, now);
                char last_error[sizeof s->last_error];
                pthread_mutex_lock(&s->mu);
                memcpy(last_error, s->last_error, sizeof last_error);
                pthread_mutex_unlock(&s->mu);
                last_error[sizeof last_error - 1] = '\0'; /* valid UTF-8 (stats_error) */
                json_array_append_new(
                    rows, json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:I, s:f}", "direction",
                                    s->direction, "pipeline", s->name, "state",
                                    why ? "degraded" : "running", "reason", why, "last_error",
                                    last_error[0] ? last_error : NULL, "last_progress_ms",
                                    (json_int_t)atomic_load(&s->last_progress_ms), "lag_seconds",
                                    (double)atomic_load(&s->lag_ms) / 1000.0));
            }
            stats_unref(s);
        }
        free(snap);
        relay_rejected *rej = stats_rejected_list(&n);
        for (size_t i = 0; i < n; i++)
            json_array_append_new(rows, json_pack("{s:s, s:s, s:s, s:s}", "direction",
                                                  rej[i].forward ? "forward" : "reverse",
                                                  "pipeline", rej[i].name, "state", "rejected",
                                                  "last_error", rej[i].error));
        stats_rejected_free(rej, n);
    }
    char *text = json_dumps(rows, JSON_COMPACT);
    json_decref(rows);
    char host[256] = "relay", pid[32], interval[32];
    gethostname(host, sizeof host - 1);
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    snprintf(interval, sizeof interval, "%lld", (long long)co.opts->discovery_interval_ms);
    const char *params[5] = {co.opts->group_id, host, pid, interval, text ? text : "[]"};
    if (pg_exec(co.pg, "SELECT pgtrickle.relay_report_status($1, $2, $3::int, $4::int, $5::jsonb)",
                5, params, err, sizeof err) < 0)
        log_debug(NULL, "writing relay_status failed: %s", err);
    free(text);
}

/* Drop the replication slots of deleted CDC pipelines that no session uses
 * any more (a slot still in use is retried on the next reconcile, once its
 * worker stopped). */
static void drop_deleted_slots(void)
{
    char err[ERRLEN];
    PGresult *r = pg_query(co.pg, "SELECT slot, pipeline FROM pgtrickle.relay_pending_slot_drops()"
                                  " WHERE NOT active", 0, NULL, err, sizeof err);
    if (!r) {
        log_debug(NULL, "reading slot drop requests failed: %s", err);
        return;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        const char *slot = PQgetvalue(r, i, 0), *pipe = PQgetvalue(r, i, 1);
        int rc = pg_honour_slot_drop(co.pg, slot, err, sizeof err);
        if (rc > 0)
            log_info(pipe, "dropped replication slot %s of the deleted pipeline", slot);
        else if (rc < 0)
            log_warn(pipe, "cannot drop replication slot %s of the deleted pipeline: %s "
                     "(retrying)", slot, err);
    }
    PQclear(r);
}

/* ---- connection ------------------------------------------------------------ */

static void disconnect(void)
{
    if (co.pg) {
        PQfinish(co.pg);
        co.pg = NULL;
    }
}

/* Connect, check the catalog, LISTEN. Returns 0, -1 transient, -2 fatal
 * (catalog missing on the first connection). */
static int connect_coordinator(int first, char *err, size_t errlen)
{
    co.pg = pg_connect(co.opts->postgres_url, "pgtrickle-relay coordinator", err, errlen);
    if (!co.pg)
        return -1;
    if (catalog_check(co.pg, err, errlen) < 0) {
        int broken = pg_broken(co.pg);
        disconnect();
        return broken || !first ? -1 : -2;
    }
    if (pg_exec(co.pg, "LISTEN pgtrickle_relay_config", 0, NULL, err, errlen) < 0 ||
        join_group(err, errlen) < 0) {
        disconnect();
        return -1;
    }
    return 0;
}

static int drain_notifications(void)
{
    int got = 0;
    if (!PQconsumeInput(co.pg))
        return -1;
    PGnotify *n;
    while ((n = PQnotifies(co.pg)) != NULL) {
        log_debug(NULL, "config notification: %s", n->extra);
        PQfreemem(n);
        got = 1;
    }
    return got;
}

/* ---- main loop ---------------------------------------------------------------- */

static void shutdown_all(void)
{
    int64_t deadline = now_mono_ms() + co.opts->shutdown_timeout_ms;
    for (size_t i = 0; i < co.npipes; i++)
        stop_worker(&co.pipes[i], "relay shutting down", co.opts->shutdown_timeout_ms);
    while (co.nstopping) {
        reap();
        if (!co.nstopping)
            break;
        if (now_mono_ms() > deadline + 5000) {
            log_error(NULL, "%zu workers did not stop in time", co.nstopping);
            break;
        }
        poll(NULL, 0, 20);
    }
    /* Join whatever is left; the workers abandon their batches at the
     * deadline, so this does not hang. */
    while (co.nstopping)
        worker_free(co.stopping[--co.nstopping]);
}

int coordinator_run(const relay_options *opts)
{
    char err[ERRLEN];
    memset(&co, 0, sizeof co);
    co.opts = opts;
    atomic_store(&stop_requested, 0);
    if (pipe2(co.sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        log_error(NULL, "pipe: %s", strerror(errno));
        return 1;
    }
    stats_init();
    if (http_start(opts->metrics_addr, opts->metrics_request_timeout_ms, err, sizeof err) < 0) {
        log_error(NULL, "cannot serve metrics on %s: %s", opts->metrics_addr, err);
        return 1;
    }
    log_info(NULL, "pgtrickle-relay %s starting (group \"%s\", metrics on %s)", RELAY_VERSION,
             opts->group_id, opts->metrics_addr);

    relay_backoff bo;
    backoff_init(&bo);
    int first = 1, exit_code = 0, was_connected = 0, dirty_report = 0;
    int64_t next_tick = 0, last_report = 0;
    while (!atomic_load(&stop_requested)) {
        if (!co.pg) {
            int rc = connect_coordinator(first, err, sizeof err);
            if (rc == -2) {
                log_error(NULL, "%s", err);
                exit_code = 1;
                break;
            }
            if (rc < 0) {
                stats_set_database(0, err);
                notify_status();
                if (first || was_connected)
                    log_warn(NULL, "cannot connect to PostgreSQL: %s (retrying)", err);
                was_connected = 0;
                first = 0;
                int64_t d = backoff_next(&bo);
                struct pollfd sp = {.fd = co.sig_pipe[0], .events = POLLIN};
                poll(&sp, 1, (int)d);
                reap();
                continue;
            }
            stats_set_database(1, NULL);
            notify_ready(); /* HTTP listens, catalog checked (once) */
            if (!first)
                log_info(NULL, "coordinator reconnected to PostgreSQL");
            first = 0;
            was_connected = 1;
            backoff_reset(&bo);
            next_tick = 0; /* reload right away */
        }
        int64_t now = now_mono_ms();
        if (now >= next_tick) {
            if (reconcile() < 0) {
                log_warn(NULL, "coordinator lost its PostgreSQL connection");
                stats_set_database(0, "connection lost; reconnecting");
                disconnect();
                continue;
            }
            drop_deleted_slots();
            next_tick = now_mono_ms() + opts->discovery_interval_ms;
        }
        /* relay_status: on every discovery interval, and at most once a
         * second after changes */
        int64_t since = now_mono_ms() - last_report;
        if (last_report == 0 || since >= opts->discovery_interval_ms ||
            (dirty_report && since >= 1000)) {
            report_status(0);
            last_report = now_mono_ms();
            dirty_report = 0;
        }
        /* Notifications that arrived while reconcile's queries ran were read
         * by libpq with the query results: they wait in its queue, and the
         * socket will not wake the poll below for them. Take them now, or a
         * burst of changes would wait for the next discovery tick. */
        int queued = drain_notifications();
        if (queued < 0 || pg_broken(co.pg)) {
            log_warn(NULL, "coordinator lost its PostgreSQL connection");
            disconnect();
            continue;
        }
        if (queued) {
            next_tick = 0;
            continue;
        }
        int timeout = (int)(next_tick - now_mono_ms());
        if (co.nstopping && timeout > 50)
            timeout = 50;
        if (dirty_report && timeout > 1000 - (now_mono_ms() - last_report))
            timeout = (int)(1000 - (now_mono_ms() - last_report));
        if (timeout < 0)
            timeout = 0;
        notify_status();
        struct pollfd p[2] = {{.fd = co.sig_pipe[0], .events = POLLIN},
                              {.fd = PQsocket(co.pg), .events = POLLIN}};
        poll(p, 2, timeout);
        if (atomic_load(&stop_requested))
            break;
        int dirty = 0;
        if (p[1].revents) {
            int got = drain_notifications();
            if (got < 0 || pg_broken(co.pg)) {
                log_warn(NULL, "coordinator lost its PostgreSQL connection");
                stats_set_database(0, "connection lost; reconnecting");
                disconnect();
                continue;
            }
            dirty = got;
        }
        if (reap())
            dirty = 1; /* a pipeline may be startable again */
        if (dirty)
            next_tick = 0;
        if (dirty)
            dirty_report = 1;
    }

    notify_stopping();
    if (atomic_load(&stop_requested))
        log_info(NULL, "shutting down: finishing in-flight batches (timeout %lld ms)",
                 (long long)opts->shutdown_timeout_ms);
    leave_group();
    shutdown_all();
    report_status(1);
    if (notify_group("relay left", err, sizeof err) < 0) /* take its pipelines now */
        log_debug(NULL, "departure notification failed: %s", err);
    for (size_t i = 0; i < co.npipes; i++) {
        free(co.pipes[i].name);
        free(co.pipes[i].failed_config);
    }
    free(co.pipes);
    free(co.stopping);
    disconnect();
    http_stop();
    close(co.sig_pipe[0]);
    close(co.sig_pipe[1]);
    co.sig_pipe[0] = co.sig_pipe[1] = -1;
    if (exit_code == 0)
        log_info(NULL, "stopped");
    return exit_code;
}
