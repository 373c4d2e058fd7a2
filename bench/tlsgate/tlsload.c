/* TLS handshake load: THREADS threads, each a loop of full TLS handshakes (no resumption) for
 * SECONDS (and at most MAX_PER_THREAD handshakes), each followed by one HTTP request and the
 * first byte of the answer (then the rest of it, up to the server's close).
 *
 *   tlsload ADDR PORT SNI CAFILE THREADS SECONDS
 *
 * Prints one line: "<ok> <errors> <p50_us> <p99_us> <elapsed_s>", where a latency is the time
 * from socket() to the first byte of the answer (time to first byte, the handshake included).
 * Certificates are verified against CAFILE and the name SNI, as a real client does.
 * Build: gcc -O2 -Wall -pthread -o tlsload tlsload.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_PER_THREAD 200000

static struct sockaddr_storage target;
static socklen_t target_len;
static const char *sni;
static SSL_CTX *ctx;
static double seconds;

struct worker {
    pthread_t thread;
    long ok, errors;
    long n;
    unsigned *lat;   /* microseconds */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int one(unsigned *lat_us)
{
    char req[512], byte;
    struct timeval tv = {5, 0};
    int fd, rc = -1, len;
    SSL *ssl = NULL;
    double t0 = now();

    fd = socket(target.ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&target, target_len) < 0)
        goto out;
    ssl = SSL_new(ctx);
    if (!ssl)
        goto out;
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, sni);
    SSL_set1_host(ssl, sni);
    if (SSL_connect(ssl) != 1)
        goto out;
    len = snprintf(req, sizeof(req), "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", sni);
    if (SSL_write(ssl, req, len) != len)
        goto out;
    if (SSL_read(ssl, &byte, 1) != 1)
        goto out;
    *lat_us = (unsigned)((now() - t0) * 1e6);
    /* Read the rest of the (short) answer up to the server's close, as a client does, so that
     * the connection ends with FIN on both sides, not with a reset for unread data. */
    for (len = 0; len < 64; len++) {
        char rest[512];
        if (SSL_read(ssl, rest, sizeof(rest)) <= 0)
            break;
    }
    rc = 0;
out:
    if (ssl) {
        SSL_set_quiet_shutdown(ssl, 1);
        SSL_free(ssl);
    }
    close(fd);
    ERR_clear_error();
    return rc;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    double end = now() + seconds;
    w->lat = malloc(sizeof(unsigned) * MAX_PER_THREAD);
    if (!w->lat)
        return NULL;
    while (now() < end && w->ok + w->errors < MAX_PER_THREAD) {
        unsigned lat;
        if (one(&lat) == 0) {
            w->lat[w->n++] = lat;
            w->ok++;
        } else {
            w->errors++;
        }
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)&target;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&target;
    int threads, i;
    long ok = 0, errors = 0, n = 0, k = 0;
    unsigned *all;
    double t0, elapsed;
    struct worker *w;

    if (argc != 7) {
        fprintf(stderr, "usage: tlsload ADDR PORT SNI CAFILE THREADS SECONDS\n");
        return 2;
    }
    memset(&target, 0, sizeof(target));
    if (inet_pton(AF_INET, argv[1], &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(atoi(argv[2]));
        target_len = sizeof(*s4);
    } else if (inet_pton(AF_INET6, argv[1], &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(atoi(argv[2]));
        target_len = sizeof(*s6);
    } else {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    sni = argv[3];
    threads = atoi(argv[5]);
    seconds = atof(argv[6]);
    if (threads < 1 || threads > 512 || seconds <= 0 || seconds > 600) {
        fprintf(stderr, "threads 1..512, seconds 0..600\n");
        return 2;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, argv[4], NULL) != 1) {
        fprintf(stderr, "cannot load %s\n", argv[4]);
        return 2;
    }
    w = calloc(threads, sizeof(*w));
    t0 = now();
    for (i = 0; i < threads; i++)
        pthread_create(&w[i].thread, NULL, run, &w[i]);
    for (i = 0; i < threads; i++) {
        pthread_join(w[i].thread, NULL);
        ok += w[i].ok;
        errors += w[i].errors;
        n += w[i].n;
    }
    elapsed = now() - t0;
    all = malloc(sizeof(unsigned) * (n ? n : 1));
    for (i = 0; i < threads; i++) {
        if (w[i].lat)
            memcpy(all + k, w[i].lat, sizeof(unsigned) * w[i].n);
        k += w[i].n;
    }
    qsort(all, n, sizeof(unsigned), cmp);
    printf("%ld %ld %u %u %.3f\n", ok, errors, n ? all[n / 2] : 0, n ? all[(n * 99) / 100] : 0, elapsed);
    return 0;
}
