// SPDX-License-Identifier: GPL-2.0
/*
 * xpmem-demo: a small XPMEM program, the two sides of the two-VM demo, and
 * a bandwidth probe.
 *   xpmem-demo export PAGES SECONDS   export a buffer, print its segid,
 *                                     print what importers wrote into it
 *   xpmem-demo attach SEGID PAGES     read the exporter's message, answer
 *   xpmem-demo bench SEGID PAGES      time first touch (fault path) and
 *                                     repeated reads of an attachment
 *   xpmem-demo stats LABEL            print /proc/xpmem/stats on one line
 *   xpmem-demo demo-export PAGES PORT VM a of `xpmem-e2e demo`: exports
 *                                     PAGES pages and hands the segid to the
 *                                     first TCP client on PORT
 *   xpmem-demo demo-attach HOST:PORT  VM b: gets the segid from a over TCP
 *   xpmem-demo demo-attach SEGID      VM b with a segid found some other way
 *
 * The segid goes from a to b the way XPMEM programs hand it on (MPI launchers
 * and UCX exchange it over TCP): one line "SEGID <decimal>\n" on a TCP
 * connection from b to a, by host name (/etc/hosts) and port.
 *
 * Demo console protocol (one flushed line each, see tests/e2e/src/demo.rs):
 *   XPMEM-DEMO SEGID <decimal>        a: the segment is ready; b: the segid
 *                                     it received
 *   XPMEM-DEMO STEP <key> <text>      a step happened, in words
 *   XPMEM-DEMO FAIL <reason>          the demo failed (exit status 1)
 *   XPMEM-DEMO DONE                   every step of this side succeeded
 *   XPMEM-DEMO STATS <label> k=v ...  the counters of /proc/xpmem/stats
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "xpmem.h"

#define PAGE 4096UL
#define WORDS (PAGE / sizeof(uint64_t))

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int do_export(unsigned long pages, int seconds)
{
	size_t len = pages * PAGE;
	char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	xpmem_segid_t segid;
	char seen[64] = "";
	int i;

	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(buf, 0x11, len);
	snprintf(buf, 64, "hello from pid %d", getpid());
	segid = xpmem_make(buf, len, XPMEM_PERMIT_MODE, (void *)0666);
	if (segid == -1) {
		perror("xpmem_make");
		return 1;
	}
	printf("XPMEM-DEMO SEGID %lld\n", (long long)segid);
	fflush(stdout);
	for (i = 0; i < seconds * 10; i++) {
		if (strncmp(seen, buf + 64, sizeof(seen) - 1)) {
			strncpy(seen, buf + 64, sizeof(seen) - 1);
			printf("XPMEM-DEMO importer wrote: %s\n", seen);
			fflush(stdout);
		}
		usleep(100000);
	}
	return xpmem_remove(segid) ? perror("xpmem_remove"), 1 : 0;
}

static char *do_attach_map(xpmem_segid_t segid, unsigned long pages,
			   xpmem_apid_t *apid)
{
	struct xpmem_addr addr;
	char *p;

	*apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (*apid == -1) {
		perror("xpmem_get");
		return NULL;
	}
	addr.apid = *apid;
	addr.offset = 0;
	p = xpmem_attach(addr, pages * PAGE, NULL);
	if (p == (void *)-1) {
		perror("xpmem_attach");
		return NULL;
	}
	return p;
}

static int do_attach(xpmem_segid_t segid, unsigned long pages)
{
	xpmem_apid_t apid;
	char *p = do_attach_map(segid, pages, &apid);

	if (!p)
		return 1;
	printf("XPMEM-DEMO exporter says: %.63s\n", p);
	snprintf(p + 64, 64, "hello back from pid %d", getpid());
	xpmem_detach(p);
	xpmem_release(apid);
	return 0;
}

static int do_bench(xpmem_segid_t segid, unsigned long pages)
{
	size_t len = pages * PAGE, i;
	volatile uint64_t *p;
	xpmem_apid_t apid;
	uint64_t sum = 0;
	double t0, t1, t2;
	int rep;

	p = (volatile uint64_t *)do_attach_map(segid, pages, &apid);
	if (!p)
		return 1;
	t0 = now();
	for (i = 0; i < len / 8; i += PAGE / 8)
		sum += p[i];			/* first touch: FAULTs */
	t1 = now();
	for (rep = 0; rep < 4; rep++)
		for (i = 0; i < len / 8; i++)
			sum += p[i];		/* mapped: memory speed */
	t2 = now();
	printf("XPMEM-DEMO bench pages=%lu first-touch=%.3fs (%.0f pages/s) read=%.1f MiB/s sum=%llx\n",
	       pages, t1 - t0, pages / (t1 - t0),
	       4.0 * len / (1 << 20) / (t2 - t1), (unsigned long long)sum);
	xpmem_detach((void *)p);
	xpmem_release(apid);
	return 0;
}

/* ---- /proc/xpmem/stats ---- */

#define STATS_PATH "/proc/xpmem/stats"

/* Every "name: <decimal>" line of the stats file, on one line. */
static int do_stats(const char *label)
{
	char line[256], name[64];
	long long v;
	FILE *f = fopen(STATS_PATH, "r");

	if (!f) {
		printf("XPMEM-DEMO FAIL cannot read %s: %s (is xpmem.ko loaded?)\n",
		       STATS_PATH, strerror(errno));
		return 1;
	}
	printf("XPMEM-DEMO STATS %s", label);
	while (fgets(line, sizeof(line), f)) {
		char end;

		if (sscanf(line, "%63[a-z_]: %lld %c", name, &v, &end) == 2)
			printf(" %s=%lld", name, v);
	}
	fclose(f);
	putchar('\n');
	fflush(stdout);
	return 0;
}

/* One counter of the stats file, or -1 if it cannot be read. */
static long long stat_value(const char *want)
{
	char line[256], name[64];
	long long v, found = -1;
	FILE *f = fopen(STATS_PATH, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%63[a-z_]: %lld", name, &v) == 2 &&
		    !strcmp(name, want)) {
			found = v;
			break;
		}
	fclose(f);
	return found;
}

/* ---- the two-VM demo ---- */

#define DEMO_MAGIC	0x4f4d4544504d5058ULL	/* "XPMPDEMO" */
#define MSG_LEN		96
#define FIRST_WAIT	300	/* s: a waits for b to boot and attach */
#define STEP_WAIT	90	/* s: any later step (never a speed limit) */

/*
 * Page 0 of the demo buffer: the two sides sequence the steps through it.
 * Pages 1..npages-1 carry data; a unmaps them (and keeps page 0) to show the
 * invalidation, so the control page still works afterwards.
 */
struct demo_ctl {
	uint64_t magic;
	uint64_t npages;
	uint64_t a_state;	/* A_* */
	uint64_t b_state;	/* B_* */
	char a_msg[MSG_LEN];
	char b_msg[MSG_LEN];
};

enum { A_NONE, A_EXPORTED, A_WROTE, A_UNMAPPED };
enum { B_NONE, B_WROTE, B_SAW, B_DONE };

static const char A_HELLO[] = "hello from a";
static const char A_REPLY[] = "hi b, a here: got your message";
static const char B_HELLO[] = "hello from b";

static void step(const char *key, const char *fmt, ...)
{
	va_list ap;

	printf("XPMEM-DEMO STEP %s ", key);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static int demo_fail(const char *fmt, ...)
{
	va_list ap;

	printf("XPMEM-DEMO FAIL ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	return 1;
}

static int demo_done(void)
{
	printf("XPMEM-DEMO DONE\n");
	fflush(stdout);
	return 0;
}

static uint64_t load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void store(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Wait until *p >= want; false after @seconds. */
static bool wait_state(const uint64_t *p, uint64_t want, int seconds)
{
	double end = now() + seconds;

	while (load(p) < want) {
		if (now() > end)
			return false;
		usleep(1000);
	}
	return true;
}

static void set_msg(char *dst, const char *src)
{
	strncpy(dst, src, MSG_LEN - 1);
	dst[MSG_LEN - 1] = 0;
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

/* A message written by the other VM, NUL-terminated even if it is not. */
static const char *get_msg(const char *src, char *copy)
{
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	memcpy(copy, src, MSG_LEN);
	copy[MSG_LEN - 1] = 0;
	return copy;
}

static uint64_t pattern(uint64_t page, uint64_t word, uint64_t gen)
{
	return (page << 32) ^ word ^ (gen * 0x9e3779b97f4a7c15ULL);
}

static void fill(volatile uint64_t *buf, uint64_t npages, uint64_t gen)
{
	uint64_t p, w;

	for (p = 1; p < npages; p++)
		for (w = 0; w < WORDS; w++)
			buf[p * WORDS + w] = pattern(p, w, gen);
}

/* Index of the first word of pages 1..npages-1 that is wrong, or -1. */
static long check(const volatile uint64_t *buf, uint64_t npages, uint64_t gen)
{
	uint64_t p, w;

	for (p = 1; p < npages; p++)
		for (w = 0; w < WORDS; w++)
			if (buf[p * WORDS + w] != pattern(p, w, gen))
				return p * WORDS + w;
	return -1;
}

/*
 * The address of a socket's peer, for the step lines (IPv4-mapped IPv6
 * addresses as IPv4). No getnameinfo: the program is static, without NSS.
 */
static const char *peer_name(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	const struct sockaddr_in6 *s6 = (const void *)&ss;
	const struct sockaddr_in *s4 = (const void *)&ss;
	const void *a = NULL;
	int af;

	snprintf(out, len, "?");
	if (getpeername(fd, (struct sockaddr *)&ss, &sl))
		return out;
	af = ss.ss_family;
	if (af == AF_INET) {
		a = &s4->sin_addr;
	} else if (af == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
		af = AF_INET;
		a = &s6->sin6_addr.s6_addr[12];
	} else if (af == AF_INET6) {
		a = &s6->sin6_addr;
	}
	if (a && !inet_ntop(af, a, out, len))
		snprintf(out, len, "?");
	return out;
}

/*
 * Hands @segid to the first TCP client on @port (IPv4 and IPv6, any address
 * of this VM): one line "SEGID <decimal>\n". Waits @seconds at most.
 */
static int serve_segid(unsigned int port, xpmem_segid_t segid, int seconds)
{
	struct sockaddr_in6 sa = { .sin6_family = AF_INET6,
				   .sin6_addr = IN6ADDR_ANY_INIT,
				   .sin6_port = htons(port) };
	struct pollfd pfd = { .events = POLLIN };
	char line[64], peer[INET6_ADDRSTRLEN];
	int one = 1, zero = 0, fd, c, n;

	fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return demo_fail("socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 1)) {
		c = errno;
		close(fd);
		return demo_fail("listen on TCP port %u: %s", port, strerror(c));
	}
	pfd.fd = fd;
	n = poll(&pfd, 1, seconds * 1000);
	c = n > 0 ? accept4(fd, NULL, NULL, SOCK_CLOEXEC) : -1;
	close(fd);
	if (c < 0)
		return demo_fail("nobody asked for the segid on TCP port %u within %d s",
				 port, seconds);
	n = snprintf(line, sizeof(line), "SEGID %lld\n", (long long)segid);
	if (write(c, line, n) != n) {
		n = errno;
		close(c);
		return demo_fail("sending the segid: %s", strerror(n));
	}
	step("segid-sent", "sent segid %#llx over TCP to %s (port %u)",
	     (unsigned long long)segid, peer_name(c, peer, sizeof(peer)), port);
	close(c);
	return 0;
}

static int demo_export(unsigned long npages, unsigned int port)
{
	size_t len = npages * PAGE;
	struct demo_ctl *ctl;
	volatile uint64_t *buf;
	char msg[MSG_LEN];
	long long sent0, sent1;
	xpmem_segid_t segid;
	double t0, t1;
	long bad;
	void *p;

	if (npages < 2 || npages > 65536)
		return demo_fail("demo-export needs 2..65536 pages, got %lu", npages);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return demo_fail("mmap of %lu pages: %s", npages, strerror(errno));
	ctl = p;
	buf = p;
	ctl->magic = DEMO_MAGIC;
	ctl->npages = npages;
	set_msg(ctl->a_msg, A_HELLO);
	fill(buf, npages, 1);
	segid = xpmem_make(p, len, XPMEM_PERMIT_MODE, (void *)0666);
	if (segid == -1)
		return demo_fail("xpmem_make: %s", strerror(errno));
	store(&ctl->a_state, A_EXPORTED);
	step("export", "exported %lu pages (%lu KiB) as segid %#llx; page 0 says '%s'",
	     npages, len >> 10, (unsigned long long)segid, A_HELLO);
	printf("XPMEM-DEMO SEGID %lld\n", (long long)segid);
	fflush(stdout);
	if (serve_segid(port, segid, FIRST_WAIT))
		return 1;

	if (!wait_state(&ctl->b_state, B_WROTE, STEP_WAIT))
		return demo_fail("b did not attach and write within %d s", FIRST_WAIT);
	bad = check(buf, npages, 2);
	if (bad >= 0)
		return demo_fail("b's data is not in a's buffer: word %ld is %#llx",
				 bad, (unsigned long long)buf[bad]);
	if (strcmp(get_msg(ctl->b_msg, msg), B_HELLO))
		return demo_fail("b's message reads '%s', want '%s'", msg, B_HELLO);
	step("sees-b", "sees b's write: '%s' (and b's pattern in all %lu data pages)",
	     msg, npages - 1);

	/* Each step is printed before the other side may act on it. */
	fill(buf, npages, 3);
	set_msg(ctl->a_msg, A_REPLY);
	step("write", "wrote '%s' and a new pattern into the %lu data pages",
	     A_REPLY, npages - 1);
	store(&ctl->a_state, A_WROTE);

	if (!wait_state(&ctl->b_state, B_SAW, STEP_WAIT))
		return demo_fail("b did not read a's write within %d s", STEP_WAIT);
	sent0 = stat_value("inval_sent");
	t0 = now();
	if (munmap((char *)p + PAGE, len - PAGE))
		return demo_fail("munmap of the data pages: %s", strerror(errno));
	t1 = now();
	sent1 = stat_value("inval_sent");
	if (sent1 <= sent0) {
		store(&ctl->a_state, A_UNMAPPED);
		return demo_fail("munmap sent no invalidation (inval_sent %lld -> %lld)",
				 sent0, sent1);
	}
	step("munmap", "munmap of the %lu data pages returned after %.1f ms, once the monitor had invalidated b's mapping (inval_sent %lld -> %lld)",
	     npages - 1, (t1 - t0) * 1e3, sent0, sent1);
	store(&ctl->a_state, A_UNMAPPED);

	/* b still has page 0 attached: removing the segment revokes it. */
	if (!wait_state(&ctl->b_state, B_DONE, STEP_WAIT))
		return demo_fail("b did not finish within %d s", STEP_WAIT);
	if (xpmem_remove(segid))
		return demo_fail("xpmem_remove: %s", strerror(errno));
	step("remove", "removed segid %#llx while b still had page 0 attached",
	     (unsigned long long)segid);
	munmap(p, PAGE);
	return demo_done();
}

/*
 * The address of @host: a numeric IPv4 or IPv6 address, or a name from
 * /etc/hosts (the guest's names come from the monitor's xpmem.hosts=; a
 * static program has no NSS for getaddrinfo). False if there is none.
 */
static bool host_address(const char *host, unsigned int port,
			 struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in6 *s6 = (void *)ss;
	struct sockaddr_in *s4 = (void *)ss;
	char line[512], addr[INET6_ADDRSTRLEN] = "";
	FILE *f;

	if (!strchr(host, ':') && !inet_pton(AF_INET, host, &s4->sin_addr) &&
	    (f = fopen("/etc/hosts", "r"))) {
		while (!addr[0] && fgets(line, sizeof(line), f)) {
			char *save, *tok, *first;

			line[strcspn(line, "#\n")] = 0;
			first = strtok_r(line, " \t", &save);
			while (first && (tok = strtok_r(NULL, " \t", &save)))
				if (!strcmp(tok, host)) {
					snprintf(addr, sizeof(addr), "%s", first);
					break;
				}
		}
		fclose(f);
		host = addr;
	}
	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		*len = sizeof(*s4);
		return true;
	}
	if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		*len = sizeof(*s6);
		return true;
	}
	return false;
}

/*
 * Gets the segid from the exporter at @where ("host:port"; host by name or
 * address): connects, retrying while the exporter is not listening yet, for
 * @seconds at most, and reads one line "SEGID <decimal>".
 */
static xpmem_segid_t segid_from_tcp(const char *where, int seconds)
{
	char host[256], peer[INET6_ADDRSTRLEN], line[64], *tail;
	const char *colon = strrchr(where, ':');
	double end = now() + seconds;
	struct sockaddr_storage ss;
	unsigned long port;
	long long segid;
	size_t got = 0;
	socklen_t sl;
	int fd = -1;

	if (!colon || colon == where || (size_t)(colon - where) >= sizeof(host)) {
		demo_fail("'%s' is not HOST:PORT", where);
		return -1;
	}
	memcpy(host, where, colon - where);
	host[colon - where] = 0;
	port = strtoul(colon + 1, &tail, 10);
	if (*tail || port < 1 || port > 65535) {
		demo_fail("'%s': the port is not 1..65535", where);
		return -1;
	}
	/* Retry: a may still boot, or not listen yet. */
	for (;;) {
		if (host_address(host, port, &ss, &sl)) {
			fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (fd >= 0 && !connect(fd, (struct sockaddr *)&ss, sl))
				break;
			if (fd >= 0)
				close(fd);
			fd = -1;
		}
		if (now() > end) {
			demo_fail("could not reach %s within %d s (%s)", where, seconds,
				  host_address(host, port, &ss, &sl) ?
				  "connection refused or unreachable" :
				  "no such host in /etc/hosts");
			return -1;
		}
		usleep(200000);
	}
	while (got < sizeof(line) - 1 && !memchr(line, '\n', got)) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, STEP_WAIT * 1000) <= 0)
			break;
		n = read(fd, line + got, sizeof(line) - 1 - got);
		if (n <= 0)
			break;
		got += n;
	}
	line[got] = 0;
	peer_name(fd, peer, sizeof(peer));
	close(fd);
	segid = strncmp(line, "SEGID ", 6) ? 0 : strtoll(line + 6, &tail, 10);
	if (segid <= 0 || *tail != '\n') {
		line[strcspn(line, "\r\n")] = 0;
		demo_fail("%s (%s) sent '%.40s', not a line 'SEGID <n>'", where,
			  peer, line);
		return -1;
	}
	step("segid-received", "received segid %#llx from %s (%s) over TCP",
	     (unsigned long long)segid, host, peer);
	printf("XPMEM-DEMO SEGID %lld\n", segid);
	fflush(stdout);
	return segid;
}

static sigjmp_buf fault_jmp;
static volatile sig_atomic_t fault_sig;

static void on_fault(int sig)
{
	fault_sig = sig;
	siglongjmp(fault_jmp, 1);
}

/* Reads *p; returns the signal that raised (SIGBUS, SIGSEGV), or 0. */
static int touch(const volatile uint64_t *p)
{
	struct sigaction sa = { .sa_handler = on_fault }, obus, osegv;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &obus);
	sigaction(SIGSEGV, &sa, &osegv);
	fault_sig = 0;
	if (!sigsetjmp(fault_jmp, 1))
		(void)*p;
	sigaction(SIGBUS, &obus, NULL);
	sigaction(SIGSEGV, &osegv, NULL);
	return fault_sig;
}

static int demo_attach(xpmem_segid_t segid)
{
	long long recv0, rev0, map0, recv1, rev1, map1;
	struct xpmem_addr addr;
	volatile uint64_t *buf;
	struct demo_ctl *ctl;
	char msg[MSG_LEN];
	xpmem_apid_t apid;
	uint64_t npages;
	double t0;
	long bad;
	int sig;
	void *p;

	apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1)
		return demo_fail("xpmem_get(%#llx): %s",
				 (unsigned long long)segid, strerror(errno));
	/* Page 0 first, to learn the size. */
	addr.apid = apid;
	addr.offset = 0;
	p = xpmem_attach(addr, PAGE, NULL);
	if (p == (void *)-1)
		return demo_fail("xpmem_attach of page 0: %s", strerror(errno));
	ctl = p;
	if (ctl->magic != DEMO_MAGIC)
		return demo_fail("page 0 of segid %#llx is not a demo buffer (magic %#llx)",
				 (unsigned long long)segid,
				 (unsigned long long)ctl->magic);
	npages = ctl->npages;
	if (npages < 2 || npages > 65536)
		return demo_fail("the exporter claims %llu pages",
				 (unsigned long long)npages);
	xpmem_detach(p);
	p = xpmem_attach(addr, npages * PAGE, NULL);
	if (p == (void *)-1)
		return demo_fail("xpmem_attach of %llu pages: %s",
				 (unsigned long long)npages, strerror(errno));
	ctl = p;
	buf = p;
	bad = check(buf, npages, 1);
	if (bad >= 0)
		return demo_fail("a's data is wrong at word %ld: %#llx", bad,
				 (unsigned long long)buf[bad]);
	step("attach", "attached segid %#llx (%llu pages); read '%s' (and a's pattern in all %llu data pages)",
	     (unsigned long long)segid, (unsigned long long)npages,
	     get_msg(ctl->a_msg, msg), (unsigned long long)npages - 1);

	fill(buf, npages, 2);
	set_msg(ctl->b_msg, B_HELLO);
	step("write", "wrote '%s' and a new pattern into the %llu data pages",
	     B_HELLO, (unsigned long long)npages - 1);
	store(&ctl->b_state, B_WROTE);

	if (!wait_state(&ctl->a_state, A_WROTE, STEP_WAIT))
		return demo_fail("a did not answer within %d s", STEP_WAIT);
	bad = check(buf, npages, 3);
	if (bad >= 0)
		return demo_fail("a's new data is not visible: word %ld is %#llx",
				 bad, (unsigned long long)buf[bad]);
	if (strcmp(get_msg(ctl->a_msg, msg), A_REPLY))
		return demo_fail("a's reply reads '%s', want '%s'", msg, A_REPLY);
	step("sees-a", "sees a's write: '%s' (and a's new pattern in all %llu data pages)",
	     msg, (unsigned long long)npages - 1);

	/* Counters before a's munmap, which waits for our B_SAW. */
	recv0 = stat_value("inval_recv");
	rev0 = stat_value("revoked_recv");
	map0 = stat_value("pages_mapped");
	store(&ctl->b_state, B_SAW);
	if (!wait_state(&ctl->a_state, A_UNMAPPED, STEP_WAIT))
		return demo_fail("a did not unmap within %d s", STEP_WAIT);
	recv1 = stat_value("inval_recv");
	rev1 = stat_value("revoked_recv");
	map1 = stat_value("pages_mapped");
	if (recv1 <= recv0)
		return demo_fail("b received no invalidation (inval_recv %lld -> %lld)",
				 recv0, recv1);
	if (rev1 != rev0)
		return demo_fail("the monitor revoked b's mapping instead of waiting for b's acknowledgement (revoked_recv %lld -> %lld)",
				 rev0, rev1);
	step("invalidated", "a's munmap reached b as an invalidation, which b acknowledged: inval_recv %lld -> %lld, revoked_recv %lld -> %lld, pages_mapped %lld -> %lld",
	     recv0, recv1, rev0, rev1, map0, map1);

	sig = touch(buf + WORDS);
	if (sig != SIGBUS)
		return demo_fail("touch of a data page after a's munmap: %s, want SIGBUS",
				 sig ? strsignal(sig) : "no fault (the old page is still mapped)");
	if (touch(&ctl->magic))
		return demo_fail("page 0, which a did not unmap, faults too");
	step("sigbus", "touch of a data page after a's munmap: SIGBUS (refused); page 0, which a kept, still reads fine");

	/* a removes the segment now; the monitor revokes our attachment. */
	store(&ctl->b_state, B_DONE);
	t0 = now();
	do {
		sig = touch(&ctl->magic);
		if (sig)
			break;
		usleep(1000);
	} while (now() < t0 + STEP_WAIT);
	if (sig != SIGBUS)
		return demo_fail("page 0 still %s after a removed the segment, want SIGBUS",
				 sig ? strsignal(sig) : "readable");
	rev0 = rev1;
	rev1 = stat_value("revoked_recv");
	if (xpmem_detach(p))
		return demo_fail("xpmem_detach: %s", strerror(errno));
	if (xpmem_release(apid))
		return demo_fail("xpmem_release: %s", strerror(errno));
	step("detach", "a's xpmem_remove revoked b's attachment (revoked_recv %lld -> %lld), page 0 now gives SIGBUS too; detached and released",
	     rev0, rev1);
	return demo_done();
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "export"))
		return do_export(strtoul(argv[2], NULL, 0), atoi(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "attach"))
		return do_attach(strtoll(argv[2], NULL, 0),
				 strtoul(argv[3], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "bench"))
		return do_bench(strtoll(argv[2], NULL, 0),
				strtoul(argv[3], NULL, 0));
	if (argc == 3 && !strcmp(argv[1], "stats"))
		return do_stats(argv[2]);
	if (argc == 4 && !strcmp(argv[1], "demo-export")) {
		unsigned long port = strtoul(argv[3], NULL, 0);

		if (port < 1 || port > 65535)
			return demo_fail("port %s is not 1..65535", argv[3]);
		return demo_export(strtoul(argv[2], NULL, 0), port);
	}
	if (argc == 3 && !strcmp(argv[1], "demo-attach")) {
		xpmem_segid_t segid;

		if (strchr(argv[2], ':'))
			segid = segid_from_tcp(argv[2], FIRST_WAIT);
		else if ((segid = strtoll(argv[2], NULL, 0)) <= 0)
			demo_fail("'%s' is neither HOST:PORT nor a segid", argv[2]);
		return segid > 0 ? demo_attach(segid) : 1;
	}
	fprintf(stderr, "usage: xpmem-demo export PAGES SECONDS | attach SEGID PAGES | bench SEGID PAGES\n"
		"       xpmem-demo stats LABEL | demo-export PAGES PORT | demo-attach HOST:PORT|SEGID\n");
	return 2;
}
