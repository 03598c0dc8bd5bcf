/*
 * main.c - command line entry point.
 *
 *   pgtrickle-relay [options]        run the daemon (coordinator + workers)
 *   pgtrickle-relay init [options]   install/upgrade the SQL catalog, exit
 *
 * Exit codes: 0 success / clean shutdown, 1 runtime failure (e.g. missing
 * catalog, database unreachable for init), 2 bad command line.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "catalog.h"
#include "config.h"
#include "coordinator.h"
#include "log.h"
#include "pg.h"
#include "version.h"

static void on_signal(int sig)
{
    (void)sig;
    coordinator_request_stop();
}

static int run_init(const relay_options *o)
{
    char err[1024];
    PGconn *c = pg_connect(o->postgres_url, "pgtrickle-relay init", err, sizeof err);
    if (!c) {
        log_error(NULL, "cannot connect to PostgreSQL: %s", err);
        return 1;
    }
    int rc = catalog_install(c, err, sizeof err);
    PQfinish(c);
    if (rc < 0) {
        log_error(NULL, "catalog installation failed: %s", err);
        return 1;
    }
    log_info(NULL, "pgtrickle relay catalog version %d installed", RELAY_CATALOG_VERSION);
    return 0;
}

int main(int argc, char **argv)
{
    relay_options opts;
    relay_command cmd;
    char err[1024];
    if (options_parse(argc, argv, &opts, &cmd, err, sizeof err) < 0) {
        fprintf(stderr, "pgtrickle-relay: %s\n", err);
        options_free(&opts);
        return 2;
    }
    if (cmd == CMD_HELP) {
        fputs(options_usage(), stdout);
        options_free(&opts);
        return 0;
    }
    if (cmd == CMD_VERSION) {
        version_print(stdout);
        options_free(&opts);
        return 0;
    }
    log_set_json(opts.log_json);
    log_set_level((log_level)opts.log_level);

    signal(SIGPIPE, SIG_IGN);
    int rc;
    if (cmd == CMD_INIT) {
        rc = run_init(&opts);
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        rc = coordinator_run(&opts);
    }
    options_free(&opts);
    return rc;
}
