/*
 * registry.h - the table of compiled-in sources and sinks, by type name.
 * Which backends exist is decided at build time by the meson feature options.
 */
#ifndef RELAY_REGISTRY_H
#define RELAY_REGISTRY_H

#include "sink/sink.h"
#include "source/source.h"

/* Look up a source/sink by its config type name; NULL when not compiled in
 * or unknown. */
const relay_source_ops *registry_source(const char *type);
const relay_sink_ops *registry_sink(const char *type);

/* Comma-separated list of known type names, for error messages. Static. */
const char *registry_source_names(void);
const char *registry_sink_names(void);

#endif
