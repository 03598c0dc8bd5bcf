/*
 * secrets.h - ${env:NAME} and ${file:/path} references in config strings
 * (SPEC section 4).
 *
 * Every string value anywhere in a pipeline's JSON may contain references;
 * they are substituted in place. NAME must match [A-Za-z_][A-Za-z0-9_]*; a
 * file's trailing newline is stripped. Error messages name the reference
 * (the variable name or path), never a value.
 */
#ifndef RELAY_SECRETS_H
#define RELAY_SECRETS_H

#include <jansson.h>
#include <stddef.h>

/* Substitute references in one string. Returns a malloc'd string (caller
 * frees), or NULL with err set ("env var X is not set", "cannot read file
 * /p: ..."). */
char *secrets_expand(const char *s, char *err, size_t errlen);

/* Substitute references in every string of `root`, in place.
 * Returns 0, or -1 with err prefixed by the JSON path of the value. */
int secrets_resolve(json_t *root, char *err, size_t errlen);

#endif
