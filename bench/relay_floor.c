/*
 * A native vpnkit-shaped relay pair, the ceiling under bench_vpnkit.py's connection rate.
 *
 * Built and run by bench_relay_floor.py (only when a C compiler is there); never part of
 * vrtwist.  One epoll loop per process, a unix-socket link between them carrying vpnkit
 * frames (hdrlen u16, command u8, id u32, little endian: Open with a TCP IPv4
 * destination, Data, Shutdown, Close), one channel per proxied connection.  What the
 * real relays also do and this does not: the handshake, Window frames and flow control
 * (the benchmark's connections carry no data), UDP, unix destinations, error paths.
 *
 *   relay_floor host LINK_PATH LISTEN_PORT DEST_PORT SPIN_US
 *   relay_floor fwd  LINK_PATH SPIN_US
 *
 * SPIN_US > 0 polls with a zero timeout for that long after the last event (yielding
 * the core on every empty poll), as vpnkit's --busy-poll does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { OPEN = 1, CLOSE = 2, SHUTDOWN = 3, DATA = 4 };
#define MAXFD 65536

static int link_fd, ep, is_host;
static long spin_ns;
static uint32_t chan_of_fd[MAXFD];
static int fd_of_chan[MAXFD]; /* ids are folded into the table: few live at once */

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void send_all(const char *b, size_t n) {
    while (n) {
        ssize_t k = send(link_fd, b, n, 0);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("link send");
            exit(1);
        }
        b += k;
        n -= (size_t)k;
    }
}

static size_t put_hdr(char *b, uint16_t hdrlen, uint8_t cmd, uint32_t id) {
    memcpy(b, &hdrlen, 2);
    b[2] = (char)cmd;
    memcpy(b + 3, &id, 4);
    return 7;
}

static size_t put_simple(char *b, uint8_t cmd, uint32_t id) { return put_hdr(b, 7, cmd, id); }

/* A Data header; its n payload bytes are already right after it. */
static size_t put_data_hdr(char *b, uint32_t id, uint32_t n) {
    put_hdr(b, 11, DATA, id);
    memcpy(b + 7, &n, 4);
    return 11 + n;
}

static size_t put_open(char *b, uint32_t id, uint16_t port) {
    uint16_t iplen = 4;
    uint32_t ip = htonl(0x7f000001);
    put_hdr(b, 8 + 1 + 2 + 4 + 2, OPEN, id);
    b[7] = 2; /* Multiplexed */
    b[8] = 1; /* TCP */
    memcpy(b + 9, &iplen, 2);
    memcpy(b + 11, &ip, 4);
    memcpy(b + 15, &port, 2);
    return 17;
}

static void watch(int fd) {
    struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

static char rbuf[1 << 18];
static size_t rlen;

static void on_link(void) {
    ssize_t n = recv(link_fd, rbuf + rlen, sizeof rbuf - rlen, 0);
    if (n <= 0) exit(0);
    rlen += (size_t)n;
    size_t pos = 0;
    char out[64];
    size_t olen = 0;
    while (rlen - pos >= 7) {
        uint16_t hdrlen;
        uint32_t id, plen = 0;
        memcpy(&hdrlen, rbuf + pos, 2);
        uint8_t cmd = (uint8_t)rbuf[pos + 2];
        memcpy(&id, rbuf + pos + 3, 4);
        if (rlen - pos < hdrlen) break;
        if (cmd == DATA) {
            memcpy(&plen, rbuf + pos + 7, 4);
            if (rlen - pos < hdrlen + plen) break;
        }
        int fd = fd_of_chan[id % MAXFD];
        const char *p = rbuf + pos + hdrlen;
        if (cmd == OPEN && !is_host) {
            uint16_t port;
            uint32_t ip;
            memcpy(&ip, rbuf + pos + 11, 4);
            memcpy(&port, rbuf + pos + 15, 2);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
            a.sin_addr.s_addr = ip;
            int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            connect(s, (struct sockaddr *)&a, sizeof a); /* loopback: done at once */
            fd_of_chan[id % MAXFD] = s;
            chan_of_fd[s] = id;
            watch(s);
        } else if (cmd == DATA && fd > 0) {
            send(fd, p, plen, MSG_NOSIGNAL);
        } else if (cmd == SHUTDOWN && fd > 0) {
            shutdown(fd, SHUT_WR);
        } else if (cmd == CLOSE && fd > 0) {
            close(fd); /* an fd still watched leaves the epoll set as it closes */
            fd_of_chan[id % MAXFD] = 0;
            if (is_host) olen += put_simple(out + olen, CLOSE, id); /* answer the Close */
            if (olen > sizeof out - 8) {
                send_all(out, olen);
                olen = 0;
            }
        }
        pos += hdrlen + plen;
    }
    if (olen) send_all(out, olen);
    memmove(rbuf, rbuf + pos, rlen - pos);
    rlen -= pos;
}

static void on_local(int fd) {
    char b[11 + 65536 + 16];
    uint32_t id = chan_of_fd[fd];
    ssize_t n = recv(fd, b + 11, 65536, 0);
    if (n > 0) {
        send_all(b, put_data_hdr(b, id, (uint32_t)n));
    } else if (n == 0) {
        size_t k;
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        k = put_simple(b, SHUTDOWN, id);
        if (!is_host) k += put_simple(b + k, CLOSE, id); /* the destination is done */
        send_all(b, k);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: relay_floor host LINK LISTEN DEST SPIN | fwd LINK SPIN\n");
        return 2;
    }
    is_host = !strcmp(argv[1], "host");
    spin_ns = atol(argv[is_host ? 5 : 3]) * 1000L;
    ep = epoll_create1(0);
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    strncpy(u.sun_path, argv[2], sizeof u.sun_path - 1);
    int ls = -1;
    uint16_t dport = 0;
    uint32_t next_id = 0xFFFFFFFFu;
    if (is_host) {
        link_fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(link_fd, (struct sockaddr *)&u, sizeof u)) { perror("link"); return 1; }
        ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        a.sin_addr.s_addr = htonl(0x7f000001);
        if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 128)) { perror("listen"); return 1; }
        dport = (uint16_t)atoi(argv[4]);
        watch(ls);
    } else {
        unlink(argv[2]);
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(s, (struct sockaddr *)&u, sizeof u) || listen(s, 1)) { perror("link"); return 1; }
        link_fd = accept(s, NULL, NULL);
    }
    watch(link_fd);
    long last = 0;
    struct epoll_event evs[64];
    for (;;) {
        int n;
        if (spin_ns && now_ns() - last < spin_ns) {
            n = epoll_wait(ep, evs, 64, 0);
            if (n == 0) sched_yield();
        } else {
            n = epoll_wait(ep, evs, 64, -1);
        }
        if (n > 0 && spin_ns) last = now_ns();
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == link_fd) {
                on_link();
            } else if (fd == ls) {
                for (;;) {
                    int a = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (a < 0) break;
                    uint32_t id = next_id--;
                    char b[11 + 65536 + 32];
                    size_t k = put_open(b, id, dport);
                    fd_of_chan[id % MAXFD] = a;
                    chan_of_fd[a] = id;
                    ssize_t r = recv(a, b + k + 11, 65536, 0); /* the FIN is often there */
                    if (r == 0) {
                        k += put_simple(b + k, SHUTDOWN, id);
                    } else {
                        if (r > 0) k += put_data_hdr(b + k, id, (uint32_t)r);
                        watch(a);
                    }
                    send_all(b, k);
                }
            } else {
                on_local(fd);
            }
        }
    }
}
