/*
 * hostpath.c - the --allow-path list and the check of paths a config names
 * (design in hostpath.h).
 *
 * resolve() turns a path into an absolute one without symlinks: the longest
 * prefix that exists goes through realpath(3), the rest (which cannot be a
 * symlink, since it does not exist) is appended as it is, refusing "." and
 * ".." components there. A path is allowed when its resolved form equals an
 * allowed entry or continues it after a '/'.
 */
#include "hostpath.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

static char **allowed;
static size_t nallowed;
static relay_buf list_text;

void hostpath_reset(void)
{
    for (size_t i = 0; i < nallowed; i++)
        free(allowed[i]);
    free(allowed);
    allowed = NULL;
    nallowed = 0;
    buf_free(&list_text);
}

int hostpath_allow(const char *path, char *err, size_t errlen)
{
    char real[PATH_MAX];
    if (!path || path[0] != '/') {
        snprintf(err, errlen, "--allow-path: expected an absolute path, got \"%s\"", path ? path : "");
        return -1;
    }
    if (!realpath(path, real)) {
        snprintf(err, errlen, "--allow-path: %s: %s", path, strerror(errno));
        return -1;
    }
    allowed = xrealloc(allowed, (nallowed + 1) * sizeof *allowed);
    allowed[nallowed++] = xstrdup(real);
    if (list_text.len)
        buf_puts(&list_text, ", ");
    buf_puts(&list_text, real);
    return 0;
}

const char *hostpath_list(void)
{
    return list_text.data ? list_text.data : "";
}

/* Resolve `path` into out[PATH_MAX]. Returns 0, or -1 with *why. */
static int resolve(const char *path, char *out, const char **why)
{
    if (path[0] != '/') {
        *why = "not an absolute path";
        return -1;
    }
    size_t n = strlen(path);
    if (n >= PATH_MAX) {
        *why = "too long";
        return -1;
    }
    char prefix[PATH_MAX];
    memcpy(prefix, path, n + 1);
    /* Shorten to the longest existing prefix (at a '/'). */
    size_t cut = n;
    for (;;) {
        if (realpath(prefix, out))
            break;
        if (errno != ENOENT && errno != ENOTDIR) {
            *why = strerror(errno);
            return -1;
        }
        char *slash = strrchr(prefix, '/');
        if (!slash || slash == prefix) {
            strcpy(out, "/");
            cut = 0;
            break;
        }
        *slash = '\0';
        cut = (size_t)(slash - prefix);
    }
    /* Append the part that does not exist, component by component. */
    const char *rest = path + cut;
    while (*rest) {
        while (*rest == '/')
            rest++;
        if (!*rest)
            break;
        const char *end = strchr(rest, '/');
        size_t len = end ? (size_t)(end - rest) : strlen(rest);
        if ((len == 1 && rest[0] == '.') || (len == 2 && rest[0] == '.' && rest[1] == '.')) {
            *why = "\".\" or \"..\" in a part that does not exist";
            return -1;
        }
        size_t o = strlen(out);
        if (o + 1 + len >= PATH_MAX) {
            *why = "too long";
            return -1;
        }
        if (o > 1)
            out[o++] = '/';
        memcpy(out + o, rest, len);
        out[o + len] = '\0';
        rest += len;
    }
    return 0;
}

static int under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    if (strcmp(dir, "/") == 0)
        return 1;
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

int hostpath_check(const char *key, const char *path, char *err, size_t errlen)
{
    char real[PATH_MAX];
    const char *why = NULL;
    if (!path || resolve(path, real, &why) < 0) {
        snprintf(err, errlen, "%s: %s: %s", key, path ? path : "(null)", why ? why : "invalid");
        return -1;
    }
    for (size_t i = 0; i < nallowed; i++)
        if (under(real, allowed[i]))
            return 0;
    if (nallowed == 0)
        snprintf(err, errlen, "%s: %s is not a path this relay may use: no --allow-path was given "
                 "(start the relay with --allow-path DIR to let pipeline configs use files under DIR)",
                 key, path);
    else
        snprintf(err, errlen, "%s: %s is outside the paths this relay may use (--allow-path %s)",
                 key, path, hostpath_list());
    return -1;
}
