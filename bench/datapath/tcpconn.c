/* Connection-rate tool for bench/datapath (lab addresses only).
 *   tcpconn server ADDR PORT            accept and close until killed
 *   tcpconn client ADDR PORT SECONDS    connect and close in a loop for SECONDS, print the count
 * The client closes with SO_LINGER 0 (RST), so no TIME_WAIT exhausts the ephemeral ports and
 * every iteration is a NEW connection through the firewall. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int addr_of(const char *text, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET; v4->sin_port = htons(port); *len = sizeof(*v4); return AF_INET;
    }
    if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6; v6->sin6_port = htons(port); *len = sizeof(*v6); return AF_INET6;
    }
    fprintf(stderr, "bad address %s\n", text);
    exit(2);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: tcpconn server|client ADDR PORT [SECONDS]\n"); return 2; }
    struct sockaddr_storage ss; socklen_t len;
    int family = addr_of(argv[2], atoi(argv[3]), &ss, &len);
    if (strcmp(argv[1], "server") == 0) {
        int s = socket(family, SOCK_STREAM, 0), one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(s, (struct sockaddr *)&ss, len) || listen(s, 4096)) { perror("server"); return 1; }
        printf("ready\n"); fflush(stdout);
        for (;;) { int c = accept(s, NULL, NULL); if (c >= 0) close(c); }
    }
    double seconds = argc > 4 ? atof(argv[4]) : 5.0, end = now() + seconds;
    long count = 0, errors = 0;
    struct linger lg = {1, 0};
    while (now() < end) {
        int c = socket(family, SOCK_STREAM, 0);
        setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        if (connect(c, (struct sockaddr *)&ss, len) == 0) count++; else errors++;
        close(c);
        if (errors > 1000) break;
    }
    printf("%ld %ld %.3f\n", count, errors, seconds);
    return errors > 1000;
}
