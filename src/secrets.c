/*
 * secrets.c - ${env:NAME} and ${file:/path} substitution in config strings.
 *
 * References are resolved when a pipeline is loaded (and on every reload),
 * so a rotated secret is picked up by the next config change or restart.
 * Resolution failures name the reference, never any resolved value, and
 * disable only the pipeline that holds them. A ${file:} path must lie under
 * an --allow-path entry (hostpath.h): a config cannot read arbitrary files
 * of the relay's host into a token or a header.
 */
#include "secrets.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "hostpath.h"

#define SECRET_FILE_MAX (1 << 20)

static int valid_env_name(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return 0;
    return 1;
}

static int read_secret_file(const char *path, relay_buf *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read secret file %s: %s", path, strerror(errno));
        return -1;
    }
    char tmp[4096];
    size_t n, total = 0;
    size_t start = out->len;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) {
        total += n;
        if (total > SECRET_FILE_MAX) {
            fclose(f);
            snprintf(err, errlen, "secret file %s is larger than 1 MiB", path);
            return -1;
        }
        buf_append(out, tmp, n);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "cannot read secret file %s", path);
        return -1;
    }
    /* Strip one trailing newline (and a CR before it). */
    if (out->len > start && out->data[out->len - 1] == '\n')
        out->len--;
    if (out->len > start && out->data[out->len - 1] == '\r')
        out->len--;
    if (out->data)
        out->data[out->len] = '\0';
    return 0;
}

char *secrets_expand(const char *s, char *err, size_t errlen)
{
    relay_buf out = {0};
    const char *p = s;
    for (;;) {
        const char *ref = strstr(p, "${");
        if (!ref) {
            buf_puts(&out, p);
            break;
        }
        buf_append(&out, p, (size_t)(ref - p));
        const char *end = strchr(ref, '}');
        int is_env = strncmp(ref + 2, "env:", 4) == 0;
        int is_file = strncmp(ref + 2, "file:", 5) == 0;
        if (!end || (!is_env && !is_file)) {
            /* Not a reference we know: keep the text as it is. */
            buf_append(&out, ref, 2);
            p = ref + 2;
            continue;
        }
        const char *arg = ref + (is_env ? 6 : 7);
        size_t n = (size_t)(end - arg);
        if (is_env) {
            if (!valid_env_name(arg, n)) {
                snprintf(err, errlen, "invalid environment variable name in ${env:%.*s}", (int)n, arg);
                buf_free(&out);
                return NULL;
            }
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)n, arg);
            const char *v = getenv(name);
            if (!v) {
                snprintf(err, errlen, "secret not found: env var %s is not set", name);
                buf_free(&out);
                return NULL;
            }
            buf_puts(&out, v);
        } else {
            char path[4096];
            if (n == 0 || n >= sizeof path) {
                snprintf(err, errlen, "invalid path in ${file:...}");
                buf_free(&out);
                return NULL;
            }
            snprintf(path, sizeof path, "%.*s", (int)n, arg);
            char what[4200];
            snprintf(what, sizeof what, "${file:%s}", path);
            if (hostpath_check(what, path, err, errlen) < 0 ||
                read_secret_file(path, &out, err, errlen) < 0) {
                buf_free(&out);
                return NULL;
            }
        }
        p = end + 1;
    }
    return buf_steal(&out);
}

static int resolve(json_t *v, relay_buf *path, char *err, size_t errlen)
{
    size_t mark = path->len;
    int rc = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        void *tmp;
        json_object_foreach_safe(v, tmp, key, child) {
            buf_printf(path, ".%s", key);
            rc = resolve(child, path, err, errlen);
            path->len = mark;
            path->data[mark] = '\0';
            if (rc < 0)
                return rc;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) {
            buf_printf(path, "[%zu]", i);
            rc = resolve(child, path, err, errlen);
            path->len = mark;
            path->data[mark] = '\0';
            if (rc < 0)
                return rc;
        }
    } else if (json_is_string(v) && strstr(json_string_value(v), "${")) {
        char inner[512];
        char *s = secrets_expand(json_string_value(v), inner, sizeof inner);
        if (!s) {
            snprintf(err, errlen, "%s: %s", path->data, inner);
            return -1;
        }
        json_string_set(v, s);
        free(s);
    }
    return 0;
}

int secrets_resolve(json_t *root, char *err, size_t errlen)
{
    relay_buf path = {0};
    buf_puts(&path, "config");
    int rc = resolve(root, &path, err, errlen);
    buf_free(&path);
    return rc;
}
