/*
 * loadgen: the benchmark's load generator for Server-Sent Events servers.
 *
 * Two modes, each one epoll-driven, single-threaded process (run several
 * processes for more load):
 *
 *   loadgen sub  ...   open N streams (GET /events[?channel=...]), decode
 *                      HTTP/1.1 chunked (or identity) bodies and the WHATWG
 *                      event-stream format, count events, and histogram the
 *                      publish-to-receive latency taken from the "t" field
 *                      (CLOCK_MONOTONIC ns) inside each event's JSON data.
 *   loadgen pub  ...   POST /publish over keep-alive connections, one event
 *                      per request, back to back or paced at a rate.
 *
 * Every loop is bounded: a connection count, an event count and a hard
 * wall-clock limit (--time-limit) after which the process reports and exits.
 * Only the host given with --host is contacted (the harness passes loopback).
 *
 * sub talks to its parent on stdin/stdout, one line per message:
 *   out: "CONNECTED c f"  every connection attempt resolved (c ok, f failed)
 *   out: "WARM n"         every connected reader has seen >= 1 event
 *   out: "DONE n"         --expect measured events reached on every reader,
 *                         or the "total" target reached
 *   out: "RECONNECTED c f" every reader cut by "cut" got its headers again
 *                         (c) or failed to (f)
 *   out: "STAT k=v ..."   answer to "stat"
 *   in:  "stat" | "total N" | "reset" | "quit"   (EOF on stdin = quit)
 *   in:  "go"             start connecting (with --wait-go: several processes
 *                         then open their streams at the same moment)
 *   in:  "cut"            close every reader's socket at once (like a proxy
 *                         dropping them) and reconnect each at once, sending
 *                         Last-Event-ID: the last id it received, if any
 *   in:  "published N"    measured events 0..N-1 were published (round robin
 *                         over --channels): RESULT then counts each reader's
 *                         missing events against the ones of its channel
 * At exit it prints one JSON object on a line starting with "RESULT ".
 *
 * Besides counts, each reader keeps a compact summary of the "s" sequence
 * numbers it received (the publisher numbers its events 0, 1, ...; with
 * --channels M and round robin, channel k gets s = k, k+M, ...): the last s,
 * duplicates (an s not above the last one) and gaps (s skipped), and the
 * times of its connect, headers and first body bytes. Counts of dups/gaps
 * are only meaningful with a round-robin publisher.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
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

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg) {
    perror(msg);
    exit(2);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL, 0);
    return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ---------- latency histogram: exact below 1024 us, then 512 sub-buckets per octave ---------- */
#define HBUCKETS (1024 + 32 * 512)
static uint64_t hist[HBUCKETS];

static int hidx(uint64_t v) {
    if (v < 1024) return (int)v;
    if (v >= (1ull << 41)) v = (1ull << 41) - 1;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 9;
    return 1024 + (shift - 1) * 512 + (int)((v >> shift) - 512);
}

static double hmid(int i) {
    if (i < 1024) return (double)i;
    int k = i - 1024;
    int shift = k / 512 + 1;
    uint64_t lo = (uint64_t)(k % 512 + 512) << shift;
    return (double)lo + (double)(1ull << shift) / 2.0;
}

/* ---------- common options ---------- */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static double opt_time_limit = 60.0;
static char *opt_src = NULL; /* comma separated source addresses */
static struct in_addr src_addrs[64];
static int n_src = 0;

static void parse_src(void) {
    if (!opt_src) return;
    char *s = strdup(opt_src), *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok && n_src < 64; tok = strtok_r(NULL, ",", &save)) {
        if (inet_pton(AF_INET, tok, &src_addrs[n_src]) != 1) {
            fprintf(stderr, "bad --src address %s\n", tok);
            exit(2);
        }
        n_src++;
    }
    free(s);
}

static int open_conn(int idx) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (n_src) {
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_addr = src_addrs[idx % n_src];
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            close(fd);
            return -1;
        }
    }
    struct sockaddr_in da = {0};
    da.sin_family = AF_INET;
    da.sin_port = htons((uint16_t)opt_port);
    inet_pton(AF_INET, opt_host, &da.sin_addr);
    if (connect(fd, (struct sockaddr *)&da, sizeof da) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ======================================================================
 * sub mode
 * ====================================================================== */
enum { ST_CONNECTING, ST_HDR, ST_BODY, ST_STALLED, ST_DEAD };
enum { CS_SIZE, CS_EXT, CS_SIZE_LF, CS_DATA, CS_DATA_CR, CS_DATA_LF, CS_END, CS_IDENTITY };
enum { PS_LINESTART, PS_NAME, PS_VALSTART, PS_VALUE, PS_COMMENT };
enum { F_OTHER, F_DATA, F_EVENT, F_ID, F_RETRY };
#define MAX_ID 96 /* longest event id kept for Last-Event-ID (sse_twisted's are ~16 bytes) */

typedef struct {
    int fd;
    uint8_t state, cstate, pstate, field;
    uint8_t cr;          /* last line ended with CR: swallow one LF */
    uint8_t fname_len;
    char fname[8];
    uint8_t m;           /* JSON scanner state */
    uint8_t num;         /* reading the number of "t" or "s" */
    uint8_t slen;        /* length of the current string, capped */
    char keych;          /* first char of the current string */
    uint8_t ndig;
    uint8_t has_data, has_t, has_s;
    uint8_t stalled;
    uint8_t warm;        /* saw any event */
    uint8_t complete;
    uint64_t chunk_left;
    uint64_t val, t, s;
    uint32_t nevents;    /* measured events (with "t" and "s") */
    uint32_t nwarm;      /* events without them */
    uint32_t ncomments;
    char *hdr;
    uint32_t hdr_len;
    /* the s sequence received since "reset" (see the top of the file) */
    int64_t first_s, last_s; /* -1: none yet */
    uint32_t dups, gaps;
    /* times (CLOCK_MONOTONIC ns) of the first connection: connect() called,
     * headers complete, first body byte */
    uint64_t t_start, t_hdr, t_body;
    /* across a "cut": state 1 = reconnecting, 2 = headers again */
    uint8_t cut;
    uint64_t t_rehdr;        /* headers of the new connection */
    uint64_t t_caught;       /* last event received that was published before t_rehdr */
    uint32_t replayed;       /* events received after the cut published before t_rehdr */
    int64_t cut_s;           /* last s before the cut */
    /* event ids: the id field being read, WHATWG's "last event ID buffer"
     * (pend_id) and "last event ID string" (last_id, set on dispatch); an id
     * field longer than MAX_ID or with a NUL is ignored, as the spec ignores
     * one with a NUL */
    uint8_t id_tmp_len, pend_id_len, last_id_len, id_over;
    char id_tmp[MAX_ID];
    char pend_id[MAX_ID];
    char last_id[MAX_ID];
} conn_t;

static conn_t *conns;
static int opt_conns = 100, opt_stalled = 0, opt_channels = 0, opt_max_pending = 128;
static long opt_expect = 0;
static const char *opt_path = "/events";
/* --param NAME --suffix S: subscribe with ?NAME=ch<k>S (e.g. pattern, and a glob
   suffix); publish to ch<k>S (the publisher's own --suffix). */
static const char *opt_param = "channel", *opt_suffix = "";
static int epfd;
static int started, pending, n_connected, n_failed, n_closed, n_stalled_ok;
static int readers_connected, readers_warm, readers_complete;
static uint64_t total_events, total_warm, total_comments, total_bytes, first_ns, last_ns;
static uint64_t total_target;
static uint64_t lat_n;
static long min_ev_dummy;
static int announced_connected, announced_warm, announced_done;
static int opt_wait_go, go_started = 1, want_cut;
static int n_cut, n_reconnected, n_refailed, announced_reconnected;
static uint64_t t_cut;
static long n_published = -1; /* "published N": events 0..N-1 went out */
static uint64_t sub_hist[HBUCKETS];   /* headers - connect() start, us, first connections */
static uint64_t resub_hist[HBUCKETS]; /* headers - cut, us, reconnections */
static int err_connect, err_status, err_eof_hdr, err_reset;
static uint64_t cur_now;

static void conn_dead(conn_t *c, int before_headers) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->hdr) {
        free(c->hdr);
        c->hdr = NULL;
    }
    if (before_headers) {
        if (c->state == ST_CONNECTING || c->state == ST_HDR) {
            pending--;
            if (c->cut == 1) n_refailed++;
            else n_failed++;
        }
    } else if (c->state == ST_BODY || c->state == ST_STALLED) {
        n_closed++;
    }
    c->state = ST_DEAD;
}

static void track_s(conn_t *c) {
    int64_t s = (int64_t)c->s;
    int64_t step = opt_channels > 0 ? opt_channels : 1;
    if (c->last_s < 0) {
        c->first_s = c->last_s = s;
    } else if (s <= c->last_s) {
        c->dups++;
    } else {
        c->gaps += (uint32_t)((s - c->last_s) / step - 1);
        c->last_s = s;
    }
    if (c->cut == 2 && c->t < c->t_rehdr) {
        /* published before this stream was subscribed again: a replay */
        c->replayed++;
        c->t_caught = cur_now;
    }
}

static void dispatch(conn_t *c) {
    /* WHATWG: the last event ID string is set on every dispatch, data or not */
    memcpy(c->last_id, c->pend_id, c->pend_id_len);
    c->last_id_len = c->pend_id_len;
    if (c->has_data) {
        if (c->has_t && c->has_s) {
            track_s(c);
            c->nevents++;
            total_events++;
            if (!first_ns) first_ns = cur_now;
            last_ns = cur_now;
            uint64_t lat = cur_now > c->t ? (cur_now - c->t) / 1000 : 0;
            hist[hidx(lat)]++;
            lat_n++;
            if (opt_expect && !c->complete && c->nevents >= (uint64_t)opt_expect) {
                c->complete = 1;
                readers_complete++;
            }
        } else {
            c->nwarm++;
            total_warm++;
        }
        if (!c->warm) {
            c->warm = 1;
            readers_warm++;
        }
    }
    c->has_data = c->has_t = c->has_s = 0;
    c->m = 0;
    c->num = 0;
}

static inline void match_finish_num(conn_t *c) {
    if (c->keych == 't') {
        c->t = c->val;
        c->has_t = 1;
    } else if (c->keych == 's') {
        c->s = c->val;
        c->has_s = 1;
    }
}

/* Feed one byte of a data: value to a tiny JSON scanner that picks out the
 * numbers of the one-letter keys "t" and "s" at any depth, whatever the key
 * order or spacing; string contents (and escapes) are skipped. */
static inline void match_byte(conn_t *c, char ch) {
    switch (c->m) {
    case 0: /* outside strings */
    out:
        if (c->num) {
            if (ch >= '0' && ch <= '9') {
                c->val = c->val * 10 + (uint64_t)(ch - '0');
                c->ndig++;
                break;
            }
            if (ch == ' ' && c->ndig == 0) break;
            if (c->ndig) match_finish_num(c);
            c->num = 0;
        }
        if (ch == '"') {
            c->m = 1;
            c->slen = 0;
        }
        break;
    case 1: /* inside a string */
        if (ch == '\\') c->m = 2;
        else if (ch == '"') c->m = 3;
        else {
            if (c->slen == 0) c->keych = ch;
            if (c->slen < 255) c->slen++;
        }
        break;
    case 2: /* escaped char */
        c->m = 1;
        if (c->slen < 255) c->slen++;
        break;
    case 3: /* just after a string: a key if a colon follows */
        if (ch == ' ') break;
        c->m = 0;
        if (ch == ':') {
            if (c->slen == 1 && (c->keych == 't' || c->keych == 's')) {
                c->num = 1;
                c->val = 0;
                c->ndig = 0;
            }
            break;
        }
        goto out;
    }
}

static void end_line(conn_t *c) {
    if (c->pstate == PS_COMMENT) {
        c->ncomments++;
        total_comments++;
    } else if (c->pstate == PS_NAME || c->pstate == PS_VALSTART || c->pstate == PS_VALUE) {
        if (c->pstate == PS_NAME) {
            /* field with no colon: name is the whole line, value empty */
            if (c->fname_len == 4 && memcmp(c->fname, "data", 4) == 0) c->field = F_DATA;
            else if (c->fname_len == 2 && memcmp(c->fname, "id", 2) == 0) {
                c->field = F_ID;
                c->id_over = c->id_tmp_len = 0;
            } else c->field = F_OTHER;
        }
        if (c->field == F_ID && !c->id_over) {
            memcpy(c->pend_id, c->id_tmp, c->id_tmp_len);
            c->pend_id_len = c->id_tmp_len;
        }
        if (c->field == F_DATA) {
            if (c->num && c->ndig) match_finish_num(c);
            c->num = 0;
            c->m = 0;
            c->has_data = 1;
        }
    }
    c->pstate = PS_LINESTART;
}

static void sse_feed(conn_t *c, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (c->cr) {
            c->cr = 0;
            if (ch == '\n') continue;
        }
        if (ch == '\r' || ch == '\n') {
            if (ch == '\r') c->cr = 1;
            if (c->pstate == PS_LINESTART) dispatch(c);
            else end_line(c);
            continue;
        }
        switch (c->pstate) {
        case PS_LINESTART:
            if (ch == ':') {
                c->pstate = PS_COMMENT;
            } else {
                c->fname_len = 0;
                c->fname[c->fname_len++] = ch;
                c->pstate = PS_NAME;
            }
            break;
        case PS_NAME:
            if (ch == ':') {
                if (c->fname_len == 4 && memcmp(c->fname, "data", 4) == 0) c->field = F_DATA;
                else if (c->fname_len == 5 && memcmp(c->fname, "event", 5) == 0) c->field = F_EVENT;
                else if (c->fname_len == 2 && memcmp(c->fname, "id", 2) == 0) c->field = F_ID;
                else if (c->fname_len == 5 && memcmp(c->fname, "retry", 5) == 0) c->field = F_RETRY;
                else c->field = F_OTHER;
                if (c->field == F_DATA && c->has_data == 0) c->m = c->num = 0;
                if (c->field == F_ID) c->id_tmp_len = c->id_over = 0;
                c->pstate = PS_VALSTART;
            } else if (c->fname_len < sizeof c->fname) {
                c->fname[c->fname_len++] = ch;
            } else {
                c->fname_len = 255; /* too long: unknown field */
            }
            break;
        case PS_VALSTART:
            c->pstate = PS_VALUE;
            if (ch == ' ') break;
            /* fall through */
        case PS_VALUE:
            if (c->field == F_DATA) match_byte(c, ch);
            else if (c->field == F_ID) {
                if (ch == 0 || c->id_tmp_len >= MAX_ID) c->id_over = 1;
                else c->id_tmp[c->id_tmp_len++] = ch;
            }
            break;
        case PS_COMMENT:
            break;
        }
    }
}

static void body_feed(conn_t *c, const char *p, size_t n) {
    if (c->cstate == CS_IDENTITY) {
        sse_feed(c, p, n);
        return;
    }
    size_t i = 0;
    while (i < n) {
        char ch = p[i];
        switch (c->cstate) {
        case CS_SIZE:
            if (ch >= '0' && ch <= '9') c->chunk_left = c->chunk_left * 16 + (uint64_t)(ch - '0');
            else if (ch >= 'a' && ch <= 'f') c->chunk_left = c->chunk_left * 16 + (uint64_t)(ch - 'a' + 10);
            else if (ch >= 'A' && ch <= 'F') c->chunk_left = c->chunk_left * 16 + (uint64_t)(ch - 'A' + 10);
            else if (ch == ';' || ch == ' ' || ch == '\t') c->cstate = CS_EXT;
            else if (ch == '\r') c->cstate = CS_SIZE_LF;
            else if (ch == '\n') goto size_done;
            i++;
            break;
        case CS_EXT:
            if (ch == '\n') goto size_done;
            i++;
            break;
        case CS_SIZE_LF:
            if (ch != '\n') {
                c->cstate = CS_SIZE;
                break; /* tolerate a bare CR */
            }
        size_done:
            i++;
            if (c->chunk_left == 0) c->cstate = CS_END;
            else c->cstate = CS_DATA;
            break;
        case CS_DATA: {
            size_t take = n - i;
            if (take > c->chunk_left) take = (size_t)c->chunk_left;
            sse_feed(c, p + i, take);
            i += take;
            c->chunk_left -= take;
            if (c->chunk_left == 0) c->cstate = CS_DATA_CR;
            break;
        }
        case CS_DATA_CR:
            i++;
            if (ch == '\r') c->cstate = CS_DATA_LF;
            else if (ch == '\n') c->cstate = CS_SIZE;
            else c->cstate = CS_SIZE; /* malformed; resync */
            c->chunk_left = 0;
            break;
        case CS_DATA_LF:
            i++;
            c->cstate = CS_SIZE;
            c->chunk_left = 0;
            break;
        case CS_END:
            return; /* trailers: ignore */
        }
    }
}

static void got_headers(conn_t *c, char *hdr, size_t hlen) {
    /* status line: HTTP/1.1 200 ... */
    int status = 0;
    if (hlen > 12 && memcmp(hdr, "HTTP/1.", 7) == 0) status = atoi(hdr + 9);
    if (status != 200) {
        err_status++;
        conn_dead(c, 1);
        return;
    }
    c->cstate = CS_IDENTITY;
    /* find Transfer-Encoding: chunked (case-insensitive) */
    hdr[hlen - 1] = 0;
    for (char *line = strstr(hdr, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "transfer-encoding:", 18) == 0) {
            char *v = line + 20;
            char *e = strstr(v, "\r\n");
            size_t vl = e ? (size_t)(e - v) : strlen(v);
            for (size_t k = 0; k + 7 <= vl; k++)
                if (strncasecmp(v + k, "chunked", 7) == 0) {
                    c->cstate = CS_SIZE;
                    c->chunk_left = 0;
                }
        }
    }
    c->state = ST_BODY;
    pending--;
    if (c->cut == 1) {
        c->cut = 2;
        c->t_rehdr = cur_now;
        n_reconnected++;
        resub_hist[hidx((cur_now - t_cut) / 1000)]++;
        return;
    }
    c->t_hdr = cur_now;
    sub_hist[hidx((cur_now - c->t_start) / 1000)]++;
    n_connected++;
    readers_connected++;
}

static char rbuf[1 << 18];

static void on_readable(conn_t *c) {
    for (int loops = 0; loops < 16; loops++) {
        ssize_t r = read(c->fd, rbuf, sizeof rbuf);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            if (c->state == ST_HDR) err_eof_hdr++;
            else err_reset++;
            conn_dead(c, c->state == ST_HDR);
            return;
        }
        if (r == 0) {
            if (c->state == ST_HDR) err_eof_hdr++;
            conn_dead(c, c->state == ST_HDR);
            return;
        }
        total_bytes += (uint64_t)r;
        cur_now = now_ns();
        if (!c->t_body && c->state == ST_BODY) c->t_body = cur_now;
        const char *p = rbuf;
        size_t n = (size_t)r;
        if (c->state == ST_HDR) {
            if (!c->hdr) c->hdr = malloc(8192);
            size_t room = 8191 - c->hdr_len;
            size_t take = n < room ? n : room;
            memcpy(c->hdr + c->hdr_len, p, take);
            c->hdr_len += (uint32_t)take;
            c->hdr[c->hdr_len] = 0;
            char *e = strstr(c->hdr, "\r\n\r\n");
            if (!e) {
                if (c->hdr_len >= 8191) {
                    err_status++;
                    conn_dead(c, 1);
                    return;
                }
                continue;
            }
            size_t hlen = (size_t)(e - c->hdr) + 4;
            size_t already = c->hdr_len - take; /* bytes of this read consumed before */
            size_t used_from_read = hlen - already;
            char *h = c->hdr;
            c->hdr = NULL;
            got_headers(c, h, hlen);
            free(h);
            if (c->state != ST_BODY) return;
            p += used_from_read;
            n -= used_from_read;
        }
        if (n) {
            if (!c->t_body) c->t_body = cur_now;
            body_feed(c, p, n);
        }
        if ((size_t)r < sizeof rbuf) return;
    }
}

static char reqbuf[512];

static void start_conns(void) {
    if (!go_started) return;
    while (started < opt_conns && pending < opt_max_pending) {
        int idx = started++;
        conn_t *c = &conns[idx];
        memset(c, 0, sizeof *c);
        c->first_s = c->last_s = c->cut_s = -1;
        c->stalled = idx < opt_stalled;
        c->t_start = now_ns();
        c->fd = open_conn(idx);
        if (c->fd < 0) {
            err_connect++;
            n_failed++;
            c->state = ST_DEAD;
            continue;
        }
        c->state = ST_CONNECTING;
        pending++;
        struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)idx};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }
}

/* "cut": close every reader's socket at once, then open them all again at
 * once (no --max-pending limit: a storm), each to send its Last-Event-ID. */
static void cut_all(void) {
    t_cut = now_ns();
    int k = 0;
    for (int i = 0; i < started; i++) {
        conn_t *c = &conns[i];
        if (c->state != ST_BODY || c->cut) continue;
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        c->cut = 1;
        c->cut_s = c->last_s;
        c->state = ST_DEAD;
        k++;
    }
    n_cut += k;
    for (int i = 0; i < started; i++) {
        conn_t *c = &conns[i];
        if (c->cut != 1 || c->state != ST_DEAD) continue;
        /* a fresh parser; the s summary and the last event id are kept */
        c->cstate = c->pstate = c->field = c->cr = c->m = c->num = 0;
        c->has_data = c->has_t = c->has_s = 0;
        c->chunk_left = 0;
        c->hdr_len = 0;
        memcpy(c->pend_id, c->last_id, c->last_id_len);
        c->pend_id_len = c->last_id_len;
        c->id_over = 0;
        c->fd = open_conn(i);
        if (c->fd < 0) {
            err_connect++;
            n_refailed++;
            continue;
        }
        c->state = ST_CONNECTING;
        pending++;
        struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }
}

static void on_connect(conn_t *c, int idx) {
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        err_connect++;
        conn_dead(c, 1);
        return;
    }
    int len;
    char lei[MAX_ID + 24] = "";
    if (c->cut && c->last_id_len)
        snprintf(lei, sizeof lei, "Last-Event-ID: %.*s\r\n", (int)c->last_id_len, c->last_id);
    if (opt_channels > 0)
        len = snprintf(reqbuf, sizeof reqbuf,
                       "GET %s?%s=ch%d%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                       "Cache-Control: no-cache\r\n%s\r\n",
                       opt_path, opt_param, idx % opt_channels, opt_suffix, opt_host, opt_port, lei);
    else
        len = snprintf(reqbuf, sizeof reqbuf,
                       "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                       "Cache-Control: no-cache\r\n%s\r\n",
                       opt_path, opt_host, opt_port, lei);
    if (write(c->fd, reqbuf, (size_t)len) != len) {
        err_connect++;
        conn_dead(c, 1);
        return;
    }
    if (c->stalled) {
        /* a client that never reads: stop watching it entirely */
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->state = ST_STALLED;
        pending--;
        n_connected++;
        n_stalled_ok++;
        return;
    }
    c->state = ST_HDR;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void print_stat(const char *prefix) {
    printf("%s connected=%d failed=%d closed=%d readers=%d warm=%d complete=%d events=%llu warm_events=%llu "
           "comments=%llu bytes=%llu\n",
           prefix, n_connected, n_failed, n_closed, readers_connected, readers_warm, readers_complete,
           (unsigned long long)total_events, (unsigned long long)total_warm,
           (unsigned long long)total_comments, (unsigned long long)total_bytes);
    fflush(stdout);
}

static void print_hist(const char *name, const uint64_t *h) {
    printf(",\"%s\":[", name);
    int first = 1;
    for (int i = 0; i < HBUCKETS; i++)
        if (h[i]) {
            printf("%s[%.1f,%llu]", first ? "" : ",", hmid(i), (unsigned long long)h[i]);
            first = 0;
        }
    printf("]");
}

/* The subscribe times, the s summaries and the cut of every reader, as
 * JSON members (without braces) after RESULT's counts. */
static void print_sequences(void) {
    uint64_t t0 = 0, hdr_max = 0, body_max = 0, rehdr_max = 0, caught_max = 0;
    uint64_t dups = 0, gaps = 0, head = 0, tail = 0, replayed = 0;
    int readers = 0, with_body = 0, lossy = 0, duped = 0, replayed_clients = 0;
    uint32_t replayed_max = 0;
    int64_t step = opt_channels > 0 ? opt_channels : 1;
    for (int i = 0; i < started; i++) {
        conn_t *c = &conns[i];
        if (c->t_start && (!t0 || c->t_start < t0)) t0 = c->t_start;
        if (!c->t_hdr || c->stalled) continue;
        readers++;
        if (c->t_hdr > hdr_max) hdr_max = c->t_hdr;
        if (c->t_body) {
            with_body++;
            if (c->t_body > body_max) body_max = c->t_body;
        }
        dups += c->dups;
        gaps += c->gaps;
        if (c->dups) duped++;
        if (c->cut == 2) {
            uint64_t caught = c->t_caught ? c->t_caught : c->t_rehdr;
            if (caught > caught_max) caught_max = caught;
            if (c->t_rehdr > rehdr_max) rehdr_max = c->t_rehdr;
            replayed += c->replayed;
            if (c->replayed) replayed_clients++;
            if (c->replayed > replayed_max) replayed_max = c->replayed;
        }
        if (n_published >= 0) {
            int64_t k = opt_channels > 0 ? i % opt_channels : 0;
            int64_t n_exp = n_published > k ? (n_published - 1 - k) / step + 1 : 0;
            int64_t h = c->last_s < 0 ? n_exp : (c->first_s - k) / step;
            int64_t t = c->last_s < 0 ? 0 : (k + (n_exp - 1) * step - c->last_s) / step;
            if (h < 0) h = 0;
            if (t < 0) t = 0;
            head += (uint64_t)h;
            tail += (uint64_t)t;
            if (h || t || c->gaps) lossy++;
        }
    }
    printf(",\"sub_t0_ns\":%llu,\"sub_hdr_max_ns\":%llu,\"sub_body_max_ns\":%llu,\"sub_readers\":%d,"
           "\"sub_with_body\":%d,\"dups\":%llu,\"dup_clients\":%d,\"gaps\":%llu,\"published\":%ld,"
           "\"lost_head\":%llu,\"lost_tail\":%llu,\"lossy_clients\":%d,\"cut\":%d,\"reconnected\":%d,"
           "\"refailed\":%d,\"t_cut_ns\":%llu,\"rehdr_max_ns\":%llu,\"caught_max_ns\":%llu,"
           "\"replayed\":%llu,\"replayed_clients\":%d,\"replayed_max\":%u",
           (unsigned long long)t0, (unsigned long long)hdr_max, (unsigned long long)body_max, readers, with_body,
           (unsigned long long)dups, duped, (unsigned long long)gaps, n_published, (unsigned long long)head,
           (unsigned long long)tail, lossy, n_cut, n_reconnected, n_refailed, (unsigned long long)t_cut,
           (unsigned long long)rehdr_max, (unsigned long long)caught_max, (unsigned long long)replayed,
           replayed_clients, replayed_max);
    print_hist("sub_hist_us", sub_hist);
    print_hist("resub_hist_us", resub_hist);
}

static void print_result(const char *why) {
    uint32_t mn = UINT32_MAX, mx = 0;
    int open_readers = 0, open_stalled = 0;
    for (int i = 0; i < started; i++) {
        conn_t *c = &conns[i];
        if (c->state == ST_BODY) {
            open_readers++;
            if (c->nevents < mn) mn = c->nevents;
            if (c->nevents > mx) mx = c->nevents;
        } else if (c->state == ST_STALLED) {
            open_stalled++;
        }
    }
    if (mn == UINT32_MAX) mn = 0;
    printf("RESULT {\"why\":\"%s\",\"conns\":%d,\"started\":%d,\"connected\":%d,\"failed\":%d,\"closed\":%d,"
           "\"stalled\":%d,\"open_readers\":%d,\"open_stalled\":%d,\"readers_warm\":%d,\"readers_complete\":%d,"
           "\"events\":%llu,\"warm_events\":%llu,\"comments\":%llu,\"bytes\":%llu,\"min_events\":%u,"
           "\"max_events\":%u,\"first_ns\":%llu,\"last_ns\":%llu,\"err_connect\":%d,\"err_status\":%d,"
           "\"err_eof_hdr\":%d,\"err_reset\":%d,\"lat_n\":%llu,\"lat_hist_us\":[",
           why, opt_conns, started, n_connected, n_failed, n_closed, n_stalled_ok, open_readers, open_stalled,
           readers_warm, readers_complete, (unsigned long long)total_events, (unsigned long long)total_warm,
           (unsigned long long)total_comments, (unsigned long long)total_bytes, mn, mx,
           (unsigned long long)first_ns, (unsigned long long)last_ns, err_connect, err_status, err_eof_hdr,
           err_reset, (unsigned long long)lat_n);
    int first = 1;
    for (int i = 0; i < HBUCKETS; i++)
        if (hist[i]) {
            printf("%s[%.1f,%llu]", first ? "" : ",", hmid(i), (unsigned long long)hist[i]);
            first = 0;
        }
    printf("]");
    print_sequences();
    printf("}\n");
    fflush(stdout);
}

static char cmdbuf[1024];
static size_t cmdlen;

/* returns 1 to quit */
static int on_stdin(void) {
    ssize_t r = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return 0;
        return 1;
    }
    cmdlen += (size_t)r;
    cmdbuf[cmdlen] = 0;
    char *nl;
    while ((nl = memchr(cmdbuf, '\n', cmdlen))) {
        *nl = 0;
        int quit = 0;
        if (strcmp(cmdbuf, "stat") == 0) print_stat("STAT");
        else if (strncmp(cmdbuf, "total ", 6) == 0) {
            total_target = strtoull(cmdbuf + 6, NULL, 10);
            announced_done = 0;
        } else if (strcmp(cmdbuf, "reset") == 0) {
            total_events = 0;
            first_ns = last_ns = 0;
            lat_n = 0;
            memset(hist, 0, sizeof hist);
            readers_complete = 0;
            for (int i = 0; i < started; i++) {
                conns[i].nevents = 0;
                conns[i].complete = 0;
                conns[i].first_s = conns[i].last_s = -1;
                conns[i].dups = conns[i].gaps = 0;
            }
            announced_done = 0;
        } else if (strcmp(cmdbuf, "go") == 0) go_started = 1;
        else if (strcmp(cmdbuf, "cut") == 0) want_cut = 1; /* done between epoll batches */
        else if (strncmp(cmdbuf, "published ", 10) == 0) n_published = strtol(cmdbuf + 10, NULL, 10);
        else if (strcmp(cmdbuf, "quit") == 0) quit = 1;
        size_t used = (size_t)(nl - cmdbuf) + 1;
        memmove(cmdbuf, nl + 1, cmdlen - used);
        cmdlen -= used;
        cmdbuf[cmdlen] = 0;
        if (quit) return 1;
    }
    if (cmdlen >= sizeof cmdbuf - 1) cmdlen = 0;
    return 0;
}

static int run_sub(void) {
    conns = calloc((size_t)opt_conns, sizeof(conn_t));
    if (!conns) die("calloc");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    set_nonblock(0);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    int stdin_ok = epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev) == 0;
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(opt_time_limit * 1e9);
    struct epoll_event evs[1024];
    const char *why = "time-limit";
    int readers_target = opt_conns - opt_stalled;
    (void)min_ev_dummy;
    if (opt_wait_go) go_started = 0;
    for (;;) {
        if (want_cut) {
            want_cut = 0;
            cut_all();
        }
        start_conns();
        if (n_cut && !announced_reconnected && n_reconnected + n_refailed >= n_cut) {
            announced_reconnected = 1;
            printf("RECONNECTED %d %d\n", n_reconnected, n_refailed);
            fflush(stdout);
        }
        if (!announced_connected && n_connected + n_failed >= opt_conns) {
            announced_connected = 1;
            printf("CONNECTED %d %d\n", n_connected, n_failed);
            fflush(stdout);
        }
        int live_readers = readers_connected - (n_closed);
        if (announced_connected && !announced_warm && readers_warm >= live_readers) {
            announced_warm = 1;
            printf("WARM %d\n", readers_warm);
            fflush(stdout);
        }
        if (announced_connected && !announced_done &&
            ((opt_expect && readers_complete >= readers_target && readers_target > 0) ||
             (total_target && total_events >= total_target))) {
            announced_done = 1;
            printf("DONE %llu\n", (unsigned long long)total_events);
            fflush(stdout);
        }
        uint64_t now = now_ns();
        if (now >= deadline) break;
        int timeout = (int)((deadline - now) / 1000000) + 1;
        if (timeout > 100) timeout = 100;
        int n = epoll_wait(epfd, evs, 1024, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        int quit = 0;
        for (int i = 0; i < n; i++) {
            uint32_t idx = evs[i].data.u32;
            if (idx == UINT32_MAX) {
                if (on_stdin()) quit = 1;
                continue;
            }
            conn_t *c = &conns[idx];
            if (c->state == ST_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connect(c, (int)idx);
            } else if (c->state == ST_HDR || c->state == ST_BODY) {
                on_readable(c);
            }
        }
        if (quit) {
            why = "quit";
            break;
        }
    }
    (void)stdin_ok;
    print_result(why);
    return 0;
}

/* ======================================================================
 * pub mode
 * ====================================================================== */
enum { PC_CONNECTING, PC_IDLE, PC_SENDING, PC_WAITING, PC_DEAD };
typedef struct {
    int fd;
    int state;
    char *out;
    size_t out_len, out_off;
    char in[16384];
    size_t in_len;
    uint64_t sent_ns;
} pconn_t;

static long opt_count = 100;
static double opt_rate = 0;
static int opt_size = 100, opt_pconns = 1, opt_warm = 0, opt_rr = 0;
static const char *opt_channel = "bench", *opt_event = "tick";
static pconn_t *pconns;
static long p_sent, p_ok, p_non2xx, p_err, p_reconnects;
static uint64_t p_first_ns, p_last_send_ns, p_last_resp_ns;
static uint64_t p_max_wait_ns; /* longest time a POST waited for its response */
static char *pad;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t xorshift(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void p_open(pconn_t *pc, int idx) {
    pc->fd = open_conn(idx);
    pc->in_len = 0;
    pc->out_len = pc->out_off = 0;
    if (pc->fd < 0) {
        pc->state = PC_DEAD;
        p_err++;
        return;
    }
    pc->state = PC_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)idx};
    epoll_ctl(epfd, EPOLL_CTL_ADD, pc->fd, &ev);
}

static void p_close(pconn_t *pc, int idx, int reopen) {
    if (pc->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, pc->fd, NULL);
        close(pc->fd);
        pc->fd = -1;
    }
    pc->state = PC_DEAD;
    if (reopen) {
        p_reconnects++;
        p_open(pc, idx);
    }
}

static int p_flush(pconn_t *pc) {
    while (pc->out_off < pc->out_len) {
        ssize_t w = write(pc->fd, pc->out + pc->out_off, pc->out_len - pc->out_off);
        if (w < 0) {
            if (errno == EAGAIN) return 0;
            return -1;
        }
        pc->out_off += (size_t)w;
    }
    return 1;
}

static void p_watch(pconn_t *pc, int idx, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0), .data.u32 = (uint32_t)idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, pc->fd, &ev);
}

static void p_send(pconn_t *pc, int idx) {
    char chan[64];
    if (opt_channels > 0) {
        long k = opt_rr ? (p_sent % opt_channels) : (long)(xorshift() % (uint64_t)opt_channels);
        snprintf(chan, sizeof chan, "ch%ld%s", k, opt_suffix);
    } else {
        snprintf(chan, sizeof chan, "%s", opt_channel);
    }
    uint64_t t = now_ns();
    char body_head[256];
    int bh;
    if (opt_warm)
        bh = snprintf(body_head, sizeof body_head, "{\"channel\":\"%s\",\"event\":\"warm\",\"data\":{\"w\":%ld,\"p\":\"",
                      chan, p_sent);
    else
        bh = snprintf(body_head, sizeof body_head,
                      "{\"channel\":\"%s\",\"event\":\"%s\",\"data\":{\"t\":%llu,\"s\":%ld,\"p\":\"", chan, opt_event,
                      (unsigned long long)t, p_sent);
    size_t padlen = opt_warm ? 1 : (size_t)opt_size;
    size_t blen = (size_t)bh + padlen + 3;
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr,
                      "POST /publish HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      opt_host, opt_port, blen);
    size_t total = (size_t)hl + blen;
    pc->out = realloc(pc->out, total);
    memcpy(pc->out, hdr, (size_t)hl);
    memcpy(pc->out + hl, body_head, (size_t)bh);
    memcpy(pc->out + hl + bh, pad, padlen);
    memcpy(pc->out + hl + bh + padlen, "\"}}", 3);
    pc->out_len = total;
    pc->out_off = 0;
    pc->sent_ns = t;
    if (!p_first_ns) p_first_ns = t;
    p_last_send_ns = t;
    p_sent++;
    int r = p_flush(pc);
    if (r < 0) {
        p_err++;
        p_close(pc, idx, 1);
        return;
    }
    pc->state = r ? PC_WAITING : PC_SENDING;
    if (!r) p_watch(pc, idx, 1);
}

/* parse one response from pc->in; return 1 when complete */
static int p_try_response(pconn_t *pc) {
    pc->in[pc->in_len] = 0;
    char *e = strstr(pc->in, "\r\n\r\n");
    if (!e) return 0;
    size_t hlen = (size_t)(e - pc->in) + 4;
    int status = (pc->in_len > 12) ? atoi(pc->in + 9) : 0;
    long clen = -1;
    int chunked = 0;
    for (char *line = strstr(pc->in, "\r\n"); line && line < e; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) clen = atol(line + 17);
        else if (strncasecmp(line + 2, "transfer-encoding:", 18) == 0 && strstr(line + 2, "chunked") &&
                 strstr(line + 2, "chunked") < strstr(line + 2, "\r\n"))
            chunked = 1;
    }
    size_t need;
    if (clen >= 0) {
        need = hlen + (size_t)clen;
        if (pc->in_len < need) return 0;
    } else if (chunked) {
        char *z = strstr(e + 4, "0\r\n\r\n");
        if (!z) return 0;
        need = (size_t)(z - pc->in) + 5;
    } else {
        need = hlen; /* no body expected (e.g. 204) */
    }
    if (status >= 200 && status < 300) p_ok++;
    else p_non2xx++;
    memmove(pc->in, pc->in + need, pc->in_len - need);
    pc->in_len -= need;
    p_last_resp_ns = now_ns();
    if (p_last_resp_ns - pc->sent_ns > p_max_wait_ns) p_max_wait_ns = p_last_resp_ns - pc->sent_ns;
    return 1;
}

static int run_pub(void) {
    epfd = epoll_create1(EPOLL_CLOEXEC);
    pad = malloc((size_t)opt_size + 1);
    memset(pad, 'x', (size_t)opt_size);
    pconns = calloc((size_t)opt_pconns, sizeof(pconn_t));
    for (int i = 0; i < opt_pconns; i++) {
        pconns[i].fd = -1;
        p_open(&pconns[i], i);
    }
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(opt_time_limit * 1e9);
    uint64_t interval = opt_rate > 0 ? (uint64_t)(1e9 / opt_rate) : 0;
    uint64_t next_at = t0;
    struct epoll_event evs[256];
    const char *why = "time-limit";
    for (;;) {
        uint64_t now = now_ns();
        if (p_ok + p_non2xx + p_err >= opt_count) {
            why = "done";
            break;
        }
        if (now >= deadline) break;
        /* send on idle connections */
        for (int i = 0; i < opt_pconns && p_sent < opt_count; i++) {
            if (pconns[i].state != PC_IDLE) continue;
            now = now_ns();
            if (interval && now < next_at) break;
            p_send(&pconns[i], i);
            if (interval) next_at += interval;
            if (interval && next_at < now) next_at = now; /* fell behind: don't burst to catch up */
        }
        int timeout = 50;
        if (interval && p_sent < opt_count) {
            now = now_ns();
            int64_t d = (int64_t)(next_at - now);
            timeout = d <= 0 ? 0 : (int)(d / 1000000);
        }
        int n = epoll_wait(epfd, evs, 256, timeout);
        if (interval && n == 0 && timeout == 0) {
            /* sub-millisecond wait: spin politely */
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            pconn_t *pc = &pconns[i];
            if (pc->state == PC_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(pc->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    p_err++;
                    p_close(pc, i, 0);
                    continue;
                }
                pc->state = PC_IDLE;
                p_watch(pc, i, 0);
                continue;
            }
            if (pc->state == PC_SENDING && (evs[k].events & EPOLLOUT)) {
                int r = p_flush(pc);
                if (r < 0) {
                    p_err++;
                    p_close(pc, i, 1);
                    continue;
                }
                if (r) {
                    pc->state = PC_WAITING;
                    p_watch(pc, i, 0);
                }
            }
            if (evs[k].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                ssize_t r = read(pc->fd, pc->in + pc->in_len, sizeof pc->in - 1 - pc->in_len);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    if (pc->state == PC_WAITING || pc->state == PC_SENDING) p_err++;
                    p_close(pc, i, p_sent < opt_count);
                    continue;
                }
                pc->in_len += (size_t)r;
                if (pc->state == PC_WAITING && p_try_response(pc)) pc->state = PC_IDLE;
                if (pc->in_len >= sizeof pc->in - 1) pc->in_len = 0; /* oversized response: drop */
            }
        }
        int alive = 0;
        for (int i = 0; i < opt_pconns; i++) alive += pconns[i].state != PC_DEAD;
        if (!alive) {
            why = "no-connection";
            break;
        }
    }
    printf("RESULT {\"why\":\"%s\",\"count\":%ld,\"sent\":%ld,\"ok\":%ld,\"non2xx\":%ld,\"errors\":%ld,"
           "\"reconnects\":%ld,\"first_ns\":%llu,\"last_send_ns\":%llu,\"last_resp_ns\":%llu,"
           "\"max_wait_ns\":%llu}\n",
           why, opt_count, p_sent, p_ok, p_non2xx, p_err, p_reconnects, (unsigned long long)p_first_ns,
           (unsigned long long)p_last_send_ns, (unsigned long long)p_last_resp_ns,
           (unsigned long long)p_max_wait_ns);
    fflush(stdout);
    return 0;
}

/* ====================================================================== */
static void usage(void) {
    fprintf(stderr,
            "usage: loadgen sub --port P [--host H] [--conns N] [--stalled S] [--channels M] [--expect E]\n"
            "                   [--max-pending K] [--src a,b] [--path /events] [--time-limit SEC] [--wait-go]\n"
            "                   [--param channel|pattern] [--suffix S]   (with --channels: ?PARAM=ch<k>S)\n"
            "       loadgen pub --port P [--host H] [--count N] [--rate R] [--size B] [--conns K]\n"
            "                   [--channel C | --channels M [--rr] [--suffix S]] [--event E] [--warm] [--time-limit SEC]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    int is_sub = strcmp(argv[1], "sub") == 0;
    if (!is_sub && strcmp(argv[1], "pub") != 0) usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && v && (i++, 1))
        if (OPT("--host")) opt_host = v;
        else if (OPT("--port")) opt_port = atoi(v);
        else if (OPT("--conns")) { opt_conns = atoi(v); opt_pconns = atoi(v); }
        else if (OPT("--stalled")) opt_stalled = atoi(v);
        else if (OPT("--channels")) opt_channels = atoi(v);
        else if (OPT("--channel")) opt_channel = v;
        else if (OPT("--expect")) opt_expect = atol(v);
        else if (OPT("--max-pending")) opt_max_pending = atoi(v);
        else if (OPT("--src")) opt_src = (char *)v;
        else if (OPT("--path")) opt_path = v;
        else if (OPT("--param")) opt_param = v;
        else if (OPT("--suffix")) opt_suffix = v;
        else if (OPT("--time-limit")) opt_time_limit = atof(v);
        else if (OPT("--count")) opt_count = atol(v);
        else if (OPT("--rate")) opt_rate = atof(v);
        else if (OPT("--size")) opt_size = atoi(v);
        else if (OPT("--event")) opt_event = v;
        else if (OPT("--seed")) rng = strtoull(v, NULL, 10) | 1;
        else if (strcmp(a, "--warm") == 0) opt_warm = 1;
        else if (strcmp(a, "--wait-go") == 0) opt_wait_go = 1;
        else if (strcmp(a, "--rr") == 0) opt_rr = 1;
        else usage();
#undef OPT
    }
    if (!opt_port) usage();
    if (opt_time_limit <= 0 || opt_time_limit > 3600) opt_time_limit = 60;
    if (opt_conns < 1 || opt_conns > 100000) usage();
    if (opt_count < 0 || opt_count > 10000000) usage();
    if (opt_size < 0 || opt_size > (1 << 22)) usage();
    parse_src();
    return is_sub ? run_sub() : run_pub();
}
