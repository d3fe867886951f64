// docs/PERFORMANCE.md, "The kernel's floor under RTP": what io_uring would save a relay on
// this kernel, before building it into the media workers. Not part of the test suite.
//   apt-get install liburing-dev && cc -O2 benches/load/uring_relay.c -o /tmp/uring_relay -luring -lpthread
//   /tmp/uring_relay epoll 1000 8; /tmp/uring_relay uring 1000 8     (mode, streams, seconds)
//
// Relay microbenchmark: N streams, each a "phone" socket sending one 172-byte datagram per
// 20 ms to its relay socket; the relay forwards each datagram from the same socket to a sink.
// Mode "epoll": level-triggered epoll, recvfrom + sendto per datagram, 1 ms paced rounds.
// Mode "uring": multishot recvmsg per relay socket into a provided-buffer ring, sendmsg SQEs,
// one io_uring_enter per round, 1 ms paced rounds. Prints the relay thread's CPU per packet.
#define _GNU_SOURCE
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/syscall.h>

static int N = 1000, SECS = 10;
static int *relay, *phone, sink;
static struct sockaddr_in *relay_addr, sink_addr;
static volatile int stop;
static long relayed;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int udp(struct sockaddr_in *a) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in b = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
  bind(s, (void *)&b, sizeof b); socklen_t l = sizeof b; getsockname(s, (void *)&b, &l);
  if (a) *a = b;
  int big = 1 << 20; setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, sizeof big); return s;
}
static void *gen(void *x) { // each stream every 20 ms, spread over the period
  char buf[172]; memset(buf, 0x80, sizeof buf); double t0 = now(); long k = 0;
  while (!stop) {
    double due = t0 + (k / (double)N) * 0.02;
    double d = due - now(); if (d > 0) { struct timespec ts = { 0, (long)(d * 1e9) }; nanosleep(&ts, 0); }
    int i = k % N; sendto(phone[i], buf, sizeof buf, 0, (void *)&relay_addr[i], sizeof relay_addr[i]); k++;
  }
  return 0;
}
static void *drain(void *x) { char buf[2048]; while (!stop) recv(sink, buf, sizeof buf, 0); return 0; }
static void pace(double start) { double d = start + 0.001 - now(); if (d > 0) { struct timespec ts = { 0, (long)(d * 1e9) }; nanosleep(&ts, 0); } }

static void run_epoll(void) {
  int ep = epoll_create1(0); struct epoll_event ev[256];
  for (int i = 0; i < N; i++) { struct epoll_event e = { .events = EPOLLIN, .data.u32 = i }; epoll_ctl(ep, EPOLL_CTL_ADD, relay[i], &e); }
  char buf[2048]; double end = now() + SECS, c0 = cpu(); long n0 = relayed;
  while (now() < end) {
    double start = now();
    int n = syscall(SYS_epoll_pwait, ep, ev, 256, 100, NULL, 0);
    for (int j = 0; j < n; j++) {
      int i = ev[j].data.u32; struct sockaddr_storage from; socklen_t fl = sizeof from;
      long len = syscall(SYS_recvfrom, relay[i], buf, sizeof buf, MSG_DONTWAIT, &from, &fl);
      if (len <= 0) continue;
      buf[1] ^= 1; // "rewrite"
      syscall(SYS_sendto, relay[i], buf, len, MSG_DONTWAIT, &sink_addr, sizeof sink_addr);
      relayed++;
    }
    pace(start);
  }
  printf("epoll: %ld packets, %.3f us CPU per packet\n", relayed - n0, (cpu() - c0) * 1e6 / (relayed - n0));
}

#define BUFS 4096
#define BUFSZ 2048
#define BGID 1
static void run_uring(void) {
  struct io_uring ring; struct io_uring_params p = { 0 };
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE; p.cq_entries = 65536;
  if (io_uring_queue_init_params(8192, &ring, &p) < 0) { perror("init"); exit(1); }
  io_uring_register_files(&ring, relay, N);
  size_t rsz = BUFS * sizeof(struct io_uring_buf);
  struct io_uring_buf_ring *br = mmap(0, rsz, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  struct io_uring_buf_reg reg = { .ring_addr = (unsigned long)br, .ring_entries = BUFS, .bgid = BGID };
  if (io_uring_register_buf_ring(&ring, &reg, 0)) { perror("bufring"); exit(1); }
  io_uring_buf_ring_init(br);
  char *bufs = malloc((size_t)BUFS * BUFSZ);
  for (int b = 0; b < BUFS; b++) io_uring_buf_ring_add(br, bufs + (size_t)b * BUFSZ, BUFSZ, b, io_uring_buf_ring_mask(BUFS), b);
  io_uring_buf_ring_advance(br, BUFS);
  struct msghdr rmsg = { .msg_namelen = sizeof(struct sockaddr_storage) };
  struct msghdr *smsg = calloc(BUFS, sizeof *smsg); struct iovec *siov = calloc(BUFS, sizeof *siov);
  for (int i = 0; i < N; i++) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recvmsg_multishot(sqe, i, &rmsg, 0); sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID; sqe->user_data = i;
  }
  io_uring_submit(&ring);
  double end = now() + SECS, c0 = cpu(); long n0 = relayed;
  struct __kernel_timespec ts = { 0, 100 * 1000000 };
  while (now() < end) {
    double start = now();
    struct io_uring_cqe *cqe;
    io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, NULL);
    unsigned head, count = 0, recycled = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      count++;
      unsigned long ud = cqe->user_data;
      if (ud & (1UL << 40)) { // send done: recycle buffer
        int b = ud & 0xffff;
        io_uring_buf_ring_add(br, bufs + (size_t)b * BUFSZ, BUFSZ, b, io_uring_buf_ring_mask(BUFS), recycled++);
        continue;
      }
      int i = (int)ud;
      if (!(cqe->flags & IORING_CQE_F_MORE)) { // re-arm
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_recvmsg_multishot(sqe, i, &rmsg, 0); sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
        sqe->buf_group = BGID; sqe->user_data = i;
      }
      if (cqe->res < 0 || !(cqe->flags & IORING_CQE_F_BUFFER)) continue;
      int b = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
      char *base = bufs + (size_t)b * BUFSZ;
      struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(base, cqe->res, &rmsg);
      if (!o) { io_uring_buf_ring_add(br, base, BUFSZ, b, io_uring_buf_ring_mask(BUFS), recycled++); continue; }
      char *payload = io_uring_recvmsg_payload(o, &rmsg); unsigned len = io_uring_recvmsg_payload_length(o, cqe->res, &rmsg);
      payload[1] ^= 1;
      siov[b].iov_base = payload; siov[b].iov_len = len;
      smsg[b].msg_name = &sink_addr; smsg[b].msg_namelen = sizeof sink_addr; smsg[b].msg_iov = &siov[b]; smsg[b].msg_iovlen = 1;
      struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
      if (!sqe) { io_uring_submit(&ring); sqe = io_uring_get_sqe(&ring); }
      io_uring_prep_sendmsg(sqe, i, &smsg[b], MSG_DONTWAIT); sqe->flags |= IOSQE_FIXED_FILE;
      sqe->user_data = (1UL << 40) | b;
      relayed++;
    }
    io_uring_cq_advance(&ring, count);
    if (recycled) io_uring_buf_ring_advance(br, recycled);
    pace(start);
  }
  printf("uring: %ld packets, %.3f us CPU per packet\n", relayed - n0, (cpu() - c0) * 1e6 / (relayed - n0));
}

#include <fcntl.h>
int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "epoll"; if (argc > 2) N = atoi(argv[2]); if (argc > 3) SECS = atoi(argv[3]);
  relay = calloc(N, sizeof *relay); phone = calloc(N, sizeof *phone); relay_addr = calloc(N, sizeof *relay_addr);
  for (int i = 0; i < N; i++) { relay[i] = udp(&relay_addr[i]); phone[i] = udp(0); }
  sink = udp(&sink_addr);
  fcntl(sink, F_SETFL, fcntl(sink, F_GETFL) & ~O_NONBLOCK);
  struct timeval tv = { 0, 100000 }; setsockopt(sink, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  pthread_t g, d; pthread_create(&g, 0, gen, 0); pthread_create(&d, 0, drain, 0);
  sleep(1);
  if (!strcmp(mode, "uring")) run_uring(); else run_epoll();
  stop = 1; pthread_join(g, 0); pthread_join(d, 0);
  return 0;
}
