/*
 * version.h - what `pgtrickle-relay --version` prints: the relay's version,
 * the catalog version it installs, how it was built, the sources and sinks
 * compiled in, and the version of every library it runs with, as one would
 * paste into a bug report.
 */
#ifndef RELAY_VERSION_H
#define RELAY_VERSION_H

#include <stdio.h>

/* Write the version report to out (several lines, see version.c). Library
 * versions are read at run time from the libraries actually loaded where
 * the library has a function for it, else the build-time version. */
void version_print(FILE *out);

#endif
