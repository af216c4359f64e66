/* The connection-rate floor: the least a user-space TCP forwarder can do per connection.
 *
 * Listens on LISTEN_IP:PORT in the netns it was started in, then enters the netns of CONNECT_NETNS
 * (a /proc/PID/ns/net path) and forwards every accepted connection to CONNECT_IP:PORT there, as
 * LXD's forkproxy and lxdproxy do for a proxy device. One thread, one edge-triggered epoll, each
 * fd registered once; accept4/socket made non-blocking at creation; a 16 KiB buffer per
 * direction; half-close propagated. No logging, no limits, no PROXY header, no unix sockets:
 * a benchmark reference only, never shipped.
 *
 * Usage: tcp_floor LISTEN_IP LISTEN_PORT CONNECT_NETNS CONNECT_IP CONNECT_PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384
#define MAX_EVENTS 256

struct conn;
struct half {
    int fd;
    int side; /* 0: client (accepted), 1: target (dialled) */
    struct conn *c;
};
struct conn {
    struct half h[2];
    char buf[2][BUF]; /* buf[d]: read from side d, to be written to side 1-d */
    int len[2], off[2];
    int eof[2];  /* side d said EOF */
    int shut[2]; /* we shut down writing to side d */
    int connected, dead;
    struct conn *next_dead;
};

static struct conn *dead_list;
static struct sockaddr_in target;

static void kill_conn(struct conn *c) {
    if (c->dead)
        return;
    c->dead = 1;
    close(c->h[0].fd); /* closing removes the fd from the epoll set */
    close(c->h[1].fd);
    c->next_dead = dead_list; /* freed after this batch of events: later events may name it */
    dead_list = c;
}

static void pump(struct conn *c) {
    for (int d = 0; d < 2 && !c->dead; d++) {
        int src = c->h[d].fd, dst = c->h[1 - d].fd;
        for (;;) {
            if (c->off[d] < c->len[d]) {
                ssize_t n = send(dst, c->buf[d] + c->off[d], c->len[d] - c->off[d], MSG_NOSIGNAL);
                if (n < 0) {
                    if (errno == EAGAIN)
                        break;
                    kill_conn(c);
                    return;
                }
                c->off[d] += n;
                continue;
            }
            if (c->eof[d])
                break;
            ssize_t n = recv(src, c->buf[d], BUF, 0);
            if (n < 0) {
                if (errno == EAGAIN)
                    break;
                kill_conn(c);
                return;
            }
            if (n == 0) {
                c->eof[d] = 1;
                break;
            }
            c->off[d] = 0;
            c->len[d] = n;
        }
        if (c->eof[d] && c->off[d] == c->len[d] && !c->shut[1 - d]) {
            shutdown(dst, SHUT_WR);
            c->shut[1 - d] = 1;
        }
    }
    if (!c->dead && c->shut[0] && c->shut[1])
        kill_conn(c);
}

static void on_accept(int ep, int lfd) {
    for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
            return; /* EAGAIN, or a client already gone */
        int tfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (tfd < 0) {
            close(cfd);
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(tfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(tfd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
            close(cfd);
            close(tfd);
            continue;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(cfd);
            close(tfd);
            continue;
        }
        for (int s = 0; s < 2; s++) {
            c->h[s].fd = s ? tfd : cfd;
            c->h[s].side = s;
            c->h[s].c = c;
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                     .data.ptr = &c->h[s]};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->h[s].fd, &ev);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s LISTEN_IP LISTEN_PORT CONNECT_NETNS CONNECT_IP CONNECT_PORT\n",
                argv[0]);
        return 2;
    }
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    target.sin_family = AF_INET;
    target.sin_port = htons(atoi(argv[5]));
    if (inet_pton(AF_INET, argv[1], &la.sin_addr) != 1 ||
        inet_pton(AF_INET, argv[4], &target.sin_addr) != 1) {
        fprintf(stderr, "tcp_floor: bad IPv4 address\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0) {
        perror("tcp_floor: listen");
        return 1;
    }
    int ns = open(argv[3], O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) {
        perror("tcp_floor: setns");
        return 1;
    }
    close(ns);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    printf("listening\n");
    fflush(stdout);
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            struct half *h = evs[i].data.ptr;
            if (h == NULL) {
                on_accept(ep, lfd);
                continue;
            }
            struct conn *c = h->c;
            if (c->dead)
                continue;
            if (!c->connected && h->side == 1) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    kill_conn(c);
                    continue;
                }
                c->connected = 1;
            }
            if (c->connected)
                pump(c);
        }
        while (dead_list) {
            struct conn *c = dead_list;
            dead_list = c->next_dead;
            free(c);
        }
    }
}
