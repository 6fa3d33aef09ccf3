/* The scale scenario's load client (bench/scale.py builds it with the C compiler at run time).

   One process holds many SSE streams on one epoll loop, each GET /s/<uid> of one of the targets, from
   one source address of 127.0.0.0/8 (a source address of its own gives every process its own
   ephemeral ports). What a stream reads is decoded (HTTP/1.1 head, chunked body) and parsed as SSE:
   `id:` (the Last-Event-ID a reconnect sends, committed when its event ends, as the standard says),
   `event:`, `data:`, `retry:`, comments (pings). The data of a timed event is
   "<publish time, us since the epoch> <b|u> <seq> ...": b for the broadcast channel, u for the
   stream's own user's channel, each numbered 1, 2, ... by the publisher. Per stream and channel the
   client checks that each number is the last one + 1 (else a duplicate, or a gap of so many events),
   and puts the delivery latency (receive time less publish time, one clock: one machine) in a
   histogram of 100 us buckets. A stream that ends (a drain's farewell, a reset) reconnects after its
   last `retry:` (3 s when it had none), to another target than the one that ended it, with
   Last-Event-ID; a refused connect tries the next target at once, as a load balancer would.

   Commands on stdin, one per line; each answer is one JSON line on stdout:
     open            open every stream (at most --concurrency being admitted at once); answers when
                     every one is admitted (its first event, the hub's id-only item, has arrived)
     stats           counters, its own CPU time, the latency histograms since the last reset
     reset           zero the window's counters and histograms
     dump PATH       one line per stream: uid first_b last_b n_b first_u last_u n_u dups missing gaps
                     reconnects
     quit            close every stream and exit
   Usage: scale_client --targets 127.0.0.1:P1,127.0.0.1:P2 --src 127.0.0.2 --uids FIRST:COUNT
                       [--concurrency 256] [--default-retry 3000]
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_TARGETS 64
#define LINE_MAX_KEPT 192 /* bytes of a line kept: longer lines are cut (only a gap event's data is) */
#define ID_MAX 120
#define BUCKET_US 100
#define BUCKETS 600000 /* 60 s of 100 us */
#define STDIN_TAG UINT64_MAX
#define ADMIT_TIMEOUT_MS 60000

enum { S_IDLE, S_CONNECTING, S_HEAD, S_BODY, S_WAIT };
enum { C_SIZE, C_SIZE_EXT, C_DATA, C_DATA_CR, C_DATA_LF, C_TRAILER, C_DONE };

typedef struct {
    int fd;
    int uid;
    int target;
    int retry_ms;
    uint8_t state, chunked, cstate, admitted, ever_admitted, event_gap, has_data, line_cut;
    uint32_t chunk_left;
    int64_t closed_at_us; /* when it ended, for the time back */
    int64_t started_at_us; /* when its connect began (admission timeout) */
    int64_t wake_at_us; /* S_WAIT: when it reconnects */
    int status;
    uint16_t line_len;
    uint8_t id_len, pend_len, has_pend;
    int64_t first_b, last_b, n_b, first_u, last_u, n_u;
    int64_t dups, missing, gaps, reconnects;
    char id[ID_MAX];
    char pend[ID_MAX];
    char data[64]; /* the first 63 bytes of the event's data */
    uint8_t data_len;
    char line[LINE_MAX_KEPT];
} conn_t;

static conn_t *conns;
static int nconns;
static struct sockaddr_in targets[MAX_TARGETS];
static int ntargets;
static struct sockaddr_in src;
static int concurrency = 256;
static int default_retry = 3000;
static int epfd;

/* the window's figures (reset) and the run's */
static uint32_t *hist_b, *hist_u;
static int64_t w_b, w_u, w_bytes, w_reads, w_pings, w_late_max_us, w_back_max_us, w_readmitted;
static int64_t t_b, t_u, t_dups, t_missing, t_gaps, t_reconnects, t_refused, t_clean, t_cut, t_5xx, t_4xx;
static int64_t t_timeouts, t_errors, t_connect_fail, t_bad;
static int64_t last_admit_us;
static int admitted_now, pending_admission;
static int opening; /* an "open" command waits for every stream */
static int64_t open_started_us;
static int64_t first_admit_us;

/* connects waiting for a slot, and reconnects waiting for their time: a FIFO of indexes and a heap */
static int *queue;
static int qhead, qtail, qlen;
static int *heap;
static int heaplen;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void queue_push(int i) {
    queue[qtail] = i;
    qtail = (qtail + 1) % nconns;
    qlen++;
}

static int queue_pop(void) {
    int i = queue[qhead];
    qhead = (qhead + 1) % nconns;
    qlen--;
    return i;
}

static void heap_push(int i) {
    int k = heaplen++;
    heap[k] = i;
    while (k > 0) {
        int p = (k - 1) / 2;
        if (conns[heap[p]].wake_at_us <= conns[heap[k]].wake_at_us) break;
        int t = heap[p];
        heap[p] = heap[k];
        heap[k] = t;
        k = p;
    }
}

static int heap_pop(void) {
    int top = heap[0];
    heap[0] = heap[--heaplen];
    int k = 0;
    for (;;) {
        int l = 2 * k + 1, r = l + 1, m = k;
        if (l < heaplen && conns[heap[l]].wake_at_us < conns[heap[m]].wake_at_us) m = l;
        if (r < heaplen && conns[heap[r]].wake_at_us < conns[heap[m]].wake_at_us) m = r;
        if (m == k) break;
        int t = heap[m];
        heap[m] = heap[k];
        heap[k] = t;
        k = m;
    }
    return top;
}

static void start_connect(int i);

static void schedule_reconnect(conn_t *c, int delay_ms) {
    c->state = S_WAIT;
    c->wake_at_us = now_us() + (int64_t)delay_ms * 1000;
    heap_push((int)(c - conns));
}

/* A stream ended (EOF, reset, refused, bad status): close it and come back as an EventSource would. */
static void ended(conn_t *c, int delay_ms, int next_target) {
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    if (c->admitted) {
        c->admitted = 0;
        admitted_now--;
        c->closed_at_us = now_us();
    } else if (c->state == S_CONNECTING || c->state == S_HEAD || c->state == S_BODY) {
        pending_admission--;
    }
    if (next_target && ntargets > 1) {
        /* another target than this one, spread by uid over the others */
        int step = 1 + (c->uid % (ntargets - 1));
        c->target = (c->target + step) % ntargets;
    }
    c->reconnects++;
    t_reconnects++;
    schedule_reconnect(c, delay_ms);
}

static void arm_out(conn_t *c) {
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void start_connect(int i) {
    conn_t *c = &conns[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        t_errors++;
        schedule_reconnect(c, 100);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (src.sin_addr.s_addr && bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
        close(fd);
        t_errors++;
        schedule_reconnect(c, 100);
        return;
    }
    c->fd = fd;
    c->state = S_CONNECTING;
    c->status = 0;
    c->chunked = 0;
    c->cstate = C_SIZE;
    c->chunk_left = 0;
    c->line_len = 0;
    c->line_cut = 0;
    c->has_pend = 0;
    c->has_data = 0;
    c->event_gap = 0;
    c->started_at_us = now_us();
    pending_admission++;
    int r = connect(fd, (struct sockaddr *)&targets[c->target], sizeof targets[0]);
    if (r < 0 && errno != EINPROGRESS) {
        t_connect_fail++;
        if (errno == ECONNREFUSED) t_refused++;
        ended(c, errno == ECONNREFUSED ? 0 : 100, 1);
        c->reconnects--;
        t_reconnects--;
        return;
    }
    arm_out(c);
}

static void send_request(conn_t *c) {
    char req[512];
    int n = snprintf(req, sizeof req, "GET /s/%d HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n", c->uid);
    if (c->id_len) n += snprintf(req + n, sizeof req - n, "Last-Event-ID: %.*s\r\n", c->id_len, c->id);
    n += snprintf(req + n, sizeof req - n, "\r\n");
    if (write(c->fd, req, n) != n) {
        t_errors++;
        ended(c, 100, 1);
        return;
    }
    c->state = S_HEAD;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static inline void record(uint32_t *hist, int64_t lat_us) {
    int64_t b = lat_us / BUCKET_US;
    if (b < 0) b = 0;
    if (b >= BUCKETS) b = BUCKETS - 1;
    hist[b]++;
}

static void check_seq(conn_t *c, int64_t seq, int64_t *first, int64_t *last, int64_t *n) {
    if (*n == 0 && *last == 0) {
        *first = seq;
        if (seq != 1) { /* every stream subscribes before the first publish: it must start at 1 */
            c->missing += seq - 1;
            t_missing += seq - 1;
            c->gaps++;
            t_gaps++;
        }
        *last = seq;
        (*n)++;
        return;
    }
    if (seq <= *last) {
        c->dups++;
        t_dups++;
        return;
    }
    if (seq != *last + 1) {
        c->missing += seq - *last - 1;
        t_missing += seq - *last - 1;
        c->gaps++;
        t_gaps++;
    }
    *last = seq;
    (*n)++;
}

static void admit(conn_t *c) {
    int64_t now = now_us();
    c->admitted = 1;
    admitted_now++;
    pending_admission--;
    last_admit_us = now;
    if (!first_admit_us) first_admit_us = now;
    if (c->ever_admitted && c->closed_at_us) {
        int64_t back = now - c->closed_at_us;
        int64_t late = back - (int64_t)c->retry_ms * 1000;
        if (back > w_back_max_us) w_back_max_us = back;
        if (late > w_late_max_us) w_late_max_us = late;
        w_readmitted++;
    }
    c->ever_admitted = 1;
}

/* The event whose blank line just arrived. */
static void dispatch(conn_t *c) {
    if (c->has_pend) {
        memcpy(c->id, c->pend, c->pend_len);
        c->id_len = c->pend_len;
        c->has_pend = 0;
    }
    if (!c->admitted) admit(c); /* the first item: the hub's id-only event (or a gap) */
    if (!c->has_data) {
        c->event_gap = 0;
        return;
    }
    c->has_data = 0;
    if (c->event_gap) {
        c->event_gap = 0;
        c->gaps++;
        t_gaps++;
        return;
    }
    c->data[c->data_len] = 0;
    char *p = c->data, *end;
    int64_t ts = strtoll(p, &end, 10);
    if (end == p || *end != ' ' || (end[1] != 'b' && end[1] != 'u')) {
        t_bad++;
        return;
    }
    char kind = end[1];
    int64_t seq = strtoll(end + 2, NULL, 10);
    int64_t lat = now_us() - ts;
    if (kind == 'b') {
        record(hist_b, lat);
        w_b++;
        t_b++;
        check_seq(c, seq, &c->first_b, &c->last_b, &c->n_b);
    } else {
        record(hist_u, lat);
        w_u++;
        t_u++;
        check_seq(c, seq, &c->first_u, &c->last_u, &c->n_u);
    }
}

static void sse_line(conn_t *c, const char *s, int n) {
    if (n == 0) {
        dispatch(c);
        return;
    }
    if (s[0] == ':') {
        w_pings++;
        return;
    }
    const char *colon = memchr(s, ':', n);
    int flen = colon ? (int)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    int vlen = colon ? n - flen - 1 : 0;
    if (vlen > 0 && v[0] == ' ') {
        v++;
        vlen--;
    }
    if (flen == 4 && !memcmp(s, "data", 4)) {
        if (!c->has_data) {
            int k = vlen < 63 ? vlen : 63;
            memcpy(c->data, v, k);
            c->data_len = (uint8_t)k;
            c->has_data = 1;
        }
    } else if (flen == 2 && !memcmp(s, "id", 2)) {
        if (c->line_cut || vlen >= ID_MAX) {
            t_bad++;
            return;
        }
        memcpy(c->pend, v, vlen);
        c->pend_len = (uint8_t)vlen;
        c->has_pend = 1;
    } else if (flen == 5 && !memcmp(s, "event", 5)) {
        c->event_gap = vlen == 3 && !memcmp(v, "gap", 3);
    } else if (flen == 5 && !memcmp(s, "retry", 5)) {
        int ms = atoi(v);
        if (ms >= 0) c->retry_ms = ms;
    }
}

static void head_line(conn_t *c, const char *s, int n) {
    if (c->status == 0) {
        const char *sp = memchr(s, ' ', n);
        c->status = sp ? atoi(sp + 1) : -1;
        return;
    }
    if (n == 0) {
        c->state = S_BODY;
        return;
    }
    if (n >= 26 && !strncasecmp(s, "transfer-encoding: chunked", 26)) c->chunked = 1;
    if (n > 13 && !strncasecmp(s, "retry-after: ", 13) && c->status != 200) c->retry_ms = atoi(s + 13) * 1000;
}

/* Split ``n`` bytes of the head or the decoded body into lines (LF, a CR before it dropped). */
static void lines(conn_t *c, const char *s, int n) {
    while (n > 0) {
        const char *nl = memchr(s, '\n', n);
        int take = nl ? (int)(nl - s) : n;
        int room = LINE_MAX_KEPT - c->line_len;
        int k = take < room ? take : room;
        if (k < take) c->line_cut = 1;
        memcpy(c->line + c->line_len, s, k);
        c->line_len += k;
        if (!nl) return;
        int len = c->line_len;
        if (len && c->line[len - 1] == '\r') len--;
        if (c->state == S_HEAD) {
            head_line(c, c->line, len);
        } else {
            sse_line(c, c->line, len);
        }
        c->line_len = 0;
        c->line_cut = 0;
        s = nl + 1;
        n -= take + 1;
        if (c->fd < 0) return;
    }
}

/* Decode chunked framing in ``s``; hand the payload to the SSE parser. Returns 1 at the body's end. */
static int dechunk(conn_t *c, const char *s, int n) {
    int i = 0;
    while (i < n) {
        switch (c->cstate) {
        case C_SIZE: {
            char ch = s[i++];
            int d = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                  : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
            if (d >= 0) {
                c->chunk_left = c->chunk_left * 16 + d;
            } else if (ch == '\n') {
                c->cstate = c->chunk_left ? C_DATA : C_TRAILER;
            } else {
                c->cstate = C_SIZE_EXT; /* CR or an extension: up to LF */
            }
            break;
        }
        case C_SIZE_EXT:
            if (s[i++] == '\n') c->cstate = c->chunk_left ? C_DATA : C_TRAILER;
            break;
        case C_DATA: {
            int k = (int)c->chunk_left < n - i ? (int)c->chunk_left : n - i;
            lines(c, s + i, k);
            if (c->fd < 0) return 0;
            i += k;
            c->chunk_left -= k;
            if (!c->chunk_left) c->cstate = C_DATA_CR;
            break;
        }
        case C_DATA_CR:
            i++;
            c->cstate = C_DATA_LF;
            break;
        case C_DATA_LF:
            i++;
            c->cstate = C_SIZE;
            c->chunk_left = 0;
            break;
        case C_TRAILER:
            if (s[i++] == '\n') {
                c->cstate = C_DONE;
                return 1;
            }
            break;
        default:
            return 1;
        }
    }
    return 0;
}

static char rbuf[1 << 16];

static void on_readable(conn_t *c) {
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            t_cut++;
            ended(c, c->retry_ms, 1);
            return;
        }
        if (n == 0) {
            t_cut++;
            ended(c, c->retry_ms, 1);
            return;
        }
        w_reads++;
        w_bytes += n;
        const char *s = rbuf;
        int len = (int)n;
        if (c->state == S_HEAD) {
            /* the head, line by line, up to its blank line */
            while (len > 0 && c->state == S_HEAD) {
                const char *nl = memchr(s, '\n', len);
                int take = nl ? (int)(nl - s) + 1 : len;
                lines(c, s, take);
                s += take;
                len -= take;
            }
            if (c->state == S_BODY && c->status != 200) {
                if (c->status >= 500) t_5xx++;
                else t_4xx++;
                ended(c, c->retry_ms > 0 ? c->retry_ms : default_retry, 1);
                return;
            }
        }
        if (c->state == S_BODY && len > 0) {
            int done = c->chunked ? dechunk(c, s, len) : (lines(c, s, len), 0);
            if (c->fd < 0) return;
            if (done) {
                t_clean++;
                ended(c, c->retry_ms, 1);
                return;
            }
        }
        if (n < (ssize_t)sizeof rbuf) return;
    }
}

static void on_writable(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        t_connect_fail++;
        int refused = err == ECONNREFUSED;
        if (refused) t_refused++;
        ended(c, refused ? 0 : 100, 1);
        c->reconnects--;
        t_reconnects--;
        return;
    }
    send_request(c);
}

/* -- commands ------------------------------------------------------------------------------------ */

static void print_hist(FILE *f, const char *name, uint32_t *hist) {
    fprintf(f, "\"%s\":[", name);
    int first = 1;
    for (int b = 0; b < BUCKETS; b++) {
        if (!hist[b]) continue;
        fprintf(f, "%s[%d,%u]", first ? "" : ",", b, hist[b]);
        first = 0;
    }
    fprintf(f, "]");
}

static void cmd_stats(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"t\":%.6f,\"cpu\":%.6f,\"streams\":%d,\"admitted\":%d,\"pending\":%d,\"waiting\":%d,", now_us() / 1e6,
           cpu, nconns, admitted_now, pending_admission, heaplen + qlen);
    printf("\"b\":%lld,\"u\":%lld,\"bytes\":%lld,\"reads\":%lld,\"pings\":%lld,\"late_max_ms\":%.1f,"
           "\"back_max_ms\":%.1f,\"readmitted\":%lld,",
           (long long)w_b, (long long)w_u, (long long)w_bytes, (long long)w_reads, (long long)w_pings,
           w_late_max_us / 1000.0, w_back_max_us / 1000.0, (long long)w_readmitted);
    printf("\"total_b\":%lld,\"total_u\":%lld,\"dups\":%lld,\"missing\":%lld,\"gaps\":%lld,\"reconnects\":%lld,"
           "\"refused\":%lld,\"clean_ends\":%lld,\"cut_ends\":%lld,\"status_5xx\":%lld,\"status_4xx\":%lld,"
           "\"timeouts\":%lld,\"errors\":%lld,\"connect_failed\":%lld,\"bad\":%lld,\"last_admit\":%.6f,",
           (long long)t_b, (long long)t_u, (long long)t_dups, (long long)t_missing, (long long)t_gaps,
           (long long)t_reconnects, (long long)t_refused, (long long)t_clean, (long long)t_cut, (long long)t_5xx,
           (long long)t_4xx, (long long)t_timeouts, (long long)t_errors, (long long)t_connect_fail,
           (long long)t_bad, last_admit_us / 1e6);
    print_hist(stdout, "hist_b", hist_b);
    printf(",");
    print_hist(stdout, "hist_u", hist_u);
    printf("}\n");
    fflush(stdout);
}

static void cmd_reset(void) {
    memset(hist_b, 0, sizeof(uint32_t) * BUCKETS);
    memset(hist_u, 0, sizeof(uint32_t) * BUCKETS);
    w_b = w_u = w_bytes = w_reads = w_pings = w_late_max_us = w_back_max_us = w_readmitted = 0;
    printf("{\"reset\":true}\n");
    fflush(stdout);
}

static void cmd_dump(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        printf("{\"error\":\"cannot write %s\"}\n", path);
        fflush(stdout);
        return;
    }
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        fprintf(f, "%d %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld\n", c->uid, (long long)c->first_b,
                (long long)c->last_b, (long long)c->n_b, (long long)c->first_u, (long long)c->last_u,
                (long long)c->n_u, (long long)c->dups, (long long)c->missing, (long long)c->gaps,
                (long long)c->reconnects);
    }
    fclose(f);
    printf("{\"dumped\":%d}\n", nconns);
    fflush(stdout);
}

static void open_done(void) {
    printf("{\"opened\":%d,\"seconds\":%.6f,\"first\":%.6f,\"last\":%.6f,\"started\":%.6f}\n", admitted_now,
           (last_admit_us - open_started_us) / 1e6, first_admit_us / 1e6, last_admit_us / 1e6,
           open_started_us / 1e6);
    fflush(stdout);
    opening = 0;
}

static char cmdbuf[4096];
static int cmdlen;

static int on_stdin(void) {
    ssize_t n = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
    if (n <= 0) return 1; /* the bench went away: quit */
    cmdlen += (int)n;
    char *nl;
    while ((nl = memchr(cmdbuf, '\n', cmdlen))) {
        *nl = 0;
        char *cmd = cmdbuf;
        if (!strcmp(cmd, "open")) {
            opening = 1;
            open_started_us = now_us();
            for (int i = 0; i < nconns; i++) queue_push(i);
        } else if (!strcmp(cmd, "stats")) {
            cmd_stats();
        } else if (!strcmp(cmd, "reset")) {
            cmd_reset();
        } else if (!strncmp(cmd, "dump ", 5)) {
            cmd_dump(cmd + 5);
        } else if (!strcmp(cmd, "quit")) {
            return 1;
        } else {
            printf("{\"error\":\"unknown command\"}\n");
            fflush(stdout);
        }
        int used = (int)(nl - cmdbuf) + 1;
        memmove(cmdbuf, nl + 1, cmdlen - used);
        cmdlen -= used;
    }
    return 0;
}

static int parse_addr(const char *s, struct sockaddr_in *out, int need_port) {
    char host[64];
    const char *colon = strrchr(s, ':');
    int port = 0;
    if (colon && need_port) {
        snprintf(host, sizeof host, "%.*s", (int)(colon - s), s);
        port = atoi(colon + 1);
    } else {
        snprintf(host, sizeof host, "%s", s);
    }
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons(port);
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    int first_uid = 0, count = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--targets")) {
            char *list = strdup(argv[i + 1]), *save = NULL;
            for (char *t = strtok_r(list, ",", &save); t && ntargets < MAX_TARGETS; t = strtok_r(NULL, ",", &save))
                if (parse_addr(t, &targets[ntargets++], 1) < 0) {
                    fprintf(stderr, "bad target %s\n", t);
                    return 2;
                }
        } else if (!strcmp(argv[i], "--src")) {
            if (parse_addr(argv[i + 1], &src, 0) < 0) {
                fprintf(stderr, "bad source %s\n", argv[i + 1]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--uids")) {
            sscanf(argv[i + 1], "%d:%d", &first_uid, &count);
        } else if (!strcmp(argv[i], "--concurrency")) {
            concurrency = atoi(argv[i + 1]);
        } else if (!strcmp(argv[i], "--default-retry")) {
            default_retry = atoi(argv[i + 1]);
        }
    }
    if (!ntargets || count <= 0) {
        fprintf(stderr, "usage: scale_client --targets H:P,... --uids FIRST:COUNT [--src IP]\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)count + 16 > rl.rlim_cur) {
        fprintf(stderr, "%d streams need more files than RLIMIT_NOFILE allows (%llu)\n", count,
                (unsigned long long)rl.rlim_cur);
        return 2;
    }
    nconns = count;
    conns = calloc(nconns, sizeof *conns);
    queue = calloc(nconns, sizeof *queue);
    heap = calloc(nconns, sizeof *heap);
    hist_b = calloc(BUCKETS, sizeof *hist_b);
    hist_u = calloc(BUCKETS, sizeof *hist_u);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].uid = first_uid + i;
        conns[i].target = conns[i].uid % ntargets;
        conns[i].retry_ms = default_retry;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    printf("{\"ready\":true,\"streams\":%d}\n", nconns);
    fflush(stdout);
    struct epoll_event events[1024];
    int64_t last_sweep = now_us();
    for (;;) {
        int64_t now = now_us();
        /* reconnects whose time has come join the queue of connects */
        while (heaplen && conns[heap[0]].wake_at_us <= now) queue_push(heap_pop());
        while (qlen && pending_admission < concurrency) start_connect(queue_pop());
        if (opening && admitted_now == nconns) open_done();
        int timeout = 1000;
        if (heaplen) {
            int64_t wait = (conns[heap[0]].wake_at_us - now) / 1000 + 1;
            if (wait < timeout) timeout = (int)wait;
        }
        if (qlen && pending_admission < concurrency) timeout = 0;
        int n = epoll_wait(epfd, events, 1024, timeout);
        for (int k = 0; k < n; k++) {
            uint64_t tag = events[k].data.u64;
            if (tag == STDIN_TAG) {
                if (on_stdin()) goto out;
                continue;
            }
            conn_t *c = &conns[tag];
            if (c->fd < 0) continue;
            if (c->state == S_CONNECTING) {
                on_writable(c);
            } else {
                on_readable(c);
            }
        }
        now = now_us();
        if (now - last_sweep > 1000000) { /* streams stuck before admission: try again */
            last_sweep = now;
            for (int i = 0; i < nconns; i++) {
                conn_t *c = &conns[i];
                if (c->fd >= 0 && !c->admitted && now - c->started_at_us > (int64_t)ADMIT_TIMEOUT_MS * 1000) {
                    t_timeouts++;
                    ended(c, 100, 1);
                }
            }
        }
    }
out:
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
