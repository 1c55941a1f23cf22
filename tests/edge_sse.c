/* A stand-in for a model server's streamed chat completion, cheap enough that what it measures is
 * the proxy in front of it (tests/edge_bench.py compiles it with `cc -O2 -pthread`).
 *
 *   edge_sse PORT [INTERVAL_US]
 *
 * On 127.0.0.1:PORT, every POST is answered 200 with a chunked `text/event-stream`: as many
 * chat.completion.chunk events as the body's "max_tokens" (16 when absent), one write each,
 * INTERVAL_US apart (0: back to back), then `data: [DONE]`. Connections are kept alive; one thread
 * each. Nothing is validated: it serves a benchmark, not clients. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static long interval_us;

static const char EVENT[] =
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" token\"}}],"
    "\"created\":0,\"id\":\"chatcmpl-bench\",\"model\":\"bench\",\"system_fingerprint\":\"b0\","
    "\"object\":\"chat.completion.chunk\"}\n\n";
static const char DONE[] = "data: [DONE]\n\n";
static const char HEAD[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    "Transfer-Encoding: chunked\r\n\r\n";

static int send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int send_chunk(int fd, const char *data, size_t n) {
  char buf[1024];
  int len = snprintf(buf, sizeof buf, "%zx\r\n%.*s\r\n", n, (int)n, data);
  return send_all(fd, buf, (size_t)len);
}

static void *serve(void *arg) {
  int fd = (int)(long)arg, one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buf[65536];
  size_t have = 0;
  for (;;) {
    char *end;
    while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {  /* the request's head */
      if (have == sizeof buf) goto out;
      ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
      if (r <= 0) goto out;
      have += (size_t)r;
    }
    size_t head = (size_t)(end + 4 - buf), body = 0;
    for (char *line = buf; line < end; line = strstr(line, "\r\n") + 2)
      if (!strncasecmp(line, "content-length:", 15)) body = strtoul(line + 15, NULL, 10);
    if (head + body > sizeof buf) goto out;
    while (have < head + body) {  /* and its body */
      ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
      if (r <= 0) goto out;
      have += (size_t)r;
    }
    long tokens = 16;
    char *mt = memmem(buf + head, body, "\"max_tokens\":", 13);
    if (mt) tokens = strtol(mt + 13, NULL, 10);
    if (send_all(fd, HEAD, sizeof HEAD - 1)) goto out;
    for (long i = 0; i < tokens; i++) {
      if (send_chunk(fd, EVENT, sizeof EVENT - 1)) goto out;
      if (interval_us) usleep((useconds_t)interval_us);
    }
    if (send_chunk(fd, DONE, sizeof DONE - 1) || send_all(fd, "0\r\n\r\n", 5)) goto out;
    memmove(buf, buf + head + body, have - head - body);
    have -= head + body;
  }
out:
  close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [INTERVAL_US]\n", argv[0]);
    return 2;
  }
  interval_us = argc > 2 ? atol(argv[2]) : 0;
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 256)) {
    perror("listen");
    return 1;
  }
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    pthread_t t;
    if (pthread_create(&t, NULL, serve, (void *)(long)c)) {
      close(c);
      continue;
    }
    pthread_detach(t);
  }
}
