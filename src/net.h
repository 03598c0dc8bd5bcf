/*
 * net.h - listening TCP sockets for the relay's HTTP servers (the metrics
 * endpoints and the webhook receiver).
 */
#ifndef RELAY_NET_H
#define RELAY_NET_H

#include <stddef.h>

/* Split "host:port", ":port" or "[v6]:port" into host (possibly empty:
 * every address) and a numeric port. A bare IPv6 address must be
 * bracketed. Returns 0, or -1 when the address has another form. */
int net_split_addr(const char *addr, char *host, size_t hostlen, char *port, size_t portlen);

/* Resolve `addr` (net_split_addr forms) and return a non-blocking,
 * close-on-exec socket bound to it and listening with `backlog`; *family is
 * its address family. On failure returns -1 with err = "<what> <addr>:
 * <reason>" (e.g. "metrics address 0.0.0.0:9090: Address already in use"). */
int net_listen(const char *addr, int backlog, int *family, const char *what, char *err,
               size_t errlen);

#endif
