/*
 * pg_inbox.h - what the inbox writer (src/sink/pg_inbox.c) shares with the
 * benchmark's database-floor client (tests/tools/inbox_floor.c), so that the
 * floor runs the very statement the relay runs.
 */
#ifndef RELAY_PG_INBOX_H
#define RELAY_PG_INBOX_H

/* The INSERT that writes one batch into the inbox table qschema.qtable
 * (both already quoted identifiers). Parameters: $1..$6 the arrays
 * text[] event_id, text[] subject (event_type fallback), text[] source,
 * text[] aggregate_id, text[] trace_id, jsonb[] payload; $7..$10 the payload
 * fields for event_type, source, aggregate_id and trace_id (NULL: none).
 * ON CONFLICT (event_id) DO NOTHING. Returns a malloc'd string. */
char *inbox_insert_sql(const char *qschema, const char *qtable);

#endif
