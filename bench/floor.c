/* The kernel's floor under a proxied keep-alive request on this machine: what the four system calls a proxy
 * cannot avoid (receive the request, send it on, receive the response, send it back) cost on loopback TCP
 * when nothing else runs and nothing sleeps. One thread sends on one end of a connection and receives on the
 * other, so every send also pays the receiving side's TCP (loopback delivers in the sender's context), as a
 * proxy's sends do. Build and run: bench/floor.sh. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

/* A connected pair of TCP sockets on 127.0.0.1, with TCP_NODELAY as proxies set it. */
static void pair(int *a, int *b) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof addr;
    if (l < 0 || bind(l, (void *)&addr, sizeof addr) || listen(l, 1) || getsockname(l, (void *)&addr, &len)) {
        perror("listen");
        exit(1);
    }
    *a = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(*a, (void *)&addr, sizeof addr)) {
        perror("connect");
        exit(1);
    }
    *b = accept(l, 0, 0);
    setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(l);
}

static void send_all(int fd, const char *buf, size_t size) {
    if (send(fd, buf, size, MSG_NOSIGNAL) != (ssize_t)size) {
        perror("send");
        exit(1);
    }
}

static void receive(int fd, size_t size) {
    static char in[65536];
    for (size_t got = 0; got < size;) {
        ssize_t r = recv(fd, in, sizeof in, 0);
        if (r <= 0) {
            perror("recv");
            exit(1);
        }
        got += r;
    }
}

/* CPU microseconds per exchange: `request` bytes one way, `response` bytes back, each sent and received.
 * These are a proxy's four calls per request (its sends to the server and to the client each running the
 * receiver's TCP too); as in a proxy, the acknowledgements ride on the data going the other way. */
static double exchanges(int client, int server, size_t request, size_t response, int n) {
    char *req = calloc(1, request), *resp = calloc(1, response);
    double start = cpu_seconds();
    for (int i = 0; i < n; i++) {
        send_all(client, req, request);
        receive(server, request);
        send_all(server, resp, response);
        receive(client, response);
    }
    free(req);
    free(resp);
    return (cpu_seconds() - start) * 1e6 / n;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 200000;
    size_t request = argc > 2 ? atoi(argv[2]) : 80, response = argc > 3 ? atoi(argv[3]) : 250;
    int client, server;
    pair(&client, &server);
    exchanges(client, server, request, response, n / 10); /* warm up */
    printf("floor per proxied request (%zu-byte request, %zu-byte response): %.2f us of CPU\n", request, response,
           exchanges(client, server, request, response, n));
    return 0;
}
