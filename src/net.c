/*
 * net.c - listening sockets (see net.h).
 *
 * The relay opens its listening sockets itself and hands them to
 * libmicrohttpd (MHD_OPTION_LISTEN_SOCKET), so a bad address or a port in
 * use is reported with the real reason instead of a generic start failure.
 */
#include "net.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int net_split_addr(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *h = addr, *colon;
    size_t hlen;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':')
            return -1;
        h = addr + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || memchr(addr, ':', (size_t)(colon - addr)))
            return -1; /* bare IPv6 must be bracketed */
        hlen = (size_t)(colon - addr);
    }
    const char *p = colon + 1;
    size_t plen = strlen(p);
    if (hlen >= hostlen || plen == 0 || plen >= portlen || strspn(p, "0123456789") != plen)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, p, plen + 1);
    return 0;
}

int net_listen(const char *addr, int backlog, int *family, const char *what, char *err,
               size_t errlen)
{
    char host[256], port[16];
    if (net_split_addr(addr, host, sizeof host, port, sizeof port) < 0) {
        snprintf(err, errlen, "%s %s: expected host:port or [ipv6]:port", what, addr);
        return -1;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s %s: %s", what, addr, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    res->ai_protocol);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        snprintf(err, errlen, "%s %s: %s", what, addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    *family = res->ai_family;
    freeaddrinfo(res);
    return fd;
}
