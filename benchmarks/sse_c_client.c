/* The latency benchmark's SSE clients in C: many connections in one process, epoll, no HTTP library.
 *
 * Why: on two cores the Python clients of fanout.py part 2 take ~0.8 us of CPU per event (3.9 CPU-s
 * of a 5 s run), so the load generator competes with the gateway it measures. This client reads the
 * same bytes the way benchmarks/sse_wire.py does (raw body, chunked framing left in; see its
 * docstring for why that is safe) at a fraction of the cost.
 *
 * usage: sse_c_client HOST PORT PATH CONNS TIMED TIMEOUT_S OUT
 *   CONNS connections GET PATH; the first TIMED of them time every event: for each complete event,
 *   receive time (CLOCK_REALTIME, once per read) minus its "t_ns" field, and its id's millisecond
 *   part minus t_ns (publish -> stored). Pairs of doubles (ms) go to OUT, binary.
 * stdout: one JSON object: {"events": [per connection], "ended": n, "cpu_s": x}
 * Exit status 1 on any connection error or timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BYTES (256 * 1024)
static const char ID_MARK[] = "\nid: ";
static const char END_MARK[] = "\nevent: end\n";
static const char STAMP[] = "\"t_ns\":";

typedef struct {
    int fd;
    int head_done;   /* response headers skipped */
    int ended;
    int timed;
    long events;
    char carry[16];  /* last bytes of the previous read, for marks across reads */
    size_t carry_len;
    char *partial;   /* timed: the incomplete last event */
    size_t partial_len, partial_cap;
    char head[4096];
    size_t head_len;
} Conn;

static double *samples;
static size_t n_samples, cap_samples;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void add_sample(double latency_ms, double stored_ms) {
    if (n_samples + 2 > cap_samples) {
        cap_samples = cap_samples ? cap_samples * 2 : 1 << 16;
        samples = realloc(samples, cap_samples * sizeof(double));
        if (!samples) die("realloc");
    }
    samples[n_samples++] = latency_ms;
    samples[n_samples++] = stored_ms;
}

/* Count event frames and look for the end event in carry + data. The carry is shorter than the end
 * mark, and an id mark is counted only where it ends in the new data, so nothing counts twice. */
static void count(Conn *c, const char *data, size_t len) {
    size_t total = c->carry_len + len;
    char *buf = malloc(total + 1);
    if (!buf) die("malloc");
    memcpy(buf, c->carry, c->carry_len);
    memcpy(buf + c->carry_len, data, len);
    const char *p = buf, *end = buf + total;
    while ((p = memmem(p, (size_t)(end - p), ID_MARK, sizeof ID_MARK - 1)) != NULL) {
        if ((size_t)(p - buf) + sizeof ID_MARK - 1 > c->carry_len) c->events++;
        p += sizeof ID_MARK - 1;
    }
    if (memmem(buf, total, END_MARK, sizeof END_MARK - 1)) c->ended = 1;
    size_t keep = total < sizeof END_MARK - 2 ? total : sizeof END_MARK - 2;
    memcpy(c->carry, end - keep, keep);
    c->carry_len = keep;
    free(buf);
}

/* Timed connections: every complete event's id ms and t_ns against the read's receive time. */
static void measure(Conn *c, const char *data, size_t len, long long t_ns_now) {
    if (c->partial_len + len > c->partial_cap) {
        c->partial_cap = (c->partial_len + len) * 2;
        c->partial = realloc(c->partial, c->partial_cap);
        if (!c->partial) die("realloc");
    }
    memcpy(c->partial + c->partial_len, data, len);
    c->partial_len += len;
    char *buf = c->partial, *cut = NULL;
    for (char *q = buf + c->partial_len - 1; q > buf; q--) {
        if (q[0] == '\n' && q[-1] == '\n') {
            cut = q;  /* the second newline stays: the next event starts with "\nid: " like all */
            break;
        }
    }
    if (!cut) return;
    char *p = buf;
    while ((p = memmem(p, (size_t)(cut - p), ID_MARK, sizeof ID_MARK - 1)) != NULL) {
        p += sizeof ID_MARK - 1;
        long long id_ms = strtoll(p, NULL, 10);
        char *eol = memchr(p, '\n', (size_t)(cut - p));           /* end of the id line */
        if (!eol) break;
        char *line_end = memchr(eol + 1, '\n', (size_t)(cut - eol - 1)); /* end of the data line */
        if (!line_end) break;
        char *stamp = memmem(eol, (size_t)(line_end - eol), STAMP, sizeof STAMP - 1);
        if (stamp) {
            long long t_ns = strtoll(stamp + sizeof STAMP - 1, NULL, 10);
            add_sample((double)(t_ns_now - t_ns) / 1e6, (double)id_ms - (double)t_ns / 1e6);
        }
        p = line_end;
    }
    size_t rest = c->partial_len - (size_t)(cut - buf);
    memmove(buf, cut, rest);
    c->partial_len = rest;
}

static void feed(Conn *c, const char *data, size_t len, long long t) {
    if (!c->head_done) {
        size_t take = len < sizeof c->head - c->head_len ? len : sizeof c->head - c->head_len;
        memcpy(c->head + c->head_len, data, take);
        c->head_len += take;
        char *sep = memmem(c->head, c->head_len, "\r\n\r\n", 4);
        if (!sep) {
            if (c->head_len == sizeof c->head) {
                fprintf(stderr, "response headers too long\n");
                exit(1);
            }
            return;
        }
        if (strncmp(c->head, "HTTP/1.1 200", 12) != 0 && strncmp(c->head, "HTTP/1.0 200", 12) != 0) {
            fprintf(stderr, "unexpected response: %.80s\n", c->head);
            exit(1);
        }
        c->head_done = 1;
        size_t consumed_before = c->head_len - take;  /* header bytes from earlier reads */
        size_t body_offset = (size_t)(sep + 4 - c->head) - consumed_before;
        /* the body starts with a "\n" of our own, as in sse_wire: a first event looks like every other */
        count(c, "\n", 1);
        if (c->timed) measure(c, "\n", 1, t);
        data += body_offset;
        len -= body_offset;
        if (len == 0) return;
    }
    count(c, data, len);
    if (c->timed) measure(c, data, len, t);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT PATH CONNS TIMED TIMEOUT_S OUT\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argv[3], *out = argv[7];
    int port = atoi(argv[2]), n = atoi(argv[4]), timed = atoi(argv[5]);
    double timeout_s = atof(argv[6]);
    Conn *conns = calloc((size_t)n, sizeof(Conn));
    int ep = epoll_create1(0);
    if (!conns || ep < 0) die("setup");
    char request[1024];
    int req_len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, host);
    for (int i = 0; i < n; i++) {
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, host, &addr.sin_addr);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (write(fd, request, (size_t)req_len) != req_len) die("write");
        conns[i].fd = fd;
        conns[i].timed = i < timed;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
    printf("{\"connected\": %d}\n", n);
    fflush(stdout);
    char *buf = malloc(READ_BYTES);
    struct epoll_event events[64];
    int ended = 0;
    long long deadline = now_ns() + (long long)(timeout_s * 1e9);
    while (ended < n) {
        int k = epoll_wait(ep, events, 64, 1000);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        if (now_ns() > deadline) {
            fprintf(stderr, "timeout: %d of %d connections ended\n", ended, n);
            return 1;
        }
        for (int j = 0; j < k; j++) {
            Conn *c = events[j].data.ptr;
            ssize_t got = read(c->fd, buf, READ_BYTES);
            if (got <= 0) {
                if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
                fprintf(stderr, "connection %ld closed before its end event\n", (long)(c - conns));
                return 1;
            }
            feed(c, buf, (size_t)got, now_ns());
            if (c->ended) {
                ended++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
            }
        }
    }
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(samples, sizeof(double), n_samples, f) != n_samples || fclose(f) != 0) die("write samples");
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"ended\": %d, \"cpu_s\": %.3f, \"events\": [", ended, cpu);
    for (int i = 0; i < n; i++) printf("%s%ld", i ? ", " : "", conns[i].events);
    printf("]}\n");
    return 0;
}
