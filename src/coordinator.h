/*
 * coordinator.h - discovers pipelines and starts/stops their workers.
 *
 * The coordinator keeps one PostgreSQL connection that LISTENs on
 * pgtrickle_relay_config. It re-reads the pipeline list (through the
 * SECURITY DEFINER function list_relay_configs()) on every notification and
 * every discovery interval, then reconciles: starts a worker for each enabled
 * pipeline that no relay of this group owns, stops workers of disabled or
 * deleted pipelines, and restarts a worker whose config changed.
 */
#ifndef RELAY_COORDINATOR_H
#define RELAY_COORDINATOR_H

#include "config.h"

/* Run until a stop is requested (coordinator_request_stop, e.g. from a
 * signal handler), then stop every worker within the shutdown timeout.
 * Returns the process exit code: 0 after a clean shutdown, 1 when the
 * catalog is missing or shutdown timed out. */
int coordinator_run(const relay_options *opts);

/* Async-signal-safe: ask coordinator_run to shut down. */
void coordinator_request_stop(void);

#endif
