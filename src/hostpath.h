/*
 * hostpath.h - which files of the relay's host a pipeline config may name.
 *
 * Pipelines are configured in SQL, by whoever holds pgtrickle_relay_admin;
 * the daemon often runs with more rights on its host than that person. A
 * config must not give its writer more of the host than the operator
 * allowed on the command line: every path a config names -- a file sink's
 * output, a JSONL source's input, a ${file:} secret, TLS and credential
 * files -- must lie under one of the --allow-path entries (a directory, or
 * one file). With no --allow-path, no config may name a host path at all.
 *
 * A path is resolved before the check: symlinks and ".." of the part that
 * exists are resolved with realpath(3), and the part that does not exist
 * yet (an output file, a directory the sink would fail to open anyway) may
 * not contain "..". So a symlink inside an allowed directory that points
 * outside it is refused, as is "allowed/../etc/passwd".
 *
 * The list is set once at start (main.c), before any worker runs, and only
 * read afterwards.
 */
#ifndef RELAY_HOSTPATH_H
#define RELAY_HOSTPATH_H

#include <stddef.h>

/* Add an allowed directory or file (resolved with realpath: it must exist).
 * Returns 0, or -1 with err naming the path. */
int hostpath_allow(const char *path, char *err, size_t errlen);

/* Forget every allowed path (tests). */
void hostpath_reset(void);

/* Check a path a config names: `key` is the config key for messages
 * ("sink.output", "${file:...} in sink.token"). Returns 0 when it lies under
 * an allowed entry, or -1 with err ("<key>: <path> is outside the paths this
 * relay may use (start it with --allow-path ...)"). */
int hostpath_check(const char *key, const char *path, char *err, size_t errlen);

/* The allowed entries as one text for messages and /status ("" when none);
 * static storage, valid until the next hostpath_allow/reset. */
const char *hostpath_list(void);

#endif
