/*
 * metrics_http — the plain-HTTP endpoint of --listen-metrics-urls:
 * GET /metrics (Prometheus text: batching and raft figures) and GET /health.
 * One thread, one connection at a time: it is for scrapers and tests.
 */
#ifndef BALLAST_SERVER_METRICS_HTTP_H
#define BALLAST_SERVER_METRICS_HTTP_H

#include "ballast.h"

typedef struct metrics_http metrics_http;

/* Listens on host:port; returns NULL and sets *errmsg (malloc'd) on failure. */
metrics_http *metrics_http_start(ballast_server *b, const char *host, int port, char **errmsg);
void metrics_http_stop(metrics_http *m);

/* Writes the /metrics body into buf (at most cap bytes); returns its length. */
size_t metrics_render(ballast_server *b, char *buf, size_t cap);

#endif
