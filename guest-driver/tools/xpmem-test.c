// SPDX-License-Identifier: GPL-2.0
/*
 * xpmem-test: case runner for the virtio-xpmem end-to-end tests, linked
 * statically against libxpmem so it runs in a busybox initramfs.
 * See README.md in this directory for the cases and the console protocol.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/vm_sockets.h>
#include <time.h>
#include <unistd.h>

#include "xpmem.h"

#define PAGE		4096UL
#define WORDS		(PAGE / sizeof(uint64_t))
#define MAGIC		0x5850454d54455354ULL	/* "XPEMTEST" */

#define EXIT_PASS	0
#define EXIT_FAIL	1
#define EXIT_USAGE	2
#define EXIT_SKIP	77

#define MAX_IMPORTERS	8
#define HUGE_PAGE	(2UL << 20)
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE	25
#endif

/*
 * Page 0 of an exported buffer is the control page; pages 1..npages are
 * data. Both sides poll it: that is how importer writes are checked to
 * reach the exporter, and exporter writes to reach the importer.
 */
struct ctl {
	uint64_t magic;
	uint64_t npages;	/* data pages after this one */
	uint64_t gen;		/* exporter data generation */
	uint64_t imp_state;	/* importer progress, IMP_* */
	uint64_t exp_state;	/* exporter progress, EXP_* */
	uint64_t imp_sum;	/* checksum the importer computed */
	uint64_t importers;	/* several importers: how many the exporter expects */
	uint64_t round;		/* rounds: the exporter's latest round */
	uint64_t slot[MAX_IMPORTERS];	/* importer i's progress (SLOT_* or round) */
};

enum { IMP_NONE, IMP_VERIFIED, IMP_WROTE, IMP_DONE };
enum { EXP_NONE, EXP_READY, EXP_FORKED, EXP_ALL_WROTE, EXP_REWROTE };
/* Progress of importer i in the several-importer protocol (ctl->slot[i]). */
enum { SLOT_NONE, SLOT_WROTE, SLOT_CROSSED, SLOT_REREAD, SLOT_EXITING };
/* The generation importer i writes into data page i. */
#define IMPORTER_GEN(i)	(100 + (i))
#define REWRITE_GEN	7

static const char *cur_case = "?";
static struct {
	unsigned long pages;
	long long segid;
	unsigned int mode;
	int timeout;	/* seconds */
	int uid;
	const char *to;		/* VMs the SEGID line is meant for */
	unsigned int importers;
	unsigned int index;
	unsigned int until;	/* export-hold: DONE lines to wait for */
	unsigned int threads;	/* stress-fault-inval, fault-hog */
	unsigned int rounds;	/* stress-fault-inval, disk-bench, net-rtt */
	unsigned long chunks;	/* export-hostile: munmaps */
	const char *misbehave;	/* attach-hostile: test_misbehave mode */
	int hold;		/* attach-hostile: seconds to go on after SIGBUS */
	const char *name;	/* export: name the segment; attach: find it by name */
	const char *dev;	/* disk-*: the block device */
	const char *serial;	/* disk-*: the serial the device must report */
	const char *host;	/* net-send: the receiver */
	unsigned long long cid;	/* net-send, net-recv, vsock-echo: vsock instead of TCP (2: the host) */
	unsigned int port;	/* net-send, net-recv */
	unsigned long long bytes;	/* net-send, net-recv */
	int seconds;		/* net-flood */
	const char *stop;	/* net-flood, export-hold: stop once this file exists */
} opt = { .pages = 16, .segid = -1, .mode = 0666, .timeout = 60, .uid = -1,
	  .to = "b", .importers = 1, .chunks = 1 };

static void say(const char *fmt, ...)
{
	va_list ap;

	printf("XPMEM-TEST %s ", cur_case);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static int fail(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	say("FAIL %s", buf);
	return EXIT_FAIL;
}

static int pass(void)
{
	say("PASS");
	return EXIT_PASS;
}

static uint64_t pattern(uint64_t page, uint64_t word, uint64_t gen)
{
	return (page << 32) ^ word ^ (gen * 0x9e3779b97f4a7c15ULL) ^ 0xa5a5;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Wait until *p >= want; false on timeout. */
static bool wait_for(volatile uint64_t *p, uint64_t want)
{
	double end = now() + opt.timeout;

	while (*p < want) {
		if (now() > end)
			return false;
		usleep(1000);
	}
	return true;
}

static void fill(volatile uint64_t *data, unsigned long npages, uint64_t gen)
{
	unsigned long p, w;

	for (p = 0; p < npages; p++)
		for (w = 0; w < WORDS; w++)
			data[p * WORDS + w] = pattern(p, w, gen);
}

/* Fill data page @page (counted from @data) with generation @gen. */
static void fill_page(volatile uint64_t *data, unsigned long page, uint64_t gen)
{
	unsigned long w;

	for (w = 0; w < WORDS; w++)
		data[page * WORDS + w] = pattern(page, w, gen);
}

/* Index (from @data) of the first wrong word of pages [first, last), or -1. */
static long check_range(volatile const uint64_t *data, unsigned long first,
			unsigned long last, uint64_t gen)
{
	unsigned long p, w;

	for (p = first; p < last; p++)
		for (w = 0; w < WORDS; w++)
			if (data[p * WORDS + w] != pattern(p, w, gen))
				return p * WORDS + w;
	return -1;
}

/* Index of the first wrong word, or -1. */
static long check(volatile const uint64_t *data, unsigned long npages,
		  uint64_t gen)
{
	return check_range(data, 0, npages, gen);
}

/* ---- signals: touching memory that must fault ---- */

static sigjmp_buf fault_jmp;
static volatile sig_atomic_t fault_sig;

static void on_fault(int sig)
{
	fault_sig = sig;
	siglongjmp(fault_jmp, 1);
}

/* Touch *p (write if @write); returns the signal it raised, or 0. */
static int touch(volatile uint64_t *p, bool write)
{
	struct sigaction sa = { .sa_handler = on_fault }, obus, osegv;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &obus);
	sigaction(SIGSEGV, &sa, &osegv);
	fault_sig = 0;
	if (!sigsetjmp(fault_jmp, 1)) {
		if (write)
			*p = 0xdead;
		else
			(void)*p;
	}
	sigaction(SIGBUS, &obus, NULL);
	sigaction(SIGSEGV, &osegv, NULL);
	return fault_sig;
}

/* ---- segid hand-over ---- */

static bool segid_from_cmdline(void)
{
	char buf[4096], *s;
	FILE *f = fopen("/proc/cmdline", "r");
	size_t n;

	if (!f)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	s = strstr(buf, "xpmem.segid=");
	if (!s)
		return false;
	opt.segid = strtoll(s + strlen("xpmem.segid="), NULL, 0);
	return opt.segid > 0;
}

/*
 * Print "WAITING <word>" and read console lines until one starts with <word>;
 * the rest of that line goes to @arg. The harness types exactly one line per
 * WAITING, so no later line is consumed here.
 */
static bool wait_line(const char *word, char *arg, size_t len)
{
	char line[256];
	size_t n = strlen(word);

	say("WAITING %s", word);
	while (fgets(line, sizeof(line), stdin)) {
		char *s = strstr(line, word);

		if (s && s[n] == ' ') {
			snprintf(arg, len, "%s", s + n + 1);
			arg[strcspn(arg, "\r\n")] = 0;
			return true;
		}
	}
	return false;
}

/* A line "SEGID <n>" on stdin (the harness types it on the console). */
static bool segid_from_stdin(void)
{
	char arg[64];

	if (!wait_line("SEGID", arg, sizeof(arg)))
		return false;
	opt.segid = strtoll(arg, NULL, 0);
	return opt.segid > 0;
}

/* Look --name up until it exists (the exporter may not have named it yet). */
static bool segid_from_name(void)
{
	double until = now() + opt.timeout;

	do {
		opt.segid = xpmem_search(opt.name);
		if (opt.segid > 0) {
			say("FOUND %s SEGID %lld", opt.name, opt.segid);
			return true;
		}
		if (errno != ENOENT) {
			fail("xpmem_search(\"%s\"): %s", opt.name, strerror(errno));
			return false;
		}
		usleep(100 * 1000);
	} while (now() < until);
	fail("no segment named \"%s\" within %d s", opt.name, opt.timeout);
	return false;
}

static bool need_segid(void)
{
	if (opt.segid > 0)
		return true;
	if (opt.name)
		return segid_from_name();
	if (segid_from_cmdline())
		return true;
	return segid_from_stdin();
}

/* ---- exporter cases ---- */

static volatile uint64_t *alloc_buf(unsigned long npages)
{
	void *p = mmap(NULL, (npages + 1) * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static volatile uint64_t *exp_buf;
static xpmem_segid_t exp_segid;

/* Fill @buf (control page + opt.pages data pages), export it, print its SEGID. */
static int export_buf(volatile uint64_t *buf, xpmem_segid_t *segid)
{
	volatile struct ctl *ctl = (volatile struct ctl *)buf;

	ctl->magic = MAGIC;
	ctl->npages = opt.pages;
	ctl->gen = 1;
	ctl->importers = opt.importers;
	fill(buf + WORDS, opt.pages, 1);
	if (opt.name) {
		/* Importers find it by name: no SEGID line for the relay. */
		*segid = xpmem_make_name((void *)buf, (opt.pages + 1) * PAGE,
					 XPMEM_PERMIT_MODE,
					 (void *)(uintptr_t)opt.mode, opt.name);
		if (*segid == -1)
			return fail("xpmem_make_name(\"%s\"): %s", opt.name,
				    strerror(errno));
		ctl->exp_state = EXP_READY;
		say("NAMED %s", opt.name);
		return EXIT_PASS;
	}
	*segid = xpmem_make((void *)buf, (opt.pages + 1) * PAGE,
			    XPMEM_PERMIT_MODE, (void *)(uintptr_t)opt.mode);
	if (*segid == -1)
		return fail("xpmem_make: %s", strerror(errno));
	ctl->exp_state = EXP_READY;
	say("SEGID %lld TO %s", (long long)*segid, opt.to);
	return EXIT_PASS;
}

static int export_setup(void)
{
	exp_buf = alloc_buf(opt.pages);
	if (!exp_buf)
		return fail("mmap: %s", strerror(errno));
	return export_buf(exp_buf, &exp_segid);
}

/* export: serve the buffer until an importer wrote its pages and is done. */
static int case_export(void)
{
	volatile struct ctl *ctl;
	long bad;
	int rc = export_setup();

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)exp_buf;
	if (!wait_for(&ctl->imp_state, IMP_WROTE))
		return fail("importer did not write within %d s (state %llu)",
			    opt.timeout, (unsigned long long)ctl->imp_state);
	/* The importer wrote generation 2 into the data pages. */
	bad = check(exp_buf + WORDS, opt.pages, 2);
	if (bad >= 0)
		return fail("importer data wrong at word %ld", bad);
	if (!wait_for(&ctl->imp_state, IMP_DONE))
		return fail("importer did not finish");
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/*
 * export-hold: export and keep the buffer until --until N "DONE" lines came
 * on the console (from importers that cannot write: read-only, refused),
 * until the file --stop FILE exists (fails after --timeout seconds), or for
 * --timeout seconds.
 */
static int case_export_hold(void)
{
	unsigned int i;
	char who[64];
	double end;
	int rc = export_setup();

	if (rc)
		return rc;
	end = now() + opt.timeout;
	while (opt.stop && access(opt.stop, F_OK)) {
		if (now() > end)
			return fail("%s did not appear within %d s", opt.stop,
				    opt.timeout);
		usleep(100 * 1000);
	}
	if (!opt.stop && !opt.until)
		sleep(opt.timeout);
	for (i = 0; i < opt.until; i++)
		if (!wait_line("DONE", who, sizeof(who)))
			return fail("console closed after %u of %u DONE lines",
				    i, opt.until);
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/*
 * export-fork: after the importer verified generation 1, fork (the child
 * keeps the old pages) and write generation 3 in the parent: copy-on-write
 * gives the parent new pages, and the importer must see them.
 */
static int case_export_fork(void)
{
	volatile struct ctl *ctl;
	pid_t child;
	int rc = export_setup(), status;

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)exp_buf;
	if (!wait_for(&ctl->imp_state, IMP_VERIFIED))
		return fail("importer did not verify");
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		/* The child's copy must keep generation 1. */
		sleep(2);
		_exit(check(exp_buf + WORDS, opt.pages, 1) >= 0);
	}
	fill(exp_buf + WORDS, opt.pages, 3);
	ctl->gen = 3;
	ctl->exp_state = EXP_FORKED;
	if (!wait_for(&ctl->imp_state, IMP_DONE))
		return fail("importer did not see the post-fork data");
	if (ctl->imp_sum != 3)
		return fail("importer reported generation %llu",
			    (unsigned long long)ctl->imp_sum);
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("child's copy was modified");
	xpmem_remove(exp_segid);
	return pass();
}

/* export-unmap / export-exit: go away once the importer verified. */
static int case_export_gone(bool do_exit)
{
	volatile struct ctl *ctl;
	int rc = export_setup();

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)exp_buf;
	if (!wait_for(&ctl->imp_state, IMP_VERIFIED))
		return fail("importer did not verify");
	if (do_exit) {
		say("PASS");
		_exit(EXIT_PASS);
	}
	if (munmap((void *)exp_buf, (opt.pages + 1) * PAGE))
		return fail("munmap: %s", strerror(errno));
	sleep(opt.timeout > 5 ? 5 : opt.timeout);
	xpmem_remove(exp_segid);
	return pass();
}

/* ---- importer cases ---- */

static volatile uint64_t *imp_buf;
static xpmem_apid_t imp_apid;

/* xpmem_attach the whole segment of @apid; NULL (and a FAIL line) on error. */
static volatile uint64_t *attach_apid(xpmem_apid_t apid)
{
	struct xpmem_addr addr = { .apid = apid, .offset = 0 };
	void *p = xpmem_attach(addr, (opt.pages + 1) * PAGE, NULL);

	if (p == (void *)-1) {
		fail("xpmem_attach: %s", strerror(errno));
		return NULL;
	}
	return p;
}

/* GET @segid with @flags (as --uid if given) and attach it. */
static int attach_segid(long long segid, int flags, volatile uint64_t **buf,
			xpmem_apid_t *apid)
{
	if (opt.uid >= 0 && setuid(opt.uid))
		return fail("setuid(%d): %s", opt.uid, strerror(errno));
	*apid = xpmem_get(segid, flags, XPMEM_PERMIT_MODE, NULL);
	if (*apid == -1)
		return fail("xpmem_get(%lld): %s", segid, strerror(errno));
	*buf = attach_apid(*apid);
	return *buf ? EXIT_PASS : EXIT_FAIL;
}

static int attach(int flags)
{
	if (!need_segid())
		return fail("no segid (use --segid, xpmem.segid= or SEGID on stdin)");
	return attach_segid(opt.segid, flags, &imp_buf, &imp_apid);
}

/* Data pages [first, last) of @buf hold generation @gen. */
static int verify_pages(volatile uint64_t *buf, unsigned long first,
			unsigned long last, uint64_t gen)
{
	volatile struct ctl *ctl = (volatile struct ctl *)buf;
	long bad;

	if (ctl->magic != MAGIC)
		return fail("control page magic %#llx",
			    (unsigned long long)ctl->magic);
	if (ctl->npages < opt.pages)
		return fail("exporter has %llu pages, want %lu",
			    (unsigned long long)ctl->npages, opt.pages);
	bad = check_range(buf + WORDS, first, last, gen);
	if (bad >= 0)
		return fail("generation %llu data wrong at page %ld word %ld: %#llx",
			    (unsigned long long)gen, bad / (long)WORDS,
			    bad % (long)WORDS,
			    (unsigned long long)buf[WORDS + bad]);
	return EXIT_PASS;
}

static int imp_verify(uint64_t gen)
{
	return verify_pages(imp_buf, 0, opt.pages, gen);
}

static int imp_finish(void)
{
	if (xpmem_detach((void *)imp_buf))
		return fail("xpmem_detach: %s", strerror(errno));
	if (xpmem_release(imp_apid))
		return fail("xpmem_release: %s", strerror(errno));
	return pass();
}

/* Attach, read every page (so all are mapped) and tell the exporter. */
static int attach_and_read(void)
{
	int rc = attach(XPMEM_RDWR);

	if (!rc)
		rc = imp_verify(1);
	if (!rc)
		((volatile struct ctl *)imp_buf)->imp_state = IMP_VERIFIED;
	return rc;
}

/*
 * attach: read generation 1, check a fork child does not inherit the
 * attachment, write generation 2, tell the exporter.
 */
static int case_attach(void)
{
	volatile struct ctl *ctl;
	pid_t child;
	double t0;
	int rc = attach(XPMEM_RDWR), status;

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	t0 = now();
	rc = imp_verify(1);
	if (rc)
		return rc;
	say("READ %lu pages in %.3f s", opt.pages + 1, now() - t0);
	/* An attachment is not inherited: in a fork child it is unmapped. */
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0)
		_exit(touch(imp_buf, false) == SIGSEGV ? 0 : 1);
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("a fork child could read the attachment (not VM_DONTCOPY)");
	ctl->imp_state = IMP_VERIFIED;
	fill(imp_buf + WORDS, opt.pages, 2);
	ctl->imp_state = IMP_WROTE;
	ctl->imp_state = IMP_DONE;
	return imp_finish();
}

/* attach-ro: a read-only permit gives a read-only mapping. */
static int case_attach_ro(void)
{
	int rc = attach(XPMEM_RDONLY), sig;

	if (rc)
		return rc;
	rc = imp_verify(1);
	if (rc)
		return rc;
	sig = touch(imp_buf + WORDS, true);
	if (sig != SIGSEGV)
		return fail("write to a read-only attachment gave signal %d", sig);
	return imp_finish();
}

/* attach-fork: see the exporter's post-fork generation 3. */
static int case_attach_fork(void)
{
	volatile struct ctl *ctl;
	int rc = attach_and_read();

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	if (!wait_for(&ctl->exp_state, EXP_FORKED))
		return fail("exporter did not fork");
	rc = imp_verify(3);
	if (rc)
		return rc;
	ctl->imp_sum = 3;
	ctl->imp_state = IMP_DONE;
	return imp_finish();
}

/* attach-gone: after the exporter unmapped or exited, touches SIGBUS. */
static int case_attach_gone(void)
{
	volatile struct ctl *ctl;
	double end;
	int rc = attach_and_read(), sig = 0;

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	end = now() + opt.timeout;
	while (now() < end) {
		sig = touch(&ctl->magic, false);
		if (sig)
			break;
		usleep(1000);
	}
	if (sig != SIGBUS)
		return fail("no SIGBUS after the exporter went away (signal %d)",
			    sig);
	/* Detach still works and cleans up. */
	return imp_finish();
}

/* get-denied: GET of a 0600 segment by another uid fails with EACCES. */
static int case_get_denied(void)
{
	if (!need_segid())
		return fail("no segid");
	if (opt.uid < 0)
		opt.uid = 1000;
	if (setuid(opt.uid))
		return fail("setuid(%d): %s", opt.uid, strerror(errno));
	if (xpmem_get(opt.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL) != -1)
		return fail("xpmem_get succeeded as uid %d", opt.uid);
	if (errno != EACCES)
		return fail("xpmem_get: %s, want EACCES", strerror(errno));
	return pass();
}

/* ---- single-VM cases ---- */

static int read_stat(const char *name, long long *val)
{
	char line[256];
	size_t len = strlen(name);
	FILE *f = fopen("/proc/xpmem/stats", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, name, len) && line[len] == ':') {
			*val = strtoll(line + len + 1, NULL, 10);
			fclose(f);
			return 0;
		}
	}
	fclose(f);
	return -1;
}

/* proc-zero: every "current" counter of /proc/xpmem/stats is 0. */
static int case_proc_zero(void)
{
	static const char * const gauges[] = {
		"owners", "segments", "permits", "attachments", "pages_mapped",
		"inval_sent_inflight", "inval_recv_inflight",
		"resolves_inflight", "faults_inflight",
	};
	unsigned int i;
	long long v;

	for (i = 0; i < sizeof(gauges) / sizeof(gauges[0]); i++) {
		if (read_stat(gauges[i], &v))
			return fail("/proc/xpmem/stats has no %s", gauges[i]);
		if (v)
			return fail("%s = %lld after every user is gone",
				    gauges[i], v);
	}
	return pass();
}

/*
 * local: export and attach in the same VM. A child process (its own owner)
 * attaches the parent's buffer; writes go both ways; then the parent unmaps
 * and the child's next touch gets SIGBUS.
 */
static int case_local(void)
{
	volatile struct ctl *ctl;
	pid_t child;
	int rc, status;

	rc = export_setup();
	if (rc)
		return rc;
	opt.segid = exp_segid;
	ctl = (volatile struct ctl *)exp_buf;
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		volatile struct ctl *ictl;

		cur_case = "local-child";
		if (attach(XPMEM_RDWR) || imp_verify(1))
			_exit(EXIT_FAIL);
		ictl = (volatile struct ctl *)imp_buf;
		fill(imp_buf + WORDS, opt.pages, 2);
		ictl->imp_state = IMP_WROTE;
		if (!wait_for(&ictl->exp_state, EXP_FORKED)) {
			fail("parent did not rewrite");
			_exit(EXIT_FAIL);
		}
		if (imp_verify(5))
			_exit(EXIT_FAIL);
		ictl->imp_state = IMP_DONE;
		/* Parent unmaps now; our next touches must SIGBUS. */
		for (int i = 0; i < opt.timeout * 1000; i++) {
			if (touch(&ictl->magic, false) == SIGBUS)
				_exit(imp_finish());
			usleep(1000);
		}
		fail("no SIGBUS after the exporter unmapped");
		_exit(EXIT_FAIL);
	}
	if (!wait_for(&ctl->imp_state, IMP_WROTE))
		return fail("child did not write");
	if (check(exp_buf + WORDS, opt.pages, 2) >= 0)
		return fail("child's writes not visible to the exporter");
	fill(exp_buf + WORDS, opt.pages, 5);
	ctl->exp_state = EXP_FORKED;
	if (!wait_for(&ctl->imp_state, IMP_DONE))
		return fail("child did not see the rewrite");
	munmap((void *)exp_buf, (opt.pages + 1) * PAGE);
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("child failed");
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/* ---- several importers, segments and attachments ---- */

static bool wait_slots(volatile struct ctl *ctl, unsigned int n, uint64_t want)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		if (!wait_for(&ctl->slot[i], want))
			return false;
	return true;
}

/*
 * Exporter half of the several-importer protocol on @buf: importer i writes
 * data page i; once every importer did, each checks all the others' pages;
 * then the exporter rewrites everything and every importer must see that.
 */
static int multi_serve(volatile uint64_t *buf, unsigned int n)
{
	volatile struct ctl *ctl = (volatile struct ctl *)buf;
	unsigned int i;

	if (!wait_slots(ctl, n, SLOT_WROTE))
		return fail("not all %u importers wrote within %d s", n,
			    opt.timeout);
	for (i = 0; i < n; i++)
		if (check_range(buf + WORDS, i, i + 1, IMPORTER_GEN(i)) >= 0)
			return fail("importer %u's write is not visible here", i);
	ctl->exp_state = EXP_ALL_WROTE;
	if (!wait_slots(ctl, n, SLOT_CROSSED))
		return fail("importers did not see each other's writes");
	fill(buf + WORDS, opt.pages, REWRITE_GEN);
	ctl->gen = REWRITE_GEN;
	ctl->exp_state = EXP_REWROTE;
	if (!wait_slots(ctl, n, SLOT_REREAD))
		return fail("importers did not see the exporter's rewrite");
	return EXIT_PASS;
}

/*
 * Importer @idx's half: writes through attachment @wr, reads through @rd
 * (the same attachment, or a second attachment of the same segment).
 */
static int multi_join(volatile uint64_t *wr, volatile uint64_t *rd,
		      unsigned int idx)
{
	volatile struct ctl *wctl = (volatile struct ctl *)wr;
	volatile struct ctl *rctl = (volatile struct ctl *)rd;
	unsigned int i, n = rctl->importers;
	int rc;

	if (n < 1 || n > MAX_IMPORTERS || idx >= n || n > opt.pages)
		return fail("importer index %u of %u does not fit", idx, n);
	/* Pages no importer writes still hold generation 1. */
	rc = verify_pages(rd, n, opt.pages, 1);
	if (rc)
		return rc;
	fill_page(wr + WORDS, idx, IMPORTER_GEN(idx));
	rc = verify_pages(rd, idx, idx + 1, IMPORTER_GEN(idx));
	if (rc)
		return rc;
	wctl->slot[idx] = SLOT_WROTE;
	if (!wait_for(&rctl->exp_state, EXP_ALL_WROTE))
		return fail("exporter did not confirm every importer's write");
	for (i = 0; i < n; i++) {
		rc = verify_pages(rd, i, i + 1, IMPORTER_GEN(i));
		if (rc)
			return rc;
	}
	wctl->slot[idx] = SLOT_CROSSED;
	if (!wait_for(&rctl->exp_state, EXP_REWROTE))
		return fail("exporter did not rewrite");
	rc = verify_pages(rd, 0, opt.pages, REWRITE_GEN);
	if (!rc && wr != rd)
		rc = verify_pages(wr, 0, opt.pages, REWRITE_GEN);
	return rc;
}

/* Last step of the protocol: after it the exporter removes the segment. */
static void multi_leave(volatile uint64_t *buf, unsigned int idx)
{
	((volatile struct ctl *)buf)->slot[idx] = SLOT_REREAD;
}

/* export-multi: one segment, --importers N importers (attach-multi --index i). */
static int case_export_multi(void)
{
	int rc = export_setup();

	if (!rc)
		rc = multi_serve(exp_buf, opt.importers);
	if (rc)
		return rc;
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/* attach-multi: importer --index i of an export-multi segment. */
static int case_attach_multi(void)
{
	int rc = attach(XPMEM_RDWR);

	if (!rc)
		rc = multi_join(imp_buf, imp_buf, opt.index);
	if (rc)
		return rc;
	multi_leave(imp_buf, opt.index);
	return imp_finish();
}

/* export-two: two segments from one process, one importer each (attach-two). */
static int case_export_two(void)
{
	volatile uint64_t *buf[2];
	xpmem_segid_t segid[2];
	int i, rc;

	opt.importers = 1;
	for (i = 0; i < 2; i++) {
		buf[i] = alloc_buf(opt.pages);
		if (!buf[i])
			return fail("mmap: %s", strerror(errno));
		rc = export_buf(buf[i], &segid[i]);
		if (rc)
			return rc;
	}
	for (i = 0; i < 2; i++) {
		rc = multi_serve(buf[i], 1);
		if (rc)
			return rc;
	}
	for (i = 0; i < 2; i++)
		if (xpmem_remove(segid[i]))
			return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/*
 * attach-two: two segments (two SEGID lines: two segments of one exporter,
 * or one segment each of two exporters) attached at the same time.
 */
static int case_attach_two(void)
{
	volatile uint64_t *buf[2];
	xpmem_apid_t apid[2];
	int i, rc;

	for (i = 0; i < 2; i++) {
		opt.segid = -1;
		if (!segid_from_stdin())
			return fail("no segid %d on the console", i + 1);
		rc = attach_segid(opt.segid, XPMEM_RDWR, &buf[i], &apid[i]);
		if (rc)
			return rc;
	}
	if (buf[0] == buf[1])
		return fail("both attachments at the same address");
	for (i = 0; i < 2; i++) {
		rc = multi_join(buf[i], buf[i], 0);
		if (rc)
			return rc;
		multi_leave(buf[i], 0);
	}
	for (i = 0; i < 2; i++)
		if (xpmem_detach((void *)buf[i]) || xpmem_release(apid[i]))
			return fail("detach/release %d: %s", i + 1,
				    strerror(errno));
	return pass();
}

/*
 * attach-twice: two attachments of one permit in one process; writes through
 * the first are read through the second, the exporter's rewrite reaches both,
 * and the second keeps working after the first is detached.
 */
static int case_attach_twice(void)
{
	volatile uint64_t *second;
	int rc = attach(XPMEM_RDWR);

	if (rc)
		return rc;
	second = attach_apid(imp_apid);
	if (!second)
		return EXIT_FAIL;
	if (second == imp_buf)
		return fail("second attachment at the same address");
	rc = multi_join(imp_buf, second, 0);
	if (rc)
		return rc;
	/* Before leaving: the exporter removes the segment once we left. */
	if (xpmem_detach((void *)second))
		return fail("xpmem_detach (second): %s", strerror(errno));
	rc = imp_verify(REWRITE_GEN);
	if (rc)
		return rc;
	multi_leave(imp_buf, 0);
	return imp_finish();
}

/* ---- memory pressure in the exporter ---- */

#define ROUND_END	99

/* Page frame of each page of [buf, buf + n pages) (0 where not present). */
static int read_pfns(volatile uint64_t *buf, unsigned long n, uint64_t *pfn)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	unsigned long i;
	uint64_t e;

	if (fd < 0)
		return -1;
	for (i = 0; i < n; i++) {
		off_t off = ((uintptr_t)buf / PAGE + i) * sizeof(e);

		if (pread(fd, &e, sizeof(e), off) != sizeof(e)) {
			close(fd);
			return -1;
		}
		pfn[i] = (e >> 63) ? (e & ((1ULL << 55) - 1)) : 0;
	}
	close(fd);
	return 0;
}

static unsigned long pfns_moved(const uint64_t *before, const uint64_t *after,
				unsigned long n)
{
	unsigned long i, moved = 0;

	for (i = 0; i < n; i++)
		moved += before[i] != after[i];
	return moved;
}

static void write_proc(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);

	if (fd >= 0) {
		if (write(fd, val, strlen(val)) < 0)
			say("NOTE %s: %s", path, strerror(errno));
		close(fd);
	}
}

/* A child that takes @pct % of the available memory, touches it, and exits. */
static void balloon(unsigned int pct)
{
	long long avail_kb = 0;
	char line[128];
	FILE *f = fopen("/proc/meminfo", "r");
	pid_t child;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %lld kB", &avail_kb) == 1)
			break;
	if (f)
		fclose(f);
	child = fork();
	if (child == 0) {
		size_t len = (size_t)avail_kb * 1024 / 100 * pct;
		char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		size_t off;

		if (p == MAP_FAILED)
			_exit(1);
		for (off = 0; off < len; off += PAGE)
			p[off] = 1;
		write_proc("/proc/sys/vm/compact_memory", "1");
		_exit(0);
	}
	if (child > 0)
		waitpid(child, NULL, 0);
	say("NOTE balloon of %lld MiB came and went", avail_kb / 1024 * pct / 100);
}

/* Rewrite the data as generation @gen and wait until the importer read it. */
static int pressure_round(volatile uint64_t *buf, uint64_t gen)
{
	volatile struct ctl *ctl = (volatile struct ctl *)buf;

	fill(buf + WORDS, opt.pages, gen);
	ctl->gen = gen;
	ctl->round = gen;
	if (!wait_for(&ctl->slot[0], gen))
		return fail("importer did not read generation %llu",
			    (unsigned long long)gen);
	return EXIT_PASS;
}

/*
 * export-pressure: a 2 MiB segment (--pages is 511) whose pages move while an
 * importer (attach-follow) reads them: collapsed into a huge page
 * (MADV_COLLAPSE copies every page to a new one), split again by mprotect,
 * then a balloon, compaction and a cache drop. After each step the exporter
 * writes a new generation and the importer must read it: an importer left
 * on a page that the exporter no longer has would read stale data.
 */
static int case_export_pressure(void)
{
	static uint64_t pfn0[HUGE_PAGE / PAGE], pfn1[HUGE_PAGE / PAGE];
	const unsigned long n = HUGE_PAGE / PAGE;
	volatile struct ctl *ctl;
	volatile uint64_t *buf;
	long long sent0, sent1;
	char *raw;
	int rc, tries;

	opt.pages = n - 1;
	raw = mmap(NULL, 2 * HUGE_PAGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return fail("mmap: %s", strerror(errno));
	buf = (volatile uint64_t *)(((uintptr_t)raw + HUGE_PAGE - 1) &
				    ~(HUGE_PAGE - 1));
	/* Small pages first, so that the collapse below has to move them. */
	madvise((void *)buf, HUGE_PAGE, MADV_NOHUGEPAGE);
	rc = export_buf(buf, &exp_segid);
	if (rc)
		return rc;
	ctl = (volatile struct ctl *)buf;
	ctl->round = 1;
	if (!wait_for(&ctl->slot[0], 1))
		return fail("importer did not read generation 1");

	if (read_pfns(buf, n, pfn0) || read_stat("inval_sent", &sent0))
		return fail("cannot read pagemap or /proc/xpmem/stats");
	madvise((void *)buf, HUGE_PAGE, MADV_HUGEPAGE);
	for (tries = 0; tries < 5; tries++) {
		rc = madvise((void *)buf, HUGE_PAGE, MADV_COLLAPSE);
		if (!rc || errno != EAGAIN)
			break;
		sleep(1);
	}
	if (rc)
		return fail("MADV_COLLAPSE: %s", strerror(errno));
	if (read_pfns(buf, n, pfn1) || read_stat("inval_sent", &sent1))
		return fail("cannot read pagemap or /proc/xpmem/stats");
	say("NOTE collapse moved %lu of %lu pages, %lld invalidation(s) sent",
	    pfns_moved(pfn0, pfn1, n), n, sent1 - sent0);
	if (!pfns_moved(pfn0, pfn1, n))
		return fail("MADV_COLLAPSE moved no page");
	if (sent1 == sent0)
		return fail("pages moved under an importer but no INVALIDATE was sent");
	rc = pressure_round(buf, 2);
	if (rc)
		return rc;

	/* Split the huge page again (protection change on one 4 KiB page). */
	if (mprotect((void *)(buf + WORDS * 256), PAGE, PROT_READ) ||
	    mprotect((void *)(buf + WORDS * 256), PAGE, PROT_READ | PROT_WRITE))
		return fail("mprotect: %s", strerror(errno));
	balloon(40);
	write_proc("/proc/sys/vm/drop_caches", "3");
	write_proc("/proc/sys/vm/compact_memory", "1");
	if (read_pfns(buf, n, pfn0))
		return fail("cannot read pagemap");
	say("NOTE after split, balloon and compaction %lu of %lu pages moved",
	    pfns_moved(pfn1, pfn0, n), n);
	rc = pressure_round(buf, 3);
	if (rc)
		return rc;
	ctl->round = ROUND_END;
	if (!wait_for(&ctl->slot[0], ROUND_END))
		return fail("importer did not finish");
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/*
 * attach-follow: read every round's generation (export-pressure), reading
 * all pages all the time in between, so faults race with the exporter's
 * page moves and invalidations.
 */
static int case_attach_follow(void)
{
	volatile struct ctl *ctl;
	uint64_t seen = 0, sum = 0;
	double end;
	unsigned long i;
	int rc = attach(XPMEM_RDWR);

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	for (;;) {
		end = now() + opt.timeout;
		while (ctl->round <= seen) {
			if (now() > end)
				return fail("exporter stuck after round %llu",
					    (unsigned long long)seen);
			for (i = 0; i < opt.pages; i++)
				sum += imp_buf[WORDS * (1 + i)];
			usleep(1000);
		}
		seen = ctl->round;
		if (seen == ROUND_END)
			break;
		rc = imp_verify(ctl->gen);
		if (rc)
			return rc;
		ctl->slot[0] = seen;
	}
	ctl->slot[0] = ROUND_END;
	say("NOTE read generations up to %llu (checksum %llx)",
	    (unsigned long long)ctl->gen, (unsigned long long)sum);
	return imp_finish();
}

/* ---- importers that go away while attached ---- */

/*
 * export-wait-gone: after the importer read everything and then went away
 * while attached (attach-exit, attach-poweroff), a "GONE <vm>" line comes on
 * the console; the munmap after that must reach no importer: the host
 * released the importer's mappings of these pages when it left.
 */
static int case_export_wait_gone(void)
{
	volatile struct ctl *ctl;
	long long t0, t1, r0, r1, s0, s1;
	char who[64];
	double start, ms;
	int rc = export_setup();

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)exp_buf;
	if (!wait_for(&ctl->imp_state, IMP_VERIFIED))
		return fail("importer did not read");
	if (!wait_line("GONE", who, sizeof(who)))
		return fail("no GONE line on the console");
	if (read_stat("inval_targets", &t0) || read_stat("inval_revoked", &r0) ||
	    read_stat("inval_sent", &s0))
		return fail("/proc/xpmem/stats has no inval_targets/inval_revoked");
	start = now();
	if (munmap((void *)exp_buf, (opt.pages + 1) * PAGE))
		return fail("munmap: %s", strerror(errno));
	ms = (now() - start) * 1000;
	if (read_stat("inval_targets", &t1) || read_stat("inval_revoked", &r1) ||
	    read_stat("inval_sent", &s1))
		return fail("/proc/xpmem/stats lost its counters");
	/* The pages were handed out, so the munmap must have asked the host. */
	if (s1 == s0)
		return fail("munmap sent no INVALIDATE: nothing to check");
	say("NOTE munmap after %s left took %.1f ms: %lld importer target(s), %lld revoked",
	    who, ms, t1 - t0, r1 - r0);
	if (t1 != t0 || r1 != r0)
		return fail("munmap still reached %lld importer attachment(s) (%lld revoked) after %s left",
			    t1 - t0, r1 - r0, who);
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/* attach-exit: exit while attached, without detach or release. */
static int case_attach_exit(void)
{
	int rc = attach_and_read();

	if (rc)
		return rc;
	say("PASS");
	_exit(EXIT_PASS);
}

/*
 * export-poweroff: once a "READY" line came, export a buffer (--to: its
 * importer runs attach-gone), wait until the importer read it, then attach
 * a segid typed on the console, read it, and power the VM off while it is
 * both exporter and importer: the host must revoke the importer's mapping
 * of our pages (SIGBUS there) and drop our mappings of the other VM's pages.
 */
static int case_export_poweroff(void)
{
	volatile struct ctl *ctl;
	char who[64];
	int rc;

	if (!wait_line("READY", who, sizeof(who)))
		return fail("no READY line on the console");
	rc = export_setup();
	if (rc)
		return rc;
	ctl = (volatile struct ctl *)exp_buf;
	if (!wait_for(&ctl->imp_state, IMP_VERIFIED))
		return fail("importer did not read");
	rc = attach_and_read();
	if (rc)
		return rc;
	say("PASS powering off while exporting and attached");
	sync();
	reboot(RB_POWER_OFF);
	return fail("reboot(RB_POWER_OFF): %s", strerror(errno));
}

/* attach-poweroff: power the VM off while attached. */
static int case_attach_poweroff(void)
{
	int rc = attach_and_read();

	if (rc)
		return rc;
	say("PASS powering off while attached");
	sync();
	reboot(RB_POWER_OFF);
	return fail("reboot(RB_POWER_OFF): %s", strerror(errno));
}

/* ---- bandwidth, side by side with local memory ---- */

static double dmax(double a, double b)
{
	return a > b ? a : b;
}

/* MiB/s of @reps read passes over @len bytes at @p; *sum keeps them honest. */
static double read_mibs(volatile uint64_t *p, size_t len, int reps,
			uint64_t *sum)
{
	double t0 = now();
	size_t i;
	int r;

	for (r = 0; r < reps; r++)
		for (i = 0; i < len / 8; i++)
			*sum += p[i];
	return reps * (double)len / (1 << 20) / (now() - t0);
}

static double write_mibs(volatile uint64_t *p, size_t len, int reps)
{
	double t0 = now();
	size_t i;
	int r;

	for (r = 0; r < reps; r++)
		for (i = 0; i < len / 8; i++)
			p[i] = i ^ r;
	return reps * (double)len / (1 << 20) / (now() - t0);
}

/*
 * attach-bench: first-touch rate of an attachment (the FAULT/RESOLVE path),
 * then read and write bandwidth of the attached pages and of the same amount
 * of this process's own memory, measured alternately in one run. Prints a
 * NOTE, asserts nothing about speed; posts nothing (the script says DONE).
 */
static int case_attach_bench(void)
{
	size_t len = (opt.pages + 1) * PAGE, i;
	volatile uint64_t *local;
	double t0, touch, ra = 0, rl = 0, wa = 0, wl = 0;
	uint64_t sum = 0;
	int rc = attach(XPMEM_RDWR), round;

	if (rc)
		return rc;
	local = alloc_buf(opt.pages);
	if (!local)
		return fail("mmap: %s", strerror(errno));
	t0 = now();
	for (i = 0; i < len / 8; i += WORDS)
		sum += imp_buf[i];
	touch = now() - t0;
	memset((void *)local, 1, len);
	/* Alternate, so machine noise hits both sides alike; keep the best. */
	for (round = 0; round < 3; round++) {
		ra = dmax(ra, read_mibs(imp_buf, len, 2, &sum));
		rl = dmax(rl, read_mibs(local, len, 2, &sum));
		wa = dmax(wa, write_mibs(imp_buf, len, 2));
		wl = dmax(wl, write_mibs(local, len, 2));
	}
	say("NOTE bench %lu pages: first touch %.0f pages/s; read attached %.0f MiB/s, local %.0f MiB/s (%.2fx); write attached %.0f MiB/s, local %.0f MiB/s (%.2fx) [sum %llx]",
	    opt.pages + 1, (opt.pages + 1) / touch, ra, rl, ra / rl, wa, wl,
	    wa / wl, (unsigned long long)sum);
	return imp_finish();
}

/* ---- many threads faulting while the exporter invalidates ---- */

/* A SIGBUS-safe read for threads (each has its own jump buffer). */
static __thread sigjmp_buf thread_jmp;

static void on_thread_bus(int sig)
{
	siglongjmp(thread_jmp, 1);
}

static void catch_bus_in_threads(void)
{
	struct sigaction sa = { .sa_handler = on_thread_bus };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}

/* *@val = *@p, or false if the read raised SIGBUS. */
static bool thread_read(volatile uint64_t *p, uint64_t *val)
{
	if (sigsetjmp(thread_jmp, 1))
		return false;
	*val = *p;
	return true;
}

/* State shared by the exporter and its importer child (MAP_SHARED). */
struct stress_shared {
	volatile uint64_t stop;
	volatile uint64_t attached;
	volatile uint64_t reads;
	volatile uint64_t sigbus;
	volatile uint64_t bad;	/* words that are neither 0 nor the page's own */
	volatile uint64_t bad_val;
};

struct stress_thread {
	pthread_t tid;
	unsigned int index;
	volatile uint64_t *data;	/* data pages of the attachment */
	struct stress_shared *sh;
};

/* Word 0 of data page p holds p << 32 | round, or 0 (a fresh page). */
static void *stress_reader(void *arg)
{
	struct stress_thread *t = arg;
	unsigned long p = t->index;
	uint64_t v, reads = 0, bus = 0;

	while (!t->sh->stop) {
		if (!thread_read(t->data + p * WORDS, &v)) {
			bus++;
		} else {
			reads++;
			if (v && v >> 32 != p) {
				__sync_fetch_and_add(&t->sh->bad, 1);
				t->sh->bad_val = v;
			}
		}
		p += opt.threads;
		if (p >= opt.pages)
			p = t->index;
	}
	__sync_fetch_and_add(&t->sh->reads, reads);
	__sync_fetch_and_add(&t->sh->sigbus, bus);
	return NULL;
}

static void stress_fill(volatile uint64_t *data, uint64_t round)
{
	unsigned long p;

	for (p = 0; p < opt.pages; p++)
		data[p * WORDS] = p << 32 | (round & 0xffffffff) | 1;
}

/* Importer child of stress-fault-inval: --threads readers until told to stop. */
static int stress_importer(struct stress_shared *sh)
{
	struct stress_thread *t;
	volatile uint64_t *buf;
	xpmem_apid_t apid;
	unsigned int i;
	int rc;

	cur_case = "stress-fault-inval-child";
	rc = attach_segid(opt.segid, XPMEM_RDWR, &buf, &apid);
	if (rc)
		return rc;
	t = calloc(opt.threads, sizeof(*t));
	if (!t)
		return fail("calloc");
	catch_bus_in_threads();
	for (i = 0; i < opt.threads; i++) {
		t[i].index = i;
		t[i].data = buf + WORDS;
		t[i].sh = sh;
		if (pthread_create(&t[i].tid, NULL, stress_reader, &t[i]))
			return fail("pthread_create: %s", strerror(errno));
	}
	sh->attached = 1;
	for (i = 0; i < opt.threads; i++)
		pthread_join(t[i].tid, NULL);
	if (xpmem_detach((void *)buf))
		return fail("xpmem_detach: %s", strerror(errno));
	if (xpmem_release(apid))
		return fail("xpmem_release: %s", strerror(errno));
	return EXIT_PASS;
}

/* A page shared with the children to come, and the exported buffer. */
static int export_shared(struct stress_shared **sh)
{
	*sh = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (*sh == MAP_FAILED)
		return fail("mmap: %s", strerror(errno));
	return export_setup();
}

/* Snapshot of the /proc/xpmem totals a stress case reports. */
struct stress_stats {
	long long inval_sent, inval_recv, resolves, faults, sigbus;
};

static void stress_stats(struct stress_stats *st)
{
	memset(st, 0, sizeof(*st));
	read_stat("inval_sent", &st->inval_sent);
	read_stat("inval_recv", &st->inval_recv);
	read_stat("resolves", &st->resolves);
	read_stat("faults", &st->faults);
	read_stat("fault_sigbus", &st->sigbus);
}

/* The slab debugging the guest kernel runs with (FZPU or not). */
static void note_slub_debug(void)
{
	static const char * const flags[] = { "sanity_checks", "red_zone",
					      "poison", "store_user" };
	char path[128], val[16];
	unsigned int i;
	int on = 0;

	for (i = 0; i < 4; i++) {
		FILE *f;

		snprintf(path, sizeof(path), "/sys/kernel/slab/kmalloc-256/%s",
			 flags[i]);
		f = fopen(path, "r");
		if (f && fgets(val, sizeof(val), f) && atoi(val) == 1)
			on |= 1 << i;
		if (f)
			fclose(f);
	}
	say("NOTE slab debugging of kmalloc-256: sanity_checks=%d red_zone=%d poison=%d store_user=%d",
	    !!(on & 1), !!(on & 2), !!(on & 4), !!(on & 8));
}

/*
 * stress-fault-inval: a child attaches the segment and --threads threads read
 * it page by page (many concurrent FAULTs, RESOLVEs), while the exporter
 * --rounds times drops its pages (MADV_DONTNEED) or unmaps and remaps them
 * (INVALIDATEs; importers then get SIGBUS until the remap), refilling them
 * each round. Bounded by --rounds and --timeout. The point is the guest
 * kernel: run under slub_debug, its log must show no report.
 */
static int case_stress_fault_inval(void)
{
	size_t len = opt.pages * PAGE;
	struct stress_stats st0, st1;
	struct stress_shared *sh;
	volatile uint64_t *data;
	unsigned int round;
	double start, end;
	pid_t child;
	int rc, status;

	if (!opt.threads)
		opt.threads = 4;
	if (!opt.rounds)
		opt.rounds = 200;
	note_slub_debug();
	rc = export_shared(&sh);
	if (rc)
		return rc;
	data = exp_buf + WORDS;
	stress_fill(data, 0);
	opt.segid = exp_segid;
	stress_stats(&st0);
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0)
		_exit(stress_importer(sh));
	start = now();
	end = start + opt.timeout;
	while (!sh->attached && now() < end)
		usleep(1000);
	if (!sh->attached) {
		kill(child, SIGKILL);
		waitpid(child, &status, 0);
		return fail("importer did not attach within %d s", opt.timeout);
	}
	/* Leave a third of the time for the importers to finish and detach. */
	end = start + opt.timeout * 2 / 3.0;
	for (round = 1; round <= opt.rounds && now() < end; round++) {
		if (round % 2) {
			if (madvise((void *)data, len, MADV_DONTNEED))
				return fail("madvise: %s", strerror(errno));
		} else {
			if (munmap((void *)data, len))
				return fail("munmap: %s", strerror(errno));
			usleep(200);	/* importers fault into the hole */
			if (mmap((void *)data, len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				 0) != (void *)data)
				return fail("mmap: %s", strerror(errno));
		}
		stress_fill(data, round);
		usleep(500);	/* importers fault the new pages in */
	}
	sh->stop = 1;
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("importer child failed (status %#x)", status);
	stress_stats(&st1);
	say("NOTE %u rounds in %.1f s, %u threads over %lu pages: %llu reads, %llu SIGBUS; driver: %lld FAULTs, %lld RESOLVEs, %lld INVALIDATEs sent, %lld received, %lld fault SIGBUS",
	    round - 1, now() - start, opt.threads, opt.pages,
	    (unsigned long long)sh->reads, (unsigned long long)sh->sigbus,
	    st1.faults - st0.faults, st1.resolves - st0.resolves,
	    st1.inval_sent - st0.inval_sent, st1.inval_recv - st0.inval_recv,
	    st1.sigbus - st0.sigbus);
	if (sh->bad)
		return fail("%llu reads saw another page's data (last %#llx)",
			    (unsigned long long)sh->bad,
			    (unsigned long long)sh->bad_val);
	if (st1.inval_sent == st0.inval_sent || st1.resolves == st0.resolves)
		return fail("no INVALIDATE or no RESOLVE happened: nothing was stressed");
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/* ---- one process's FAULTs must not hold up another's munmap ---- */

#define MISBEHAVE "/sys/module/xpmem/parameters/test_misbehave"

#define HOG_MAX	200

/* What the fault-hog case shares with its children (MAP_SHARED). */
struct hog_shared {
	volatile uint64_t victim_read;	/* the victim importer read its pages */
	volatile uint64_t stop;		/* the victim importer may finish */
	volatile uint64_t started;	/* touchers the hog started */
	volatile int32_t pid[HOG_MAX];	/* the hog's toucher processes */
};

/*
 * A toucher: a process sharing the hog's mm (CLONE_VM, so killing it leaves
 * the attachment alive). It reads one page of the attachment; the read waits
 * in a FAULT that nobody answers. No libc call here: the TLS is the hog's.
 */
static int hog_toucher(void *arg)
{
	volatile uint64_t *p = arg;

	for (;;)
		(void)*p;
	return 0;
}

/* The hog: as uid 1000, attach @segid and fault --threads windows at once. */
static void fault_hog(struct hog_shared *sh, long long segid)
{
	volatile uint64_t *buf;
	xpmem_apid_t apid;
	unsigned int i;
	size_t stack = 64 << 10;
	char *stacks;
	pid_t pid;

	cur_case = "fault-hog-child";
	opt.uid = 1000;
	if (attach_segid(segid, XPMEM_RDWR, &buf, &apid))
		_exit(EXIT_FAIL);
	stacks = mmap(NULL, stack * opt.threads, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stacks == MAP_FAILED)
		_exit(EXIT_FAIL);
	signal(SIGCHLD, SIG_IGN);	/* killed touchers go at once */
	/* One FAULT window (prefetch_pages <= 16) per toucher. */
	for (i = 0; i < opt.threads; i++) {
		pid = clone(hog_toucher, stacks + stack * (i + 1),
			    CLONE_VM | SIGCHLD, (void *)(buf + (1 + i * 16UL) * WORDS));
		if (pid < 0)
			break;
		sh->pid[i] = pid;
		sh->started = i + 1;
	}
	for (;;)
		pause();
}

/* Read the numbers a case needs from /proc/xpmem/stats' header lines. */
static void device_limits(long long *deadline, int *fault_per_process)
{
	unsigned int inv, inv_pp, flt, flt_pp;
	char line[256];
	FILE *f = fopen("/proc/xpmem/stats", "r");

	*deadline = 0;
	*fault_per_process = -1;
	while (f && fgets(line, sizeof(line), f)) {
		sscanf(line, "device: vm %*u, max_fault_pages %*u, deadline %lld ms",
		       deadline);
		if (sscanf(line, "deferred slots: invalidate %u (%u per process), fault %u (%u per process)",
			   &inv, &inv_pp, &flt, &flt_pp) == 4)
			*fault_per_process = flt_pp;
	}
	if (f)
		fclose(f);
}

/*
 * A buffer that nothing but its munmap invalidates: not copied by fork
 * (whose copy-on-write protection would invalidate it) and kept in 4 KiB
 * pages (khugepaged would collapse them).
 */
static volatile uint64_t *alloc_quiet_buf(unsigned long npages)
{
	volatile uint64_t *p = alloc_buf(npages);

	if (p && (madvise((void *)p, (npages + 1) * PAGE, MADV_DONTFORK) ||
		  madvise((void *)p, (npages + 1) * PAGE, MADV_NOHUGEPAGE)))
		p = NULL;
	return p;
}

/* Export a quiet buffer of @npages data pages (opt.pages becomes @npages). */
static int export_quiet(unsigned long npages, volatile uint64_t **buf,
			xpmem_segid_t *segid)
{
	opt.pages = npages;
	*buf = alloc_quiet_buf(npages);
	if (!*buf)
		return fail("mmap: %s", strerror(errno));
	return export_buf(*buf, segid);
}

/*
 * fault-hog: an unprivileged process (uid 1000) keeps --threads FAULTs
 * outstanding on a segment whose exporter never answers (test_misbehave=
 * no_resolve stands for a hostile exporter VM; the device fails each FAULT
 * at its resolve timeout). Its touchers are processes sharing its mm. While
 * they wait, root's munmap of another segment, attached and read by a child,
 * must return (NOTE: its time against the device's deadline). The hog's mm
 * never holds more FAULT slots than one process's share. Then the touchers
 * are SIGKILLed while the attachment stays: their slots stay held until the
 * device gives the FAULTs back, and then all are free again.
 */
static int case_fault_hog(void)
{
	unsigned long hog_pages, victim_pages = opt.pages;
	long long deadline, inflight = 0, held_max = 0, held_killed, s0, s1;
	long long k0, k1;
	volatile uint64_t *hog_buf, *victim_buf;
	xpmem_segid_t hog_segid, victim_segid;
	double t0, munmap_ms, drain;
	struct hog_shared *sh;
	pid_t child, hog;
	int per_process, status, rc;
	unsigned int i;

	if (!opt.threads)
		opt.threads = 80;
	if (opt.threads > HOG_MAX)
		return fail("--threads at most %d", HOG_MAX);
	if (access(MISBEHAVE, W_OK))
		return fail("%s: %s (module without test_misbehave)", MISBEHAVE,
			    strerror(errno));
	device_limits(&deadline, &per_process);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return fail("mmap: %s", strerror(errno));

	/* The hog's segment, never resolved: no importer touched it yet. */
	hog_pages = 1 + opt.threads * 16UL;
	rc = export_quiet(hog_pages, &hog_buf, &hog_segid);
	if (rc)
		return rc;

	/* The victim: root's segment, attached and read by a child. */
	rc = export_quiet(victim_pages, &victim_buf, &victim_segid);
	if (rc)
		return rc;
	opt.segid = victim_segid;
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		cur_case = "fault-hog-victim";
		if (attach(XPMEM_RDWR) || imp_verify(1))
			_exit(EXIT_FAIL);
		sh->victim_read = 1;
		while (!sh->stop)
			usleep(1000);
		_exit(imp_finish() ? EXIT_FAIL : EXIT_PASS);
	}
	if (!wait_for(&sh->victim_read, 1))
		return fail("victim importer did not read within %d s", opt.timeout);

	write_proc(MISBEHAVE, "no_resolve");
	opt.pages = hog_pages;
	hog = fork();
	if (hog < 0)
		return fail("fork: %s", strerror(errno));
	if (hog == 0)
		fault_hog(sh, hog_segid);

	/* Let the hog's FAULTs pile up: until the count holds for a second. */
	t0 = now();
	for (s0 = -1; now() - t0 < 8; usleep(250000)) {
		if (read_stat("faults_inflight", &inflight))
			break;
		if (inflight > held_max)
			held_max = inflight;
		if (inflight && inflight == s0 && sh->started == opt.threads &&
		    now() - t0 > 2)
			break;
		s0 = inflight;
	}

	/* The victim's munmap: one INVALIDATE, acknowledged by the child. */
	read_stat("inval_sent", &s0);
	read_stat("inval_skipped", &k0);
	t0 = now();
	if (munmap((void *)victim_buf, (victim_pages + 1) * PAGE))
		return fail("munmap: %s", strerror(errno));
	munmap_ms = (now() - t0) * 1000;
	read_stat("inval_sent", &s1);
	read_stat("inval_skipped", &k1);
	read_stat("faults_inflight", &inflight);
	if (inflight > held_max)
		held_max = inflight;

	/* Kill the waiters, keep the attachment (the hog process stays). */
	for (i = 0; i < sh->started; i++)
		kill(sh->pid[i], SIGKILL);
	t0 = now();
	for (i = 0; i < sh->started && now() - t0 < opt.timeout; )
		if (kill(sh->pid[i], 0) && errno == ESRCH)
			i++;
		else
			usleep(1000);
	read_stat("faults_inflight", &held_killed);
	t0 = now();
	while (!read_stat("faults_inflight", &inflight) && inflight &&
	       now() - t0 < opt.timeout)
		usleep(10000);
	drain = now() - t0;
	kill(hog, SIGKILL);
	waitpid(hog, &status, 0);
	write_proc(MISBEHAVE, "off");
	sh->stop = 1;

	say("NOTE munmap took %.1f ms (device deadline %lld ms) while uid 1000 had %lld FAULTs in flight (%llu touchers; per-process share %d)",
	    munmap_ms, deadline, held_max, (unsigned long long)sh->started,
	    per_process);
	say("NOTE after its %llu touchers were SIGKILLed, %lld FAULT slots stayed held until the device gave them back %.1f s later",
	    (unsigned long long)sh->started, held_killed, drain);
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("victim importer failed");
	if (s1 == s0)
		return fail("munmap sent no INVALIDATE (%lld skipped): nothing was measured",
			    k1 - k0);
	if (inflight)
		return fail("%lld FAULT slots still held %d s after the touchers died",
			    inflight, opt.timeout);
	if (per_process > 0 && held_max > per_process)
		return fail("one process held %lld FAULT slots, its share is %d",
			    held_max, per_process);
	if (!held_max)
		return fail("the hog never had a FAULT in flight: nothing was tested");
	if (!held_killed)
		return fail("the killed touchers' FAULT slots were free before the device gave their FAULTs back");
	xpmem_remove(hog_segid);
	xpmem_remove(victim_segid);
	return pass();
}

/* The library's descriptor of /dev/xpmem (after its first call), or -1. */
static int lib_fd(void)
{
	char path[64], link[64];
	ssize_t len;
	int fd;

	for (fd = 3; fd < 256; fd++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		len = readlink(path, link, sizeof(link) - 1);
		if (len <= 0)
			continue;
		link[len] = 0;
		if (!strcmp(link, "/dev/xpmem"))
			return fd;
	}
	return -1;
}

/*
 * get-permit-value: Open MPI (btl/vader, smsc/xpmem) and UCX call
 * xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, (void *)0666). The native
 * library ignores permit_value (the kernel gets NULL), so the call works and
 * the attachment reads the exporter's data.
 */
static int case_get_permit_value(void)
{
	volatile uint64_t *buf = alloc_buf(1), *att;
	struct xpmem_cmd_attach cmd = { .offset = 0, .size = 2 * PAGE,
					.vaddr = 0, .flags = 0x40 };
	struct xpmem_addr addr = { .offset = 0 };
	int fd;
	xpmem_segid_t segid;
	xpmem_apid_t apid;

	if (!buf)
		return fail("mmap: %s", strerror(errno));
	buf[WORDS] = MAGIC;
	segid = xpmem_make((void *)buf, 2 * PAGE, XPMEM_PERMIT_MODE, (void *)0600);
	if (segid == -1)
		return fail("xpmem_make: %s", strerror(errno));
	apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, (void *)0666);
	if (apid == -1)
		return fail("xpmem_get with permit_value (void *)0666 (as Open MPI calls it): %s",
			    strerror(errno));
	addr.apid = apid;
	att = xpmem_attach(addr, 2 * PAGE, NULL);
	if (att == (void *)-1)
		return fail("xpmem_attach: %s", strerror(errno));
	if (att[WORDS] != MAGIC)
		return fail("attachment reads %#llx", (unsigned long long)att[WORDS]);
	if (xpmem_detach((void *)att))
		return fail("xpmem_detach: %s", strerror(errno));
	/*
	 * The native library passes its descriptor in the ATTACH ioctl's fd and
	 * the module ignores fd and flags: a caller's own ioctl with any fd and
	 * unknown flag bits attaches too.
	 */
	cmd.apid = apid;
	fd = lib_fd();
	if (fd < 0)
		return fail("no /dev/xpmem descriptor of the library");
	cmd.fd = fd;
	if (ioctl(fd, XPMEM_CMD_ATTACH, &cmd))
		return fail("ATTACH with fd %d and flags %#x: %s, natively ignored",
			    cmd.fd, cmd.flags, strerror(errno));
	att = (volatile uint64_t *)(uintptr_t)cmd.vaddr;
	if (att[WORDS] != MAGIC)
		return fail("the ioctl's attachment reads %#llx",
			    (unsigned long long)att[WORDS]);
	if (xpmem_detach((void *)att) || xpmem_release(apid) ||
	    xpmem_remove(segid))
		return fail("cleanup: %s", strerror(errno));
	return pass();
}

/* Whether /proc/xpmem/names has the line "<segid in hex> <name>". */
static bool proc_lists_name(xpmem_segid_t segid, const char *name)
{
	char line[128], want[128];
	bool found = false;
	FILE *f = fopen("/proc/xpmem/names", "r");

	if (!f)
		return false;
	snprintf(want, sizeof(want), "%#llx %s\n", (long long)segid, name);
	while (!found && fgets(line, sizeof(line), f))
		found = !strcmp(line, want);
	fclose(f);
	return found;
}

/* A child process makes and names a segment, then exits (it never removes it). */
static int name_in_child(const char *name)
{
	volatile uint64_t *buf;
	pid_t child = fork();
	int status;

	if (child < 0)
		return -1;
	if (child == 0) {
		buf = alloc_buf(1);
		_exit(buf && xpmem_make_name((void *)buf, PAGE, XPMEM_PERMIT_MODE,
					     (void *)0666, name) > 0 ? 0 : 1);
	}
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

/*
 * names: named segments (an extension; spec 8.13) in one VM: make_name and
 * search, the name listed in /proc/xpmem/names, unique, given once, refused
 * to another process, malformed names refused with EINVAL/ENAMETOOLONG, gone
 * with xpmem_remove and with the process, and free again afterwards.
 */
static int case_names(void)
{
	volatile uint64_t *buf = alloc_buf(3), *att;
	char name[64], other[64], longname[XPMEM_NAME_MAX + 2];
	struct xpmem_addr addr = { .offset = 0 };
	xpmem_segid_t segid, seg2, found;
	pid_t child;
	int status;

	if (!buf)
		return fail("mmap: %s", strerror(errno));
	snprintf(name, sizeof(name), "names-%d", (int)getpid());
	snprintf(other, sizeof(other), "names-child-%d", (int)getpid());
	buf[WORDS] = MAGIC;
	segid = xpmem_make_name((void *)buf, 2 * PAGE, XPMEM_PERMIT_MODE,
				(void *)0600, name);
	if (segid == -1)
		return fail("xpmem_make_name: %s", strerror(errno));
	found = xpmem_search(name);
	if (found != segid)
		return fail("xpmem_search found %lld (%s), made %lld",
			    (long long)found, strerror(errno), (long long)segid);
	if (!proc_lists_name(segid, name))
		return fail("/proc/xpmem/names does not list %#llx %s",
			    (long long)segid, name);
	addr.apid = xpmem_get(found, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (addr.apid == -1)
		return fail("xpmem_get of the found segment: %s", strerror(errno));
	att = xpmem_attach(addr, 2 * PAGE, NULL);
	if (att == (void *)-1 || att[WORDS] != MAGIC)
		return fail("attach of the found segment: %s", strerror(errno));
	if (xpmem_detach((void *)att) || xpmem_release(addr.apid))
		return fail("detach/release: %s", strerror(errno));

	/* Unique and given once; a failed make_name leaves no segment behind. */
	seg2 = xpmem_make((void *)(buf + WORDS * 2), PAGE, XPMEM_PERMIT_MODE,
			  (void *)0666);
	if (seg2 == -1)
		return fail("xpmem_make: %s", strerror(errno));
	if (xpmem_name(seg2, name) != -1 || errno != EEXIST)
		return fail("a taken name: %s, want EEXIST", strerror(errno));
	if (xpmem_name(segid, other) != -1 || errno != EEXIST)
		return fail("a second name: %s, want EEXIST", strerror(errno));
	if (xpmem_make_name((void *)(buf + WORDS * 2), PAGE, XPMEM_PERMIT_MODE,
			    (void *)0666, name) != -1 || errno != EEXIST)
		return fail("make_name with a taken name: %s, want EEXIST",
			    strerror(errno));
	if (xpmem_remove(seg2))
		return fail("xpmem_remove: %s", strerror(errno));

	/* Malformed names never reach the device. */
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	if (xpmem_search(longname) != -1 || errno != ENAMETOOLONG)
		return fail("a 64-byte name: %s, want ENAMETOOLONG", strerror(errno));
	if (xpmem_search("") != -1 || errno != EINVAL)
		return fail("an empty name: %s, want EINVAL", strerror(errno));
	if (xpmem_search("a b") != -1 || errno != EINVAL)
		return fail("a name with a space: %s, want EINVAL", strerror(errno));
	longname[XPMEM_NAME_MAX] = 0;
	if (xpmem_search(longname) != -1 || errno != ENOENT)
		return fail("an unknown 63-byte name: %s, want ENOENT",
			    strerror(errno));

	/* Only the segment's owner may name it. */
	seg2 = xpmem_make((void *)(buf + WORDS * 2), PAGE, XPMEM_PERMIT_MODE,
			  (void *)0666);
	if (seg2 == -1)
		return fail("xpmem_make: %s", strerror(errno));
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0)
		_exit(xpmem_name(seg2, other) == -1 && errno == EACCES ? 0 : 1);
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("another process could name this process's segment");
	if (xpmem_remove(seg2))
		return fail("xpmem_remove: %s", strerror(errno));

	/* Gone with xpmem_remove, and free again. */
	if (xpmem_remove(segid))
		return fail("xpmem_remove: %s", strerror(errno));
	if (xpmem_search(name) != -1 || errno != ENOENT)
		return fail("search after remove: %s, want ENOENT", strerror(errno));
	if (proc_lists_name(segid, name))
		return fail("/proc/xpmem/names still lists the removed segment");
	segid = xpmem_make_name((void *)buf, PAGE, XPMEM_PERMIT_MODE,
				(void *)0666, name);
	if (segid == -1)
		return fail("the name is not free after remove: %s",
			    strerror(errno));
	if (xpmem_remove(segid))
		return fail("xpmem_remove: %s", strerror(errno));

	/* Gone with the process that made it. */
	if (name_in_child(other))
		return fail("the child could not make and name a segment");
	if (xpmem_search(other) != -1 || errno != ENOENT)
		return fail("search after the exporter exited: %s, want ENOENT",
			    strerror(errno));
	return pass();
}

/*
 * self-attach: a process exports its whole address space and attaches its own
 * buffer from it (the attachment lies inside its own segment). Its munmap of
 * the buffer must not wait for itself: handling the INVALIDATE event zaps the
 * attachment, which the process's own segment must not take for a change of
 * exported memory (that waited for the device's deadline, then revoked by
 * force). Afterwards the attachment gives SIGBUS.
 */
static int case_self_attach(void)
{
	volatile uint64_t *buf = alloc_buf(4), *att;
	struct xpmem_addr addr;
	long long revoked0, revoked1;
	xpmem_segid_t segid;
	double t0;

	if (!buf)
		return fail("mmap: %s", strerror(errno));
	fill(buf + WORDS, 4, 1);
	segid = xpmem_make(0, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void *)0600);
	if (segid == -1)
		return fail("xpmem_make(0, XPMEM_MAXADDR_SIZE): %s", strerror(errno));
	addr.apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (addr.apid == -1)
		return fail("xpmem_get: %s", strerror(errno));
	addr.offset = (off_t)(uintptr_t)(buf + WORDS);
	att = xpmem_attach(addr, 4 * PAGE, NULL);
	if (att == (void *)-1)
		return fail("xpmem_attach of its own buffer: %s", strerror(errno));
	if (check(att, 4, 1) >= 0)
		return fail("the attachment does not show the buffer");
	if (read_stat("inval_revoked", &revoked0))
		return fail("/proc/xpmem/stats has no inval_revoked");
	t0 = now();
	if (munmap((void *)buf, 5 * PAGE))
		return fail("munmap: %s", strerror(errno));
	say("NOTE munmap of the self-attached buffer took %.1f ms",
	    (now() - t0) * 1e3);
	if (read_stat("inval_revoked", &revoked1))
		return fail("/proc/xpmem/stats lost inval_revoked");
	if (revoked1 != revoked0)
		return fail("the munmap waited for the deadline: %lld importers revoked by force",
			    revoked1 - revoked0);
	if (touch(att, false) != SIGBUS)
		return fail("touch after the munmap: want SIGBUS");
	if (xpmem_detach((void *)att) || xpmem_release(addr.apid) ||
	    xpmem_remove(segid))
		return fail("cleanup: %s", strerror(errno));
	return pass();
}

/*
 * export-space / attach-space (two VMs): the way UCX and Open MPI use XPMEM,
 * across VMs. The exporter maps its buffer at SPACE_ADDR (a fixed address
 * both sides know, as they would exchange it), leaves data page SPACE_HOLE
 * unmapped and exports its whole address space under --name. The importer
 * attaches at offset SPACE_ADDR: the hole gives SIGBUS, the pages around it
 * read. The exporter then maps the hole (memory mapped after the make) and
 * the same attachment shows it; threads of the importer fault a fresh
 * attachment at once. Finally the exporter is killed (SIGKILL) and the
 * importer's next touch gets SIGBUS.
 */
#define SPACE_ADDR	0x100000000000UL
#define SPACE_PAGES	8UL
#define SPACE_HOLE	5UL
#define SPACE_THREADS	6

/* Generation of data page @p of the space buffer once the hole is mapped. */
static uint64_t space_gen(unsigned long p)
{
	return p == SPACE_HOLE ? 3 : 1;
}

static long space_check(volatile const uint64_t *data)
{
	unsigned long p;
	long bad;

	for (p = 0; p < SPACE_PAGES; p++) {
		bad = check_range(data, p, p + 1, space_gen(p));
		if (bad >= 0)
			return bad;
	}
	return -1;
}

static int space_exporter(volatile int *done)
{
	volatile uint64_t *buf, *data;
	volatile struct ctl *ctl;
	void *hole;

	buf = mmap((void *)SPACE_ADDR, (SPACE_PAGES + 1) * PAGE,
		   PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (buf != (void *)SPACE_ADDR)
		return fail("mmap at %#lx: %s", SPACE_ADDR, strerror(errno));
	ctl = (volatile struct ctl *)buf;
	data = buf + WORDS;
	ctl->magic = MAGIC;
	ctl->npages = SPACE_PAGES;
	fill(data, SPACE_PAGES, 1);
	hole = (void *)(data + SPACE_HOLE * WORDS);
	if (munmap(hole, PAGE))
		return fail("munmap of the hole: %s", strerror(errno));
	ctl->exp_state = EXP_READY;
	if (xpmem_make_name(0, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE,
			    (void *)0666, opt.name) == -1)
		return fail("xpmem_make_name(0, XPMEM_MAXADDR_SIZE): %s",
			    strerror(errno));
	say("NAMED %s", opt.name);
	if (!wait_for(&ctl->imp_state, IMP_VERIFIED))
		return fail("the importer did not read around the hole");
	if (mmap(hole, PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != hole)
		return fail("mmap of the hole: %s", strerror(errno));
	fill_page(data, SPACE_HOLE, 3);
	ctl->exp_state = EXP_REWROTE;
	if (!wait_for(&ctl->imp_state, IMP_DONE))
		return fail("the importer did not finish");
	*done = 1;
	for (;;)
		pause();	/* until the parent kills it */
}

static int case_export_space(void)
{
	volatile int *done;
	pid_t child;
	double end;
	int status = 0;

	if (!opt.name)
		return fail("needs --name");
	done = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (done == MAP_FAILED)
		return fail("mmap: %s", strerror(errno));
	*done = 0;
	fflush(stdout);
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0)
		_exit(space_exporter(done));
	end = now() + opt.timeout;
	while (!*done && now() < end && !waitpid(child, &status, WNOHANG))
		usleep(10 * 1000);
	if (!*done) {
		kill(child, SIGKILL);
		waitpid(child, &status, 0);
		return fail("the exporting child stopped early (status %#x) or timed out",
			    status);
	}
	/* Killed while the importer is attached. */
	kill(child, SIGKILL);
	if (waitpid(child, &status, 0) < 0 || !WIFSIGNALED(status))
		return fail("the exporting child was not killed (status %#x)", status);
	say("KILLED the exporter");
	return pass();
}

struct space_reader {
	pthread_t tid;
	volatile const uint64_t *data;
	long bad;
};

static void *space_read(void *arg)
{
	struct space_reader *r = arg;

	r->bad = space_check(r->data);
	return NULL;
}

static int case_attach_space(void)
{
	struct space_reader t[SPACE_THREADS];
	volatile uint64_t *buf, *data, *fresh;
	struct xpmem_addr addr;
	volatile struct ctl *ctl;
	double t0;
	int i, sig;

	if (!opt.name)
		return fail("needs --name");
	if (!need_segid())
		return EXIT_FAIL;
	addr.apid = xpmem_get(opt.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE,
			      (void *)0666);
	if (addr.apid == -1)
		return fail("xpmem_get: %s", strerror(errno));
	addr.offset = (off_t)SPACE_ADDR;
	buf = xpmem_attach(addr, (SPACE_PAGES + 1) * PAGE, NULL);
	if (buf == (void *)-1)
		return fail("xpmem_attach at offset %#lx: %s", SPACE_ADDR,
			    strerror(errno));
	ctl = (volatile struct ctl *)buf;
	data = buf + WORDS;
	if (ctl->magic != MAGIC || ctl->exp_state < EXP_READY)
		return fail("the exporter's control page at %#lx is not there",
			    SPACE_ADDR);
	if (check_range(data, 0, SPACE_HOLE, 1) >= 0 ||
	    check_range(data, SPACE_HOLE + 1, SPACE_PAGES, 1) >= 0)
		return fail("the pages around the hole do not read right");
	sig = touch(data + SPACE_HOLE * WORDS, false);
	if (sig != SIGBUS)
		return fail("touch of the hole: signal %d, want SIGBUS", sig);
	ctl->imp_state = IMP_VERIFIED;
	if (!wait_for(&ctl->exp_state, EXP_REWROTE))
		return fail("the exporter did not map the hole");
	/* The same attachment: nothing was remembered of the failed fault. */
	if (check_range(data, SPACE_HOLE, SPACE_HOLE + 1, 3) >= 0)
		return fail("the hole, mapped later, does not show the new data");
	/* Threads fault the same pages of a fresh attachment at once. */
	fresh = xpmem_attach(addr, (SPACE_PAGES + 1) * PAGE, NULL);
	if (fresh == (void *)-1)
		return fail("second xpmem_attach: %s", strerror(errno));
	for (i = 0; i < SPACE_THREADS; i++) {
		t[i].data = fresh + WORDS;
		if (pthread_create(&t[i].tid, NULL, space_read, &t[i]))
			return fail("pthread_create: %s", strerror(errno));
	}
	for (i = 0; i < SPACE_THREADS; i++) {
		pthread_join(t[i].tid, NULL);
		if (t[i].bad >= 0)
			return fail("thread %d read a wrong word %ld", i, t[i].bad);
	}
	if (xpmem_detach((void *)fresh))
		return fail("xpmem_detach: %s", strerror(errno));
	ctl->imp_state = IMP_DONE;
	/* The exporter is killed: the next touch gets SIGBUS. */
	t0 = now();
	while (touch(data, false) != SIGBUS) {
		if (now() - t0 > opt.timeout)
			return fail("no SIGBUS %d s after the exporter was done",
				    opt.timeout);
		usleep(10 * 1000);
	}
	say("NOTE SIGBUS %.1f ms after this importer finished",
	    (now() - t0) * 1e3);
	if (xpmem_detach((void *)buf) || xpmem_release(addr.apid))
		return fail("cleanup: %s", strerror(errno));
	return pass();
}

/*
 * name-taken: the segment --name names in another VM cannot be named here too
 * (names are unique in the whole setup), and this VM finds it.
 */
static int case_name_taken(void)
{
	volatile uint64_t *buf = alloc_buf(1);
	xpmem_segid_t segid;

	if (!opt.name)
		return fail("needs --name");
	if (!buf)
		return fail("mmap: %s", strerror(errno));
	if (!need_segid())
		return EXIT_FAIL;
	segid = xpmem_make((void *)buf, PAGE, XPMEM_PERMIT_MODE, (void *)0666);
	if (segid == -1)
		return fail("xpmem_make: %s", strerror(errno));
	if (xpmem_name(segid, opt.name) != -1 || errno != EEXIST)
		return fail("naming a segment here \"%s\": %s, want EEXIST",
			    opt.name, strerror(errno));
	if (xpmem_remove(segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/*
 * get-ipc-owner: IPC semantics in one VM. A uid 1000 process exports a 0600
 * segment; root (CAP_IPC_OWNER) gets and reads it whatever the mode bits,
 * another unprivileged uid (2000) is refused with EACCES. (Across VMs root
 * has no such bypass: share's `get-denied --uid 0`.)
 */
static int case_get_ipc_owner(void)
{
	struct { xpmem_segid_t segid; int done; } *sh;
	volatile uint64_t *att;
	struct xpmem_addr addr = { .offset = 0 };
	xpmem_apid_t apid;
	pid_t owner, other;
	int status;

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return fail("mmap: %s", strerror(errno));
	sh->segid = 0;
	sh->done = 0;
	owner = fork();
	if (owner < 0)
		return fail("fork: %s", strerror(errno));
	if (owner == 0) {
		volatile uint64_t *buf = alloc_buf(1);
		xpmem_segid_t segid;

		if (!buf || setgid(1000) || setuid(1000))
			_exit(EXIT_FAIL);
		buf[WORDS] = MAGIC;
		segid = xpmem_make((void *)buf, 2 * PAGE, XPMEM_PERMIT_MODE,
				   (void *)0600);
		if (segid == -1)
			_exit(EXIT_FAIL);
		sh->segid = segid;
		while (!__atomic_load_n(&sh->done, __ATOMIC_ACQUIRE))
			usleep(1000);
		_exit(xpmem_remove(segid) ? EXIT_FAIL : EXIT_PASS);
	}
	while (!sh->segid && !waitpid(owner, &status, WNOHANG))
		usleep(1000);
	if (!sh->segid)
		return fail("the uid 1000 exporter could not make its segment");
	other = fork();
	if (other == 0) {
		if (setgid(2000) || setuid(2000))
			_exit(3);
		if (xpmem_get(sh->segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, NULL) != -1)
			_exit(1);
		_exit(errno == EACCES ? 0 : 2);
	}
	if (other < 0 || waitpid(other, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status)) {
		__atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
		return fail("uid 2000 was not refused with EACCES (child status %#x)",
			    status);
	}
	apid = xpmem_get(sh->segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1) {
		__atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
		return fail("root's xpmem_get of uid 1000's 0600 segment: %s",
			    strerror(errno));
	}
	addr.apid = apid;
	att = xpmem_attach(addr, 2 * PAGE, NULL);
	if (att == (void *)-1 || att[WORDS] != MAGIC) {
		__atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
		return fail("root's attachment: %s", att == (void *)-1 ?
			    strerror(errno) : "wrong data");
	}
	if (xpmem_detach((void *)att) || xpmem_release(apid))
		return fail("cleanup: %s", strerror(errno));
	__atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
	if (waitpid(owner, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("the exporter could not remove its segment");
	return pass();
}

/*
 * whole-space: how UCX and Open MPI use XPMEM. A child exports its whole
 * address space (vaddr 0, XPMEM_MAXADDR_SIZE) and the parent attaches pieces
 * of it at offsets equal to the child's virtual addresses: reads and writes
 * reach the child's buffer; an attachment is detached by an address inside
 * it; an attach with an address hint lands exactly there (MAP_FIXED); after
 * the child unmaps its buffer the attachment gives SIGBUS.
 */
static int case_whole_space(void)
{
	struct {
		xpmem_segid_t segid;
		uint64_t buf;		/* the child's buffer address */
		int step;		/* parent -> child: 1 unmap, 2 remove and exit */
		int unmapped;
	} *sh;
	volatile uint64_t *att, *hint;
	struct xpmem_addr addr = { .offset = 0 };
	xpmem_apid_t apid;
	pid_t child;
	int sig, status;

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return fail("mmap: %s", strerror(errno));
	memset(sh, 0, sizeof(*sh));
	child = fork();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		volatile uint64_t *buf = alloc_buf(3);
		xpmem_segid_t segid;

		if (!buf)
			_exit(EXIT_FAIL);
		fill(buf + WORDS, 3, 1);
		segid = xpmem_make(0, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE,
				   (void *)0600);
		if (segid == -1)
			_exit(EXIT_FAIL);
		sh->buf = (uintptr_t)buf;
		__atomic_store_n(&sh->segid, segid, __ATOMIC_RELEASE);
		while (__atomic_load_n(&sh->step, __ATOMIC_ACQUIRE) < 1)
			usleep(1000);
		if (munmap((void *)buf, 4 * PAGE))
			_exit(EXIT_FAIL);
		__atomic_store_n(&sh->unmapped, 1, __ATOMIC_RELEASE);
		while (__atomic_load_n(&sh->step, __ATOMIC_ACQUIRE) < 2)
			usleep(1000);
		_exit(xpmem_remove(segid) ? EXIT_FAIL : EXIT_PASS);
	}
	while (!__atomic_load_n(&sh->segid, __ATOMIC_ACQUIRE) &&
	       !waitpid(child, &status, WNOHANG))
		usleep(1000);
	if (!sh->segid)
		return fail("the child could not export 0..XPMEM_MAXADDR_SIZE");
	apid = xpmem_get(sh->segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, (void *)0666);
	if (apid == -1)
		return fail("xpmem_get: %s", strerror(errno));
	/* Data pages 1 and 2 of the child's buffer, by its virtual address. */
	addr.apid = apid;
	addr.offset = (off_t)(sh->buf + 2 * PAGE);
	att = xpmem_attach(addr, 2 * PAGE, NULL);
	if (att == (void *)-1)
		return fail("xpmem_attach at offset %#lx: %s",
			    (unsigned long)addr.offset, strerror(errno));
	if (check_range(att - WORDS, 1, 3, 1) >= 0)
		return fail("the attachment does not show the child's pages 1-2");
	att[5] = 0x5157;
	/* Detach by an address inside the attachment (its second page). */
	if (xpmem_detach((void *)(att + WORDS + 7)))
		return fail("xpmem_detach by an inner address: %s", strerror(errno));
	if (touch(att, false) != SIGSEGV)
		return fail("the attachment is still mapped after its detach");
	/* An address hint is honoured exactly (MAP_FIXED semantics). */
	hint = mmap(NULL, 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (hint == MAP_FAILED)
		return fail("mmap: %s", strerror(errno));
	att = xpmem_attach(addr, 2 * PAGE, (void *)hint);
	if (att != hint)
		return fail("attach with hint %p gave %p (%s)", (void *)hint,
			    (void *)att, att == (void *)-1 ? strerror(errno) : "moved");
	if (att[5] != 0x5157 || att[WORDS + 1] != pattern(2, 1, 1))
		return fail("the hinted attachment does not show the write and the child's data");
	/* The child unmaps its buffer: the attachment faults with SIGBUS. */
	__atomic_store_n(&sh->step, 1, __ATOMIC_RELEASE);
	while (!__atomic_load_n(&sh->unmapped, __ATOMIC_ACQUIRE) &&
	       !waitpid(child, &status, WNOHANG))
		usleep(1000);
	sig = touch(att + WORDS, false);
	__atomic_store_n(&sh->step, 2, __ATOMIC_RELEASE);
	if (sig != SIGBUS)
		return fail("touch after the child unmapped its buffer: signal %d, want SIGBUS",
			    sig);
	if (xpmem_detach((void *)att) || xpmem_release(apid))
		return fail("cleanup: %s", strerror(errno));
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return fail("the exporting child failed (status %#x)", status);
	return pass();
}

/* ---- virtio-blk (issue 9): durability and read-only disks ---- */

#define DISK_CHUNK	(1UL << 20)
#define DISK_SEED	0x5851f42d4c957f2dULL

/* The word at byte offset @off of the test pattern: distinct per word. */
static uint64_t disk_word(uint64_t off)
{
	return (off / 8 + 1) * 0x9e3779b97f4a7c15ULL ^ DISK_SEED;
}

/* /sys/block/<dev>/<attr> of --dev, without the trailing newline. */
static int disk_attr(const char *attr, char *buf, size_t len)
{
	const char *base = strrchr(opt.dev, '/');
	char path[128];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/sys/block/%s/%s",
		 base ? base + 1 : opt.dev, attr);
	f = fopen(path, "r");
	if (!f)
		return -1;
	n = fread(buf, 1, len - 1, f);
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == 0))
		n--;
	buf[n] = 0;
	return 0;
}

/* --serial, if given, is what the device reports (VIRTIO_BLK_T_GET_ID). */
static int disk_check_serial(void)
{
	char serial[64];

	if (!opt.serial)
		return EXIT_PASS;
	if (disk_attr("serial", serial, sizeof(serial)))
		return fail("%s has no serial attribute", opt.dev);
	if (strcmp(serial, opt.serial))
		return fail("%s reports serial \"%s\", want \"%s\"", opt.dev,
			    serial, opt.serial);
	return EXIT_PASS;
}

/*
 * The start of disk-write and disk-verify: --dev with the right serial,
 * opened with @flags, and a chunk buffer.
 */
static int disk_open(int flags, uint64_t **chunk, int *fd)
{
	int rc;

	if (!opt.dev)
		return fail("needs --dev");
	rc = disk_check_serial();
	if (rc)
		return rc;
	*chunk = malloc(DISK_CHUNK);
	if (!*chunk)
		return fail("malloc");
	*fd = open(opt.dev, flags);
	if (*fd < 0)
		return fail("open %s: %s", opt.dev, strerror(errno));
	return EXIT_PASS;
}

/*
 * disk-write: write --pages MiB of the pattern to --dev through the page
 * cache, fsync (the guest's FLUSH), then print SYNCED and the sum: from
 * then on the host may kill the monitor and the data must survive.
 */
static int case_disk_write(void)
{
	uint64_t *chunk, sum = 0, off;
	unsigned long i, w;
	double t0 = now();
	int fd, rc;

	rc = disk_open(O_RDWR, &chunk, &fd);
	if (rc)
		return rc;
	for (i = 0; i < opt.pages; i++) {
		for (w = 0; w < DISK_CHUNK / 8; w++) {
			off = i * DISK_CHUNK + w * 8;
			chunk[w] = disk_word(off);
			sum += chunk[w];
		}
		if (pwrite(fd, chunk, DISK_CHUNK, (off_t)(i * DISK_CHUNK)) !=
		    (ssize_t)DISK_CHUNK)
			return fail("pwrite at MiB %lu: %s", i, strerror(errno));
	}
	if (fsync(fd))
		return fail("fsync: %s", strerror(errno));
	close(fd);
	free(chunk);
	say("SYNCED %lu MiB sum %016llx in %.1f s", opt.pages,
	    (unsigned long long)sum, now() - t0);
	return pass();
}

/*
 * disk-verify: read --pages MiB of --dev back; every word must be the
 * pattern's (a lost or misplaced write shows with its offset).
 */
static int case_disk_verify(void)
{
	uint64_t *chunk, sum = 0, off;
	unsigned long i, w;
	double t0 = now();
	int fd, rc;

	rc = disk_open(O_RDONLY, &chunk, &fd);
	if (rc)
		return rc;
	for (i = 0; i < opt.pages; i++) {
		if (pread(fd, chunk, DISK_CHUNK, (off_t)(i * DISK_CHUNK)) !=
		    (ssize_t)DISK_CHUNK)
			return fail("pread at MiB %lu: %s", i, strerror(errno));
		for (w = 0; w < DISK_CHUNK / 8; w++) {
			off = i * DISK_CHUNK + w * 8;
			if (chunk[w] != disk_word(off))
				return fail("byte %llu reads %016llx, want %016llx",
					    (unsigned long long)off,
					    (unsigned long long)chunk[w],
					    (unsigned long long)disk_word(off));
			sum += chunk[w];
		}
	}
	close(fd);
	free(chunk);
	say("VERIFIED %lu MiB sum %016llx in %.1f s", opt.pages,
	    (unsigned long long)sum, now() - t0);
	return pass();
}

/*
 * disk-readonly: a disk the host gave read-only is read-only in the guest
 * (/sys/block/<dev>/ro), reads work, and a write fails (the guest kernel
 * refuses it first; the device would answer IOERR).
 */
static int case_disk_readonly(void)
{
	char ro[16], buf[4096];
	int fd, rc, err;

	if (!opt.dev)
		return fail("needs --dev");
	rc = disk_check_serial();
	if (rc)
		return rc;
	if (disk_attr("ro", ro, sizeof(ro)) || strcmp(ro, "1"))
		return fail("%s is not read-only in the guest (ro=%s)", opt.dev, ro);
	fd = open(opt.dev, O_RDONLY);
	if (fd < 0)
		return fail("open %s read-only: %s", opt.dev, strerror(errno));
	if (pread(fd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
		return fail("read of %s: %s", opt.dev, strerror(errno));
	close(fd);
	memset(buf, 0xa5, sizeof(buf));
	fd = open(opt.dev, O_WRONLY);
	if (fd >= 0) {
		rc = pwrite(fd, buf, sizeof(buf), 0) == (ssize_t)sizeof(buf) &&
		     !fsync(fd);
		err = errno;
		close(fd);
		if (rc)
			return fail("a write to the read-only %s succeeded", opt.dev);
	} else {
		err = errno;
	}
	say("NOTE the write failed with %s", strerror(err));
	return pass();
}

/*
 * disk-bench: sequential write and read of --pages MiB in 1 MiB requests,
 * and --rounds random 4 KiB reads, on --dev (a block device in a guest or
 * the image file on the host: the same code both sides). O_DIRECT where the
 * file system allows it, so that the guest's page cache is not measured.
 * Prints "RESULT seq_write_mibs=.. seq_read_mibs=.. rand_read_iops=..".
 */
static int case_disk_bench(void)
{
	unsigned long i, n = opt.rounds ? opt.rounds : 2000;
	uint64_t x = DISK_SEED, blocks = opt.pages * (DISK_CHUNK / 4096);
	double t0, wr, rd, iops;
	const char *how = "O_DIRECT";
	void *chunk;
	int fd;

	if (!opt.dev)
		return fail("needs --dev");
	if (posix_memalign(&chunk, 4096, DISK_CHUNK))
		return fail("posix_memalign");
	memset(chunk, 0x5a, DISK_CHUNK);
	fd = open(opt.dev, O_RDWR | O_DIRECT);
	if (fd < 0 && errno == EINVAL) {
		how = "buffered (no O_DIRECT here)";
		fd = open(opt.dev, O_RDWR);
	}
	if (fd < 0)
		return fail("open %s: %s", opt.dev, strerror(errno));
	t0 = now();
	for (i = 0; i < opt.pages; i++)
		if (pwrite(fd, chunk, DISK_CHUNK, (off_t)(i * DISK_CHUNK)) !=
		    (ssize_t)DISK_CHUNK)
			return fail("pwrite: %s", strerror(errno));
	if (fdatasync(fd))
		return fail("fdatasync: %s", strerror(errno));
	wr = opt.pages / (now() - t0);
	t0 = now();
	for (i = 0; i < opt.pages; i++)
		if (pread(fd, chunk, DISK_CHUNK, (off_t)(i * DISK_CHUNK)) !=
		    (ssize_t)DISK_CHUNK)
			return fail("pread: %s", strerror(errno));
	rd = opt.pages / (now() - t0);
	t0 = now();
	for (i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (pread(fd, chunk, 4096, (off_t)((x % blocks) * 4096)) != 4096)
			return fail("random pread: %s", strerror(errno));
	}
	iops = n / (now() - t0);
	close(fd);
	free(chunk);
	say("RESULT seq_write_mibs=%.1f seq_read_mibs=%.1f rand_read_iops=%.0f (%s, %lu MiB, %lu random reads)",
	    wr, rd, iops, how, opt.pages, n);
	return pass();
}

/* version: the ioctl works even without the device. */
static int case_version(void)
{
	int v = xpmem_version(), fd;

	if (v == -1)
		return fail("xpmem_version: %s", strerror(errno));
	say("VERSION %#x", v);
	/* The native module's fork brackets are accepted (there is nothing to unpin). */
	fd = open(XPMEM_DEV_PATH, O_RDWR);
	if (fd < 0)
		return fail("open %s: %s", XPMEM_DEV_PATH, strerror(errno));
	if (ioctl(fd, XPMEM_CMD_FORK_BEGIN, NULL) || ioctl(fd, XPMEM_CMD_FORK_END, NULL))
		return fail("XPMEM_CMD_FORK_BEGIN/END: %s, want 0", strerror(errno));
	if (ioctl(fd, _IO('x', 9), NULL) != -1 || errno != ENOTTY)
		return fail("an unknown XPMEM ioctl: %s, want ENOTTY", strerror(errno));
	close(fd);
	return pass();
}

/* nodev: without the virtio device every other call fails with ENODEV. */
static int case_nodev(void)
{
	volatile uint64_t *buf = alloc_buf(1);
	struct xpmem_addr addr = { .apid = 1, .offset = 0 };

	if (!buf)
		return fail("mmap");
	if (xpmem_make((void *)buf, PAGE, XPMEM_PERMIT_MODE, (void *)0600) != -1 ||
	    errno != ENODEV)
		return fail("make: %s, want ENODEV", strerror(errno));
	if (xpmem_get(1, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL) != -1 ||
	    errno != ENODEV)
		return fail("get: %s, want ENODEV", strerror(errno));
	if (xpmem_attach(addr, PAGE, NULL) != (void *)-1 || errno != ENODEV)
		return fail("attach: %s, want ENODEV", strerror(errno));
	if (xpmem_remove(1) != -1 || errno != ENODEV)
		return fail("remove: %s, want ENODEV", strerror(errno));
	return pass();
}

/* ---- virtio-net (issue 10): transfer with a checksum, switch flood ---- */

#define NET_SEED	0x4e45545f58504d45ULL	/* "NET_XPME" */
#define NET_CHUNK	(256UL << 10)
#define NET_PROGRESS	(32ULL << 20)	/* net-send: a NOTE line this often */
#define FLOOD_PORT	9	/* discard */

/* The word at byte offset @off of the network test pattern. */
static uint64_t net_word(uint64_t off)
{
	return (off / 8 + 1) * 0x9e3779b97f4a7c15ULL ^ NET_SEED;
}

/* The checksum both sides print: FNV-1a over the words, so order counts. */
static uint64_t net_sum(uint64_t sum, uint64_t word)
{
	return (sum ^ word) * 0x100000001b3ULL;
}

/*
 * The peer's address: --host:--port over TCP, or with --cid the vsock
 * address --cid:--port. @len gets its size. False if --host is bad.
 */
static bool net_peer(struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (opt.cid) {
		struct sockaddr_vm *vm = (struct sockaddr_vm *)ss;

		vm->svm_family = AF_VSOCK;
		vm->svm_cid = (unsigned int)opt.cid;
		vm->svm_port = opt.port;
		*len = sizeof(*vm);
		return true;
	}
	struct sockaddr_in *sa = (struct sockaddr_in *)ss;

	sa->sin_family = AF_INET;
	sa->sin_port = htons(opt.port);
	*len = sizeof(*sa);
	if (!opt.host || inet_pton(AF_INET, opt.host, &sa->sin_addr) != 1) {
		fail("--host %s is not an IPv4 address", opt.host ? opt.host : "(none)");
		return false;
	}
	return true;
}

/* A connection to the peer (net_peer), retried for --timeout s (the peer may not listen yet). */
static int net_connect(void)
{
	struct sockaddr_storage ss;
	socklen_t len;
	double until = now() + opt.timeout;
	int fd, err = 0;

	if (!net_peer(&ss, &len))
		return -1;
	do {
		fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			break;
		if (!connect(fd, (struct sockaddr *)&ss, len))
			return fd;
		err = errno;
		close(fd);
		usleep(200 * 1000);
	} while (now() < until);
	if (opt.cid)
		fail("cannot connect to vsock cid %llu port %u within %d s: %s", opt.cid,
		     opt.port, opt.timeout, strerror(fd < 0 ? errno : err));
	else
		fail("cannot connect to %s port %u within %d s: %s", opt.host, opt.port,
		     opt.timeout, strerror(fd < 0 ? errno : err));
	return -1;
}

/*
 * Listens on --port (TCP, or vsock with --cid) and accepts one connection
 * within --timeout s; reads on it time out after --timeout s too. -1 on
 * failure (reported).
 */
static int net_accept(void)
{
	struct sockaddr_storage ss;
	struct timeval tv = { .tv_sec = opt.timeout };
	socklen_t len;
	int one = 1, lfd, fd;

	memset(&ss, 0, sizeof(ss));
	if (opt.cid) {
		struct sockaddr_vm *vm = (struct sockaddr_vm *)&ss;

		vm->svm_family = AF_VSOCK;
		vm->svm_cid = VMADDR_CID_ANY;
		vm->svm_port = opt.port;
		len = sizeof(*vm);
	} else {
		struct sockaddr_in *sa = (struct sockaddr_in *)&ss;

		sa->sin_family = AF_INET;
		sa->sin_port = htons(opt.port);
		len = sizeof(*sa);
	}
	lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		fail("socket: %s", strerror(errno));
		return -1;
	}
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&ss, len) || listen(lfd, 1)) {
		fail("listen on %s port %u: %s", opt.cid ? "vsock" : "TCP", opt.port,
		     strerror(errno));
		return -1;
	}
	/* accept() and every read give up after --timeout s without progress. */
	setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	say("LISTENING port %u", opt.port);
	fd = accept(lfd, NULL, NULL);
	if (fd < 0) {
		fail("no connection on port %u within %d s: %s", opt.port, opt.timeout,
		     strerror(errno));
		close(lfd);
		return -1;
	}
	close(lfd);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Writes all @n bytes of @p to @fd: 0, or the errno (EPIPE when closed). */
static int write_all(int fd, const char *p, size_t n)
{
	ssize_t done;

	for (; n; p += done, n -= done) {
		done = write(fd, p, n);
		if (done <= 0)
			return done ? errno : EPIPE;
	}
	return 0;
}

/*
 * net-send: connect to --host:--port and send --bytes of the pattern; print
 * "SENT n bytes sum S in T s (R MiB/s)" (and a NOTE every 32 MiB). Pairs
 * with net-recv.
 */
static int case_net_send(void)
{
	uint64_t *chunk, sum = 0xcbf29ce484222325ULL, off = 0, n, w;
	double t0;
	ssize_t done;
	int fd, err;

	if ((!opt.host && !opt.cid) || !opt.port || !opt.bytes || opt.bytes % 8)
		return fail("needs --host (or --cid), --port and --bytes (a multiple of 8)");
	chunk = malloc(NET_CHUNK);
	if (!chunk)
		return fail("malloc");
	fd = net_connect();
	if (fd < 0)
		return EXIT_FAIL;
	t0 = now();
	while (off < opt.bytes) {
		n = opt.bytes - off < NET_CHUNK ? opt.bytes - off : NET_CHUNK;
		for (w = 0; w < n / 8; w++) {
			chunk[w] = net_word(off + w * 8);
			sum = net_sum(sum, chunk[w]);
		}
		err = write_all(fd, (char *)chunk, n);
		if (err)
			return fail("write after byte %llu: %s", (unsigned long long)off,
				    strerror(err));
		off += n;
		if (!(off % NET_PROGRESS) && off < opt.bytes)
			say("NOTE %llu MiB sent in %.1f s", (unsigned long long)(off >> 20),
			    now() - t0);
	}
	/* Half-close, then wait for the receiver to close: all was read. */
	if (shutdown(fd, SHUT_WR))
		return fail("shutdown: %s", strerror(errno));
	while ((done = read(fd, chunk, NET_CHUNK)) > 0)
		;
	close(fd);
	say("SENT %llu bytes sum %016llx in %.1f s (%.1f MiB/s)",
	    (unsigned long long)off, (unsigned long long)sum, now() - t0,
	    off / 1048576.0 / (now() - t0));
	free(chunk);
	return pass();
}

/*
 * net-recv: accept one connection on --port (within --timeout s), read until
 * the sender closes and check every word against the pattern; print
 * "RECEIVED n bytes sum S in T s". Exactly --bytes must arrive.
 */
static int case_net_recv(void)
{
	uint64_t sum = 0xcbf29ce484222325ULL, off = 0, word;
	unsigned char *buf;
	size_t have = 0, i;
	ssize_t got;
	double t0;
	int fd;

	if (!opt.port || !opt.bytes || opt.bytes % 8)
		return fail("needs --port and --bytes (a multiple of 8)");
	buf = malloc(NET_CHUNK + 8);
	if (!buf)
		return fail("malloc");
	fd = net_accept();
	if (fd < 0)
		return EXIT_FAIL;
	t0 = now();
	for (;;) {
		got = read(fd, buf + have, NET_CHUNK);
		if (got < 0)
			return fail("read after %llu bytes: %s",
				    (unsigned long long)(off + have), strerror(errno));
		if (got == 0)
			break;
		have += got;
		for (i = 0; i + 8 <= have; i += 8, off += 8) {
			memcpy(&word, buf + i, 8);
			if (word != net_word(off))
				return fail("byte %llu reads %016llx, want %016llx",
					    (unsigned long long)off,
					    (unsigned long long)word,
					    (unsigned long long)net_word(off));
			sum = net_sum(sum, word);
		}
		memmove(buf, buf + i, have - i);
		have -= i;
		if (off > opt.bytes)
			return fail("more than %llu bytes arrived",
				    (unsigned long long)opt.bytes);
	}
	close(fd);
	free(buf);
	say("RECEIVED %llu bytes sum %016llx in %.1f s", (unsigned long long)off,
	    (unsigned long long)sum, now() - t0);
	if (have || off != opt.bytes)
		return fail("%llu bytes arrived, want %llu",
			    (unsigned long long)(off + have),
			    (unsigned long long)opt.bytes);
	return pass();
}

/*
 * vsock-echo (or TCP without --cid): accept one connection on --port and
 * write back everything it reads until the peer half-closes; then close.
 * Prints "ECHOED n bytes in T s (R MiB/s)".
 */
static int case_vsock_echo(void)
{
	unsigned long long total = 0;
	char *buf;
	ssize_t got;
	double t0;
	int fd, err;

	if (!opt.port)
		return fail("needs --port");
	buf = malloc(NET_CHUNK);
	if (!buf)
		return fail("malloc");
	fd = net_accept();
	if (fd < 0)
		return EXIT_FAIL;
	if (!opt.cid) {
		/* Answer each byte of net-rtt at once. */
		int one = 1;

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	t0 = now();
	while ((got = read(fd, buf, NET_CHUNK)) != 0) {
		if (got < 0)
			return fail("read after %llu bytes: %s", total, strerror(errno));
		err = write_all(fd, buf, got);
		if (err)
			return fail("write after %llu bytes: %s", total, strerror(err));
		total += got;
	}
	close(fd);
	free(buf);
	say("ECHOED %llu bytes in %.1f s (%.1f MiB/s)", total, now() - t0,
	    total / 1048576.0 / (now() - t0 > 0 ? now() - t0 : 1));
	return pass();
}

/*
 * agent-refused: connect to the guest agent (xpmem-agent) of another VM at
 * --cid:--port (default 5252) over guest-to-guest vsock; the agent must answer
 * "F ..." and close, never run a command for a guest.
 */
static int case_agent_refused(void)
{
	struct timeval tv = { .tv_sec = opt.timeout };
	char line[160];
	size_t got = 0;
	ssize_t n;
	int fd;

	if (!opt.cid)
		return fail("needs --cid of the VM whose agent is tried");
	if (!opt.port)
		opt.port = 5252;
	fd = net_connect();
	if (fd < 0)
		return EXIT_FAIL;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	/*
	 * Ask for something harmless. The agent refuses at once and closes, so
	 * this write may already fail (EPIPE); its answer is read either way.
	 */
	if (send(fd, "RUN 5 echo ran\n", 15, MSG_NOSIGNAL) != 15)
		say("NOTE write: %s (the agent had closed already)", strerror(errno));
	while (got < sizeof(line) - 1 && (n = read(fd, line + got, sizeof(line) - 1 - got)) > 0)
		got += n;
	close(fd);
	line[got] = 0;
	line[strcspn(line, "\n")] = 0;
	if (strncmp(line, "F only the host", 15))
		return fail("the agent of cid %llu answered '%.60s', want 'F only the host ...'",
			    opt.cid, line);
	say("NOTE refused: %s", line + 2);
	return pass();
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/*
 * net-rtt: --rounds round trips of one byte to the echo server (vsock-echo
 * without --cid) at --host:--port
 * (TCP_NODELAY); prints "RESULT rounds=N mean_us=M p50_us=P p99_us=Q".
 */
static int case_net_rtt(void)
{
	unsigned int rounds = opt.rounds ? opt.rounds : 1000, i;
	double *us, t, sum = 0;
	int one = 1, fd;
	char c = 'x';

	if (!opt.host || !opt.port)
		return fail("needs --host and --port (and --rounds, default 1000)");
	us = calloc(rounds, sizeof(*us));
	if (!us)
		return fail("calloc");
	fd = net_connect();
	if (fd < 0)
		return EXIT_FAIL;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (i = 0; i < rounds; i++) {
		t = now();
		if (write(fd, &c, 1) != 1 || read(fd, &c, 1) != 1)
			return fail("round %u: %s", i, strerror(errno));
		us[i] = (now() - t) * 1e6;
		sum += us[i];
	}
	close(fd);
	qsort(us, rounds, sizeof(*us), cmp_double);
	say("RESULT rounds=%u mean_us=%.1f p50_us=%.1f p99_us=%.1f", rounds,
	    sum / rounds, us[rounds / 2], us[rounds * 99 / 100]);
	free(us);
	return pass();
}

/* Sends @len bytes of @frame on the packet socket @fd; true if it went out. */
static bool flood_raw(int fd, const struct sockaddr_ll *ll, const void *frame,
		      size_t len)
{
	return sendto(fd, frame, len, 0, (const struct sockaddr *)ll,
		      sizeof(*ll)) == (ssize_t)len;
}

/*
 * net-flood: for --seconds (or until the file --stop exists), send UDP
 * broadcasts to 169.254.255.255 port 9 as fast as the device takes them, and
 * after every 16 of them two raw frames on --dev: one with a group (bad)
 * source address, which the switch must drop, and a runt of a bare Ethernet
 * header (14 bytes, no payload). Prints
 * "FLOODED udp=N bad_source=M runt=K in T s"; at most --rounds frames of each.
 */
static int case_net_flood(void)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(FLOOD_PORT) };
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_halen = ETH_ALEN };
	struct timeval tv = { .tv_sec = 1 };
	unsigned long long udp = 0, bad = 0, runt = 0, errs = 0;
	unsigned long max = opt.rounds ? opt.rounds : 10000000;
	unsigned char frame[60] = { 0 }, payload[1472];
	double t0 = now(), until = t0 + opt.seconds;
	int one = 1, ufd, pfd;
	struct ifreq ifr = { 0 };

	if (!opt.dev || opt.seconds <= 0)
		return fail("needs --dev IFACE and --seconds S");
	ufd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	pfd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (ufd < 0 || pfd < 0)
		return fail("socket: %s", strerror(errno));
	if (setsockopt(ufd, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one)))
		return fail("SO_BROADCAST: %s", strerror(errno));
	/* A send that blocks gives up after 1 s, so --seconds holds. */
	setsockopt(ufd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(pfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	inet_pton(AF_INET, "169.254.255.255", &to.sin_addr);
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", opt.dev);
	if (ioctl(pfd, SIOCGIFINDEX, &ifr))
		return fail("no interface %s: %s", opt.dev, strerror(errno));
	ll.sll_ifindex = ifr.ifr_ifindex;
	memset(ll.sll_addr, 0xff, ETH_ALEN);
	/* Broadcast destination; source 03:00:5e:..: a group address. */
	memset(frame, 0xff, ETH_ALEN);
	frame[6] = 0x03;
	frame[7] = 0x00;
	frame[8] = 0x5e;
	frame[12] = 0x88;	/* EtherType 0x88b5: local experimental */
	frame[13] = 0xb5;
	memset(payload, 0x5a, sizeof(payload));
	say("FLOODING for %d s", opt.seconds);
	if (!opt.stop)
		opt.stop = "/tmp/net-flood.stop";
	while (udp < max && now() < until && access(opt.stop, F_OK)) {
		unsigned int i;

		for (i = 0; i < 16; i++) {
			if (sendto(ufd, payload, sizeof(payload), 0,
				   (struct sockaddr *)&to, sizeof(to)) ==
			    (ssize_t)sizeof(payload))
				udp++;
			else
				errs++;
		}
		if (bad < max && flood_raw(pfd, &ll, frame, sizeof(frame)))
			bad++;
		/* The runt: a good source (the interface's own, learned by the switch). */
		if (runt < max && !ioctl(pfd, SIOCGIFHWADDR, &ifr)) {
			unsigned char hdr[ETH_HLEN];

			memset(hdr, 0xff, ETH_ALEN);
			memcpy(hdr + ETH_ALEN, ifr.ifr_hwaddr.sa_data, ETH_ALEN);
			hdr[12] = 0x88;
			hdr[13] = 0xb5;
			if (flood_raw(pfd, &ll, hdr, sizeof(hdr)))
				runt++;
		}
	}
	close(ufd);
	close(pfd);
	say("FLOODED udp=%llu bad_source=%llu runt=%llu errors=%llu in %.1f s",
	    udp, bad, runt, errs, now() - t0);
	if (!udp || !bad)
		return fail("nothing went out");
	return pass();
}

/* ---- importers that turn hostile (test_misbehave), issue 13 ---- */

#define FILLER64	0xa5a5a5a5a5a5a5a5ULL
/* Event buffers the driver keeps on the eventq (XPMEM_NR_EVENT_BUFS). */
#define DRIVER_EVBUFS	64

/*
 * export-hostile: export; once the importer read everything and turned
 * hostile (imp_state IMP_WROTE), munmap the data pages: --chunks - 1 of them
 * one page at a time (each is one INVALIDATE event: that is how a
 * no_refill importer runs out of event buffers), then the rest at once. Each
 * munmap must return by the device's deadline + 10%, whatever the importer
 * does; NOTE: the times and how many importer targets the host revoked by
 * force. --until N: at least N revoked (0: none may be).
 */
static int case_export_hostile(void)
{
	volatile struct ctl *ctl;
	unsigned long p, singles;
	long long deadline, r0, r1;
	double t0, ms, worst = 0, bulk = 0;
	int per_process, rc;

	if (!opt.chunks || opt.chunks > opt.pages)
		return fail("--chunks must be 1..--pages");
	rc = export_setup();
	if (rc)
		return rc;
	ctl = (volatile struct ctl *)exp_buf;
	device_limits(&deadline, &per_process);
	if (deadline <= 0)
		return fail("no device deadline in /proc/xpmem/stats");
	if (!wait_for(&ctl->imp_state, IMP_WROTE))
		return fail("importer did not turn hostile (state %llu)",
			    (unsigned long long)ctl->imp_state);
	if (read_stat("inval_revoked", &r0))
		return fail("/proc/xpmem/stats has no inval_revoked");
	singles = opt.chunks - 1;
	for (p = 0; p <= singles; p++) {
		unsigned long n = p < singles ? 1 : opt.pages - singles;
		void *start = (void *)(exp_buf + (1 + p) * WORDS);

		t0 = now();
		if (munmap(start, n * PAGE))
			return fail("munmap: %s", strerror(errno));
		ms = (now() - t0) * 1000;
		if (p == singles)
			bulk = ms;
		if (ms > worst)
			worst = ms;
		if (ms > deadline * 1.1)
			return fail("munmap %lu of %lu pages took %.1f ms, above the device deadline %lld ms + 10%%",
				    p + 1, n, ms, deadline);
	}
	if (read_stat("inval_revoked", &r1))
		return fail("/proc/xpmem/stats lost inval_revoked");
	ctl->exp_state = EXP_REWROTE;	/* tells the importer: all unmapped */
	say("NOTE %lu munmaps, last of %lu pages %.1f ms, slowest %.1f ms (device deadline %lld ms); %lld importer target(s) revoked by force",
	    singles + 1, opt.pages - singles, bulk, worst, deadline, r1 - r0);
	if (opt.until ? r1 - r0 < opt.until : r1 != r0)
		return fail("%lld target(s) revoked by force, want %s%u",
			    r1 - r0, opt.until ? "at least " : "", opt.until);
	if (!wait_for(&ctl->imp_state, IMP_DONE))
		return fail("importer did not finish");
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/*
 * attach-hostile --misbehave MODE: attach and read, switch the driver to
 * MODE and tell the exporter, then keep reading the last data page while the
 * exporter munmaps. A read may show the old data (the invalidation is not
 * done yet) or the filler (the host revoked the page), never anything else;
 * SIGBUS must follow. A no_refill driver cannot hear of the revocation, so
 * once the exporter is done the mode goes back to off (its parked event
 * buffers return, the REVOKED event arrives) and SIGBUS follows then.
 * --hold S: stay in MODE S seconds more after the SIGBUS (a bad_evbufs flood
 * while the other VMs work); NOTE: the driver's misbehaviour counters.
 */
static int case_attach_hostile(void)
{
	volatile struct ctl *ctl;
	/* The last data page: export-hostile unmaps it last, with the bulk. */
	volatile uint64_t *last;
	uint64_t v, old;
	long long ignored, bad_bufs;
	bool filler = false, off = false;
	double end;
	int rc, sig = 0;

	if (!opt.misbehave)
		return fail("--misbehave MODE missing");
	if (access(MISBEHAVE, W_OK))
		return fail("%s: %s (module without test_misbehave)", MISBEHAVE,
			    strerror(errno));
	rc = attach_and_read();
	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	last = imp_buf + opt.pages * WORDS;
	old = pattern(opt.pages - 1, 0, 1);
	write_proc(MISBEHAVE, opt.misbehave);
	ctl->imp_state = IMP_WROTE;
	end = now() + opt.timeout;
	while (now() < end) {
		sig = touch(last, false);
		if (sig)
			break;
		v = *last;
		if (v == FILLER64)
			filler = true;
		else if (v != old)
			return fail("read %#llx from a page being revoked: neither the exporter's data nor the filler",
				    (unsigned long long)v);
		if (!off && !strcmp(opt.misbehave, "no_refill") &&
		    ctl->exp_state >= EXP_REWROTE) {
			write_proc(MISBEHAVE, "off");
			off = true;
		}
		usleep(1000);
	}
	if (sig == SIGBUS && !off && opt.hold > 0)
		sleep(opt.hold);
	if (read_stat("inval_ignored", &ignored) ||
	    read_stat("bad_evbufs", &bad_bufs))
		ignored = bad_bufs = -1;
	write_proc(MISBEHAVE, "off");
	if (sig != SIGBUS)
		return fail("no SIGBUS after the exporter unmapped (signal %d, filler seen: %d)",
			    sig, filler);
	say("NOTE %s: filler seen before SIGBUS: %s; INVALIDATE events ignored %lld, bad event buffers posted %lld (over %d s more)",
	    opt.misbehave, filler ? "yes" : "no", ignored, bad_bufs,
	    off ? 0 : opt.hold);
	ctl->imp_state = IMP_DONE;
	return imp_finish();
}

/* ---- VM processes killed under the others (e2e group kill, issue 12) ---- */

/* The --name of an exporter whose VM was killed must be gone too. */
static int name_gone(void)
{
	long long segid = xpmem_search(opt.name);

	if (segid > 0)
		return fail("\"%s\" is still found (segid %lld) after its VM died",
			    opt.name, segid);
	if (errno != ENOENT)
		return fail("xpmem_search(\"%s\"): %s, want ENOENT", opt.name,
			    strerror(errno));
	return EXIT_PASS;
}

/*
 * attach-kill --name NAME: attach and read the segment of a VM the test host
 * is about to kill (READ tells it when). After the kill a REVOKED event must
 * arrive (revoked_recv) and the next touches must give SIGBUS, the name must
 * be gone, detach and release must work.
 */
static int case_attach_kill(void)
{
	volatile struct ctl *ctl;
	long long rv0, rv1;
	double t0, end;
	int rc, sig = 0;

	if (!opt.name)
		return fail("--name NAME missing");
	rc = attach_and_read();
	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	if (read_stat("revoked_recv", &rv0))
		return fail("/proc/xpmem/stats has no revoked_recv");
	say("READ %lu pages", opt.pages + 1);
	t0 = now();
	end = t0 + opt.timeout;
	while (now() < end) {
		sig = touch(&ctl->magic, false);
		if (sig)
			break;
		usleep(1000);
	}
	if (sig != SIGBUS)
		return fail("no SIGBUS within %d s of READ (signal %d)",
			    opt.timeout, sig);
	read_stat("revoked_recv", &rv1);
	say("NOTE SIGBUS %.1f s after READ; REVOKED events received %lld",
	    now() - t0, rv1 - rv0);
	if (rv1 == rv0)
		return fail("SIGBUS without a REVOKED event for the attachment");
	sig = touch(imp_buf + opt.pages * WORDS, false);
	if (sig != SIGBUS)
		return fail("the last data page gave signal %d once the exporter's VM was gone, want SIGBUS",
			    sig);
	rc = name_gone();
	if (rc)
		return rc;
	return imp_finish();
}

/*
 * attach-fault --name NAME: attach the segment of an exporter whose driver
 * answers no RESOLVE (test_misbehave=no_resolve) and touch a data page: the
 * FAULT stays pending until the test host kills the exporter's VM (TOUCHING
 * tells it when); then the touch must end with SIGBUS. NOTE: how long it
 * blocked (the group compares that with the kill and the resolve timeout).
 */
static int case_attach_fault(void)
{
	double t0;
	int rc, sig;

	if (!opt.name)
		return fail("--name NAME missing");
	rc = attach(XPMEM_RDWR);
	if (rc)
		return rc;
	say("TOUCHING data page 1");
	t0 = now();
	sig = touch(imp_buf + WORDS, false);
	say("NOTE the touch ended after %.2f s with signal %d", now() - t0,
	    sig);
	if (!sig)
		return fail("the touch read data: the exporter answered the FAULT");
	if (sig != SIGBUS)
		return fail("the touch gave signal %d, want SIGBUS", sig);
	sig = touch(imp_buf + 2 * WORDS, false);
	if (sig != SIGBUS)
		return fail("data page 2 gave signal %d once the exporter's VM was gone, want SIGBUS",
			    sig);
	rc = name_gone();
	if (rc)
		return rc;
	return imp_finish();
}

/*
 * export-inval-kill --name NAME: export; once the importer read everything
 * and stopped acknowledging invalidations (attach-hostile --misbehave no_ack
 * sets IMP_WROTE), say UNMAPPING and munmap the data pages while the test
 * host kills the importer's VM. The munmap must return with no importer
 * target revoked by force (the dead importer's target ends with its VM) and
 * by the device deadline + 10%. NOTE: how long the munmap took.
 */
static int case_export_inval_kill(void)
{
	volatile struct ctl *ctl;
	long long deadline, s0, s1, r0, r1;
	double t0, ms;
	int per_process, rc;

	rc = export_setup();
	if (rc)
		return rc;
	ctl = (volatile struct ctl *)exp_buf;
	device_limits(&deadline, &per_process);
	if (deadline <= 0)
		return fail("no device deadline in /proc/xpmem/stats");
	if (!wait_for(&ctl->imp_state, IMP_WROTE))
		return fail("importer did not stop acknowledging within %d s (state %llu)",
			    opt.timeout, (unsigned long long)ctl->imp_state);
	if (read_stat("inval_sent", &s0) || read_stat("inval_revoked", &r0))
		return fail("/proc/xpmem/stats has no inval_sent or inval_revoked");
	say("UNMAPPING %lu pages", opt.pages);
	t0 = now();
	if (munmap((void *)(exp_buf + WORDS), opt.pages * PAGE))
		return fail("munmap: %s", strerror(errno));
	ms = (now() - t0) * 1000;
	if (read_stat("inval_sent", &s1) || read_stat("inval_revoked", &r1))
		return fail("/proc/xpmem/stats lost inval_sent or inval_revoked");
	say("NOTE munmap of %lu pages took %.1f ms (device deadline %lld ms); INVALIDATEs sent %lld, importer targets revoked by force %lld",
	    opt.pages, ms, deadline, s1 - s0, r1 - r0);
	if (s1 == s0)
		return fail("munmap sent no INVALIDATE: nothing was tested");
	if (r1 != r0)
		return fail("%lld importer target(s) revoked by force: the dead importer's target did not end with its VM",
			    r1 - r0);
	if (ms > deadline * 1.1)
		return fail("munmap took %.1f ms, above the device deadline %lld ms + 10%%",
			    ms, deadline);
	if (xpmem_remove(exp_segid))
		return fail("xpmem_remove: %s", strerror(errno));
	return pass();
}

/*
 * get-hold --name NAME: xpmem_get the segment (a permit, no attachment), say
 * GOT and hold it for --timeout s (the test host kills this VM meanwhile),
 * then release it.
 */
static int case_get_hold(void)
{
	xpmem_apid_t apid;

	if (!opt.name)
		return fail("--name NAME missing");
	if (!need_segid())
		return EXIT_FAIL;
	apid = xpmem_get(opt.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1)
		return fail("xpmem_get(%lld): %s", opt.segid, strerror(errno));
	say("GOT apid %lld", (long long)apid);
	sleep(opt.timeout);
	if (xpmem_release(apid))
		return fail("xpmem_release: %s", strerror(errno));
	return pass();
}

/*
 * local-latency: for --timeout s (after a "GO" line), rounds of a one-page
 * export attached in this VM, touched and munmapped: the munmap invalidates
 * this VM's own attachment. NOTE: rounds and munmap times; fails if a round
 * needed a forced revocation or took longer than the device deadline.
 * It stands for the other VMs' requests while a hostile VM floods.
 */
static int case_local_latency(void)
{
	long long deadline, r0, r1;
	double end, t0, ms, worst = 0, sum = 0;
	unsigned long rounds = 0;
	char arg[64];
	int per_process;

	device_limits(&deadline, &per_process);
	if (deadline <= 0)
		return fail("no device deadline in /proc/xpmem/stats");
	if (!wait_line("GO", arg, sizeof(arg)))
		return fail("no GO line on the console");
	if (read_stat("inval_revoked", &r0))
		return fail("/proc/xpmem/stats has no inval_revoked");
	end = now() + opt.timeout;
	while (now() < end) {
		volatile uint64_t *buf = alloc_quiet_buf(1), *att;
		struct xpmem_addr addr;
		xpmem_segid_t segid;
		xpmem_apid_t apid;

		if (!buf)
			return fail("mmap: %s", strerror(errno));
		buf[WORDS] = rounds;
		segid = xpmem_make((void *)buf, 2 * PAGE, XPMEM_PERMIT_MODE,
				   (void *)0600);
		if (segid == -1)
			return fail("xpmem_make: %s", strerror(errno));
		apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
		if (apid == -1)
			return fail("xpmem_get: %s", strerror(errno));
		addr.apid = apid;
		addr.offset = 0;
		att = xpmem_attach(addr, 2 * PAGE, NULL);
		if (att == (void *)-1)
			return fail("xpmem_attach: %s", strerror(errno));
		if (att[WORDS] != rounds)
			return fail("round %lu read %#llx", rounds,
				    (unsigned long long)att[WORDS]);
		t0 = now();
		if (munmap((void *)buf, 2 * PAGE))
			return fail("munmap: %s", strerror(errno));
		ms = (now() - t0) * 1000;
		sum += ms;
		if (ms > worst)
			worst = ms;
		if (xpmem_detach((void *)att) || xpmem_release(apid) ||
		    xpmem_remove(segid))
			return fail("cleanup: %s", strerror(errno));
		rounds++;
	}
	if (read_stat("inval_revoked", &r1))
		return fail("/proc/xpmem/stats lost inval_revoked");
	say("NOTE %lu rounds in %d s: munmap mean %.1f ms, slowest %.1f ms (device deadline %lld ms)",
	    rounds, opt.timeout, rounds ? sum / rounds : 0, worst, deadline);
	if (!rounds)
		return fail("no round completed");
	if (r1 != r0)
		return fail("%lld of this VM's own invalidations were forced", r1 - r0);
	if (worst > deadline)
		return fail("a munmap took %.1f ms, longer than the deadline", worst);
	return pass();
}

/* ---- native corner cases (issue 15 item 5), each in one VM ---- */

/* Children of the corner cases: killed and reaped when the case returns. */
static pid_t kids[64];
static unsigned int nkids;

static pid_t spawn(void)
{
	pid_t pid = fork();
	unsigned int i;

	for (i = 0; pid > 0 && i < nkids && kids[i]; i++)
		;
	if (pid > 0 && i < sizeof(kids) / sizeof(kids[0])) {
		kids[i] = pid;
		if (i == nkids)
			nkids++;
	}
	if (pid == 0)
		nkids = 0;
	return pid;
}

/* Exit code of @pid (128 + signal if killed, -1 on error). */
static int reap(pid_t pid)
{
	unsigned int i;
	int status;

	for (i = 0; i < nkids; i++)
		if (kids[i] == pid)
			kids[i] = 0;
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void kill_kids(void)
{
	unsigned int i;

	for (i = 0; i < nkids; i++) {
		if (kids[i] > 0) {
			kill(kids[i], SIGKILL);
			waitpid(kids[i], NULL, 0);
		}
	}
	nkids = 0;
}

/* Words of a page shared between a case and its fork children. */
enum { SH_SEGID, SH_ADDR, SH_STEP, SH_ACK, SH_ERR, SH_GO, SH_COUNT };

static volatile uint64_t *shared_page(void)
{
	void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void sh_set(volatile uint64_t *sh, int i, uint64_t v)
{
	__atomic_store_n(&sh[i], v, __ATOMIC_RELEASE);
}

/* Wait until sh[i] >= @want; false on timeout or once @child (if > 0) died. */
static bool sh_wait(volatile uint64_t *sh, int i, uint64_t want, pid_t child)
{
	double end = now() + opt.timeout;

	while (__atomic_load_n(&sh[i], __ATOMIC_ACQUIRE) < want) {
		if (now() > end || (child > 0 && kill(child, 0) == 0 &&
				    waitpid(child, NULL, WNOHANG) == child))
			return false;
		usleep(1000);
	}
	return true;
}

static volatile uint64_t *map_anon(unsigned long npages)
{
	void *p = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/*
 * A child that exports @npages fresh pages holding generation 1 (mode 0600),
 * publishes SH_SEGID and SH_ADDR, and removes the segment and exits once
 * SH_STEP reaches @last_step. Forked before this process opens /dev/xpmem,
 * so that it has its own file (as the native library's reopen gives it).
 */
static pid_t spawn_exporter(volatile uint64_t *sh, unsigned long npages,
			    uint64_t last_step)
{
	pid_t child = spawn();

	if (child == 0) {
		volatile uint64_t *buf = map_anon(npages);
		xpmem_segid_t segid;

		if (!buf)
			_exit(EXIT_FAIL);
		fill(buf, npages, 1);
		segid = xpmem_make((void *)buf, npages * PAGE,
				   XPMEM_PERMIT_MODE, (void *)0600);
		if (segid == -1) {
			sh_set(sh, SH_ERR, errno);
			_exit(EXIT_FAIL);
		}
		sh_set(sh, SH_ADDR, (uintptr_t)buf);
		sh_set(sh, SH_SEGID, segid);
		if (!sh_wait(sh, SH_STEP, last_step, 0))
			_exit(EXIT_FAIL);
		_exit(xpmem_remove(segid) ? EXIT_FAIL : EXIT_PASS);
	}
	return child;
}

/* Get (RDWR) and attach @npages of the segid in @sh; NULL after a FAIL line. */
static volatile uint64_t *get_attach(volatile uint64_t *sh, pid_t child,
				     unsigned long npages, xpmem_apid_t *apid)
{
	struct xpmem_addr addr = { .offset = 0 };
	void *att;

	if (!sh_wait(sh, SH_SEGID, 1, child)) {
		fail("the exporter child published no segid (errno %llu)",
		     (unsigned long long)sh[SH_ERR]);
		return NULL;
	}
	*apid = xpmem_get(sh[SH_SEGID], XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (*apid == -1) {
		fail("xpmem_get: %s", strerror(errno));
		return NULL;
	}
	addr.apid = *apid;
	att = xpmem_attach(addr, npages * PAGE, NULL);
	if (att == (void *)-1) {
		fail("xpmem_attach of %lu pages: %s", npages, strerror(errno));
		return NULL;
	}
	return att;
}

/* Detach @att, release @apid, let the exporter child go and reap it. */
static int finish_import(volatile uint64_t *att, xpmem_apid_t apid,
			 volatile uint64_t *sh, pid_t child, uint64_t step)
{
	int rc;

	if (xpmem_detach((void *)att))
		return fail("xpmem_detach: %s", strerror(errno));
	if (xpmem_release(apid))
		return fail("xpmem_release: %s", strerror(errno));
	sh_set(sh, SH_STEP, step);
	rc = reap(child);
	if (rc)
		return fail("the exporter child exited with %d", rc);
	return pass();
}

/*
 * unmapped-range: a segment over a range nothing is mapped at. make, get and
 * attach work; a touch gets SIGBUS (natively get_user_pages fails in the
 * fault handler); once the exporter maps memory there, the same attachment
 * (natively every fault looks the page up again) and a new one see it.
 */
static int case_unmapped_range(void)
{
	const unsigned long n = 4;
	volatile uint64_t *sh = shared_page(), *att, *att2;
	struct xpmem_addr addr = { .offset = 0 };
	xpmem_apid_t apid;
	pid_t child;
	int sig;
	long bad;

	if (!sh)
		return fail("mmap: %s", strerror(errno));
	child = spawn();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		void *p = mmap(NULL, n * PAGE, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		xpmem_segid_t segid;

		if (p == MAP_FAILED || munmap(p, n * PAGE))
			_exit(EXIT_FAIL);
		segid = xpmem_make(p, n * PAGE, XPMEM_PERMIT_MODE, (void *)0600);
		if (segid == -1) {
			sh_set(sh, SH_ERR, errno);
			_exit(EXIT_FAIL);
		}
		sh_set(sh, SH_ADDR, (uintptr_t)p);
		sh_set(sh, SH_SEGID, segid);
		if (!sh_wait(sh, SH_STEP, 1, 0))
			_exit(EXIT_FAIL);
		if (mmap(p, n * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != p)
			_exit(EXIT_FAIL);
		fill(p, n, 1);
		sh_set(sh, SH_ACK, 1);
		if (!sh_wait(sh, SH_STEP, 2, 0))
			_exit(EXIT_FAIL);
		_exit(xpmem_remove(segid) ? EXIT_FAIL : EXIT_PASS);
	}
	att = get_attach(sh, child, n, &apid);
	if (!att)
		return EXIT_FAIL;
	sig = touch(att, false);
	if (sig != SIGBUS)
		return fail("read of the unmapped range: signal %d, want SIGBUS (%d)",
			    sig, SIGBUS);
	sig = touch(att + 2 * WORDS, true);
	if (sig != SIGBUS)
		return fail("write to the unmapped range: signal %d, want SIGBUS (%d)",
			    sig, SIGBUS);
	sh_set(sh, SH_STEP, 1);
	if (!sh_wait(sh, SH_ACK, 1, child))
		return fail("the exporter did not map the range");
	sig = touch(att, false);
	if (sig)
		return fail("the same attachment still faults (signal %d) after the exporter mapped the range",
			    sig);
	bad = check(att, n, 1);
	if (bad >= 0)
		return fail("the same attachment reads wrong data at word %ld", bad);
	addr.apid = apid;
	att2 = xpmem_attach(addr, n * PAGE, NULL);
	if (att2 == (void *)-1)
		return fail("second xpmem_attach: %s", strerror(errno));
	att[WORDS + 9] = 0x4e4f574d41505044ULL;
	if (check_range(att2, 2, n, 1) >= 0 || att2[WORDS + 9] != 0x4e4f574d41505044ULL)
		return fail("a new attachment does not show the data and the write");
	if (xpmem_detach((void *)att2))
		return fail("xpmem_detach: %s", strerror(errno));
	return finish_import(att, apid, sh, child, 2);
}

/*
 * holes: page 3 of an 8-page segment is unmapped by the exporter before the
 * importer touches anything: the hole gets SIGBUS, the pages around it (also
 * those in the same prefetch window) read right.
 */
static int case_holes(void)
{
	const unsigned long n = 8, hole = 3;
	volatile uint64_t *sh = shared_page(), *att;
	xpmem_apid_t apid;
	unsigned long p;
	pid_t child;
	int sig;

	if (!sh)
		return fail("mmap: %s", strerror(errno));
	child = spawn();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		volatile uint64_t *buf = map_anon(n);
		xpmem_segid_t segid;

		if (!buf)
			_exit(EXIT_FAIL);
		fill(buf, n, 1);
		segid = xpmem_make((void *)buf, n * PAGE, XPMEM_PERMIT_MODE,
				   (void *)0600);
		if (segid == -1) {
			sh_set(sh, SH_ERR, errno);
			_exit(EXIT_FAIL);
		}
		if (munmap((void *)(buf + hole * WORDS), PAGE))
			_exit(EXIT_FAIL);
		sh_set(sh, SH_SEGID, segid);
		if (!sh_wait(sh, SH_STEP, 1, 0))
			_exit(EXIT_FAIL);
		_exit(xpmem_remove(segid) ? EXIT_FAIL : EXIT_PASS);
	}
	att = get_attach(sh, child, n, &apid);
	if (!att)
		return EXIT_FAIL;
	/* Page 0 first: its prefetch window spans the hole. */
	for (p = 0; p < n; p++) {
		sig = touch(att + p * WORDS, false);
		if (p == hole && sig != SIGBUS)
			return fail("read of the hole (page %lu): signal %d, want SIGBUS",
				    p, sig);
		if (p != hole && sig)
			return fail("read of page %lu next to the hole: signal %d",
				    p, sig);
	}
	sig = touch(att + hole * WORDS + 17, true);
	if (sig != SIGBUS)
		return fail("write to the hole: signal %d, want SIGBUS", sig);
	if (check_range(att, 0, hole, 1) >= 0 ||
	    check_range(att, hole + 1, n, 1) >= 0)
		return fail("a page around the hole reads wrong data");
	return finish_import(att, apid, sh, child, 1);
}

/*
 * later-mapped: memory the exporter maps after making a whole-address-space
 * segment is there for an importer attaching at its address, both ways.
 */
static int case_later_mapped(void)
{
	const unsigned long n = 4;
	volatile uint64_t *sh = shared_page(), *att;
	struct xpmem_addr addr = { .offset = 0 };
	xpmem_apid_t apid;
	pid_t child;
	long bad;
	int rc;

	if (!sh)
		return fail("mmap: %s", strerror(errno));
	child = spawn();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		volatile uint64_t *buf;
		xpmem_segid_t segid;

		segid = xpmem_make(0, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE,
				   (void *)0600);
		if (segid == -1) {
			sh_set(sh, SH_ERR, errno);
			_exit(EXIT_FAIL);
		}
		sh_set(sh, SH_SEGID, segid);
		if (!sh_wait(sh, SH_STEP, 1, 0))
			_exit(EXIT_FAIL);
		buf = map_anon(n);
		if (!buf)
			_exit(EXIT_FAIL);
		fill(buf, n, 1);
		sh_set(sh, SH_ADDR, (uintptr_t)buf);
		sh_set(sh, SH_ACK, 1);
		if (!sh_wait(sh, SH_STEP, 2, 0))
			_exit(EXIT_FAIL);
		if (buf[2 * WORDS + 1] != 0x4c41544552ULL)
			_exit(3);
		_exit(xpmem_remove(segid) ? EXIT_FAIL : EXIT_PASS);
	}
	if (!sh_wait(sh, SH_SEGID, 1, child))
		return fail("the child could not export 0..XPMEM_MAXADDR_SIZE (errno %llu)",
			    (unsigned long long)sh[SH_ERR]);
	apid = xpmem_get(sh[SH_SEGID], XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1)
		return fail("xpmem_get: %s", strerror(errno));
	sh_set(sh, SH_STEP, 1);
	if (!sh_wait(sh, SH_ACK, 1, child))
		return fail("the child did not map its new buffer");
	addr.apid = apid;
	addr.offset = (off_t)sh[SH_ADDR];
	att = xpmem_attach(addr, n * PAGE, NULL);
	if (att == (void *)-1)
		return fail("xpmem_attach at the new buffer %#lx: %s",
			    (unsigned long)addr.offset, strerror(errno));
	bad = check(att, n, 1);
	if (bad >= 0)
		return fail("memory mapped after the make reads wrong at word %ld", bad);
	att[2 * WORDS + 1] = 0x4c41544552ULL;
	if (xpmem_detach((void *)att) || xpmem_release(apid))
		return fail("cleanup: %s", strerror(errno));
	sh_set(sh, SH_STEP, 2);
	rc = reap(child);
	if (rc == 3)
		return fail("the exporter does not see the importer's write");
	if (rc)
		return fail("the exporter child exited with %d", rc);
	return pass();
}

/* Read gauge @name, or -1. */
static long long gauge(const char *name)
{
	long long v;

	return read_stat(name, &v) ? -1 : v;
}

/*
 * killed: (1) the exporter is SIGKILLed while we are attached: our next
 * touch gets SIGBUS and its segment is gone; (2) an importer is SIGKILLed
 * while attached: our munmap returns at once, reaching no importer, and its
 * permit and attachment are gone.
 */
static int case_killed(void)
{
	const unsigned long n = 8;
	volatile uint64_t *sh = shared_page(), *sh2 = shared_page(), *att;
	long long t0, t1, r0, r1;
	double start, ms;
	xpmem_apid_t apid;
	pid_t exp_child, imp_child;
	int sig = 0;

	if (!sh || !sh2)
		return fail("mmap: %s", strerror(errno));
	/* Both children first: each opens its own /dev/xpmem. */
	exp_child = spawn_exporter(sh, n, 1);
	if (exp_child < 0)
		return fail("fork: %s", strerror(errno));
	imp_child = spawn();
	if (imp_child < 0)
		return fail("fork: %s", strerror(errno));
	if (imp_child == 0) {
		volatile uint64_t *iatt;
		xpmem_apid_t iapid;

		iatt = get_attach(sh2, 0, n, &iapid);
		if (!iatt || check(iatt, n, 2) >= 0)
			_exit(EXIT_FAIL);
		sh_set(sh2, SH_ACK, 1);
		for (;;)
			pause();
	}
	/* (1) exporter killed */
	att = get_attach(sh, exp_child, n, &apid);
	if (!att)
		return EXIT_FAIL;
	if (check(att, n, 1) >= 0)
		return fail("the attachment reads wrong data");
	kill(exp_child, SIGKILL);
	reap(exp_child);
	start = now();
	while (now() - start < opt.timeout) {
		sig = touch(att, false);
		if (sig)
			break;
		usleep(1000);
	}
	if (sig != SIGBUS)
		return fail("touch after the exporter was killed: signal %d, want SIGBUS",
			    sig);
	say("NOTE SIGBUS %.1f ms after the killed exporter was reaped",
	    (now() - start) * 1000);
	if (gauge("segments"))
		return fail("%lld segment(s) left after the exporter was killed",
			    gauge("segments"));
	if (xpmem_detach((void *)att) || xpmem_release(apid))
		return fail("cleanup after the exporter died: %s", strerror(errno));

	/* (2) importer killed */
	{
		volatile uint64_t *buf = map_anon(n);
		xpmem_segid_t segid;

		if (!buf)
			return fail("mmap: %s", strerror(errno));
		fill(buf, n, 2);
		segid = xpmem_make((void *)buf, n * PAGE, XPMEM_PERMIT_MODE,
				   (void *)0600);
		if (segid == -1)
			return fail("xpmem_make: %s", strerror(errno));
		sh_set(sh2, SH_SEGID, segid);
		if (!sh_wait(sh2, SH_ACK, 1, imp_child))
			return fail("the importer child did not read the segment");
		kill(imp_child, SIGKILL);
		reap(imp_child);
		if (read_stat("inval_targets", &t0) ||
		    read_stat("inval_revoked", &r0))
			return fail("/proc/xpmem/stats has no inval_targets");
		start = now();
		if (munmap((void *)buf, n * PAGE))
			return fail("munmap: %s", strerror(errno));
		ms = (now() - start) * 1000;
		read_stat("inval_targets", &t1);
		read_stat("inval_revoked", &r1);
		say("NOTE munmap after the importer was killed took %.1f ms, %lld target(s), %lld revoked",
		    ms, t1 - t0, r1 - r0);
		if (t1 != t0 || r1 != r0)
			return fail("the munmap still reached %lld attachment(s) of the killed importer",
				    t1 - t0);
		if (ms > 1000)
			return fail("munmap took %.1f ms after the importer was killed", ms);
		if (gauge("permits") || gauge("attachments"))
			return fail("%lld permit(s), %lld attachment(s) left after the importer was killed",
				    gauge("permits"), gauge("attachments"));
		if (xpmem_remove(segid))
			return fail("xpmem_remove: %s", strerror(errno));
	}
	return pass();
}

/* threads-fault: --threads threads read the same pages of a fresh attachment at once. */
struct tf_arg {
	pthread_t tid;
	pthread_barrier_t *bar;
	volatile uint64_t *att;
	unsigned long npages;
	long bad;
};

static void *tf_reader(void *arg)
{
	struct tf_arg *a = arg;

	pthread_barrier_wait(a->bar);
	a->bad = check(a->att, a->npages, 1);
	return NULL;
}

static void die_on_sigbus(int sig)
{
	static const char msg[] = "XPMEM-TEST threads-fault FAIL a reader thread got SIGBUS\n";

	if (write(1, msg, sizeof(msg) - 1) < 0)
		_exit(EXIT_FAIL);
	_exit(EXIT_FAIL);
}

static int case_threads_fault(void)
{
	const unsigned long n = 64;
	unsigned int i, nt = opt.threads ? opt.threads : 8;
	volatile uint64_t *sh = shared_page(), *att;
	struct tf_arg *t;
	pthread_barrier_t bar;
	long long f0, f1;
	xpmem_apid_t apid;
	pid_t child;
	double t0;

	if (!sh)
		return fail("mmap: %s", strerror(errno));
	child = spawn_exporter(sh, n, 1);
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	att = get_attach(sh, child, n, &apid);
	if (!att)
		return EXIT_FAIL;
	t = calloc(nt, sizeof(*t));
	if (!t || pthread_barrier_init(&bar, NULL, nt))
		return fail("calloc/barrier");
	signal(SIGBUS, die_on_sigbus);
	read_stat("faults", &f0);
	t0 = now();
	for (i = 0; i < nt; i++) {
		t[i].bar = &bar;
		t[i].att = att;
		t[i].npages = n;
		if (pthread_create(&t[i].tid, NULL, tf_reader, &t[i]))
			return fail("pthread_create: %s", strerror(errno));
	}
	for (i = 0; i < nt; i++)
		pthread_join(t[i].tid, NULL);
	read_stat("faults", &f1);
	say("NOTE %u threads read %lu fresh pages in %.3f s with %lld FAULT(s)",
	    nt, n, now() - t0, f1 - f0);
	for (i = 0; i < nt; i++)
		if (t[i].bad >= 0)
			return fail("thread %u read a wrong word at %ld", i, t[i].bad);
	signal(SIGBUS, SIG_DFL);
	return finish_import(att, apid, sh, child, 1);
}

/*
 * one-to-many: --importers-many (16) importer processes of one segment at
 * once, for segments of 1, 10, 100 and 1000 pages: each checks every page
 * and writes its marker (word i of page 0), which the exporter then checks.
 */
#define MANY_IMPORTERS	16

static uint64_t many_marker(unsigned long npages, unsigned int i)
{
	return MAGIC ^ (npages << 16) ^ i;
}

static int many_round(unsigned long npages)
{
	volatile uint64_t *sh = shared_page(), *buf = map_anon(npages);
	pid_t child[MANY_IMPORTERS];
	unsigned int i, failed = 0;
	xpmem_segid_t segid;
	double t0;

	if (!sh || !buf)
		return fail("mmap: %s", strerror(errno));
	fill(buf, npages, 1);
	for (i = 0; i < MANY_IMPORTERS; i++)
		buf[i] = 0;
	segid = xpmem_make((void *)buf, npages * PAGE, XPMEM_PERMIT_MODE,
			   (void *)0600);
	if (segid == -1)
		return fail("xpmem_make: %s", strerror(errno));
	sh_set(sh, SH_SEGID, segid);
	for (i = 0; i < MANY_IMPORTERS; i++) {
		child[i] = spawn();
		if (child[i] < 0)
			return fail("fork: %s", strerror(errno));
		if (child[i] == 0) {
			volatile uint64_t *att;
			xpmem_apid_t apid;
			unsigned long p, w;

			if (!sh_wait(sh, SH_GO, 1, 0))
				_exit(2);
			att = get_attach(sh, 0, npages, &apid);
			if (!att)
				_exit(3);
			for (p = 0; p < npages; p++)
				for (w = p ? 0 : MANY_IMPORTERS; w < WORDS; w++)
					if (att[p * WORDS + w] != pattern(p, w, 1))
						_exit(4);
			att[i] = many_marker(npages, i);
			if (xpmem_detach((void *)att) || xpmem_release(apid))
				_exit(5);
			_exit(0);
		}
	}
	t0 = now();
	sh_set(sh, SH_GO, 1);
	for (i = 0; i < MANY_IMPORTERS; i++) {
		int rc = reap(child[i]);

		if (rc) {
			say("NOTE importer %u of %lu pages exited with %d", i,
			    npages, rc);
			failed++;
		}
	}
	say("NOTE %u importers of %lu page(s): %.2f s", MANY_IMPORTERS, npages,
	    now() - t0);
	if (failed)
		return fail("%u of %u importers of %lu page(s) failed", failed,
			    MANY_IMPORTERS, npages);
	for (i = 0; i < MANY_IMPORTERS; i++)
		if (buf[i] != many_marker(npages, i))
			return fail("importer %u's marker is not in the %lu-page segment (%#llx)",
				    i, npages, (unsigned long long)buf[i]);
	if (check_range(buf, 1, npages, 1) >= 0)
		return fail("the %lu-page segment's data changed", npages);
	if (xpmem_remove(segid))
		return fail("xpmem_remove: %s", strerror(errno));
	munmap((void *)buf, npages * PAGE);
	munmap((void *)sh, PAGE);
	return EXIT_PASS;
}

static int case_one_to_many(void)
{
	static const unsigned long sizes[] = { 1, 10, 100, 1000 };
	unsigned int i;
	int rc;

	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		rc = many_round(sizes[i]);
		if (rc)
			return rc;
	}
	return pass();
}

/*
 * fork-importer: a fork child of an importer does not inherit the
 * attachment (SIGSEGV there, detach of that address is a no-op as natively),
 * and the parent's apid is not its own: attach and release with it fail
 * with EACCES, as natively (the apid belongs to the thread group that got it).
 */
static int case_fork_importer(void)
{
	const unsigned long n = 4;
	volatile uint64_t *sh = shared_page(), *att;
	xpmem_apid_t apid;
	pid_t child, gchild;
	int rc;

	if (!sh)
		return fail("mmap: %s", strerror(errno));
	child = spawn_exporter(sh, n, 1);
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	att = get_attach(sh, child, n, &apid);
	if (!att)
		return EXIT_FAIL;
	if (check(att, n, 1) >= 0)
		return fail("the attachment reads wrong data");
	gchild = spawn();
	if (gchild < 0)
		return fail("fork: %s", strerror(errno));
	if (gchild == 0) {
		struct xpmem_addr addr = { .apid = apid, .offset = 0 };

		if (touch(att, false) != SIGSEGV)
			_exit(10);
		if (xpmem_attach(addr, n * PAGE, NULL) != (void *)-1)
			_exit(11);
		if (errno != EACCES)
			_exit(20 + (errno & 63));
		if (xpmem_release(apid) != -1)
			_exit(12);
		if (errno != EACCES)
			_exit(100 + (errno & 63));
		if (xpmem_detach((void *)att))
			_exit(13);
		_exit(0);
	}
	rc = reap(gchild);
	if (rc == 10)
		return fail("the fork child can touch the attachment (want SIGSEGV)");
	if (rc == 11)
		return fail("the fork child attached with its parent's apid");
	if (rc >= 20 && rc < 100)
		return fail("the fork child's attach with the parent's apid: errno %d, want EACCES (%d)",
			    rc - 20, EACCES);
	if (rc == 12)
		return fail("the fork child released its parent's apid");
	if (rc >= 100 && rc < 128)
		return fail("the fork child's release of the parent's apid: errno %d, want EACCES (%d)",
			    rc - 100, EACCES);
	if (rc == 13)
		return fail("the fork child's detach of the (absent) attachment failed, natively 0");
	if (rc)
		return fail("the fork child exited with %d", rc);
	/* The parent's attachment and permit are unharmed. */
	if (check(att, n, 1) >= 0)
		return fail("the parent's attachment changed after the child's calls");
	return finish_import(att, apid, sh, child, 1);
}

/*
 * read-only-local: an XPMEM_RDONLY permit in one VM attaches read-only:
 * reads work, writes SIGSEGV, mprotect to writable fails with EACCES; an
 * explicit read-write attach (flags XPMEM_RDWR) of it fails with EACCES,
 * native's errno for a read-write attach of a read-only permit.
 */
static int case_read_only_local(void)
{
	const unsigned long n = 4;
	volatile uint64_t *sh = shared_page(), *att;
	struct xpmem_cmd_attach cmd = { .offset = 0, .size = n * PAGE,
					.fd = -1, .flags = XPMEM_RDWR };
	struct xpmem_addr addr = { .offset = 0 };
	xpmem_apid_t apid;
	pid_t child;
	int fd, sig, err;

	if (!sh)
		return fail("mmap: %s", strerror(errno));
	child = spawn_exporter(sh, n, 1);
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (!sh_wait(sh, SH_SEGID, 1, child))
		return fail("the exporter child published no segid");
	apid = xpmem_get(sh[SH_SEGID], XPMEM_RDONLY, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1)
		return fail("xpmem_get(XPMEM_RDONLY): %s", strerror(errno));
	addr.apid = apid;
	att = xpmem_attach(addr, n * PAGE, NULL);
	if (att == (void *)-1)
		return fail("xpmem_attach of a read-only permit: %s", strerror(errno));
	if (check(att, n, 1) >= 0)
		return fail("the read-only attachment reads wrong data");
	sig = touch(att + WORDS, true);
	if (sig != SIGSEGV)
		return fail("write to the read-only attachment: signal %d, want SIGSEGV",
			    sig);
	if (!mprotect((void *)att, n * PAGE, PROT_READ | PROT_WRITE))
		return fail("mprotect made the read-only attachment writable");
	if (errno != EACCES)
		return fail("mprotect(PROT_WRITE): %s, want EACCES", strerror(errno));
	/* An explicit read-write attach, through the library's file. */
	fd = lib_fd();
	if (fd < 0)
		return fail("no /dev/xpmem descriptor of the library");
	cmd.apid = apid;
	if (ioctl(fd, XPMEM_CMD_ATTACH, &cmd) != -1)
		return fail("a read-write attach of a read-only permit succeeded");
	err = errno;
	if (err != EACCES)
		return fail("read-write attach of a read-only permit: %s, want EACCES",
			    strerror(err));
	return finish_import(att, apid, sh, child, 1);
}

/*
 * big-segment: a 1 GiB segment (MAP_NORESERVE, one page touched every
 * 4 MiB by the exporter) attached whole, which fills the read-write
 * aperture: the touched pages read back, untouched ones read 0.
 */
#define BIG_SIZE	(1UL << 30)
#define BIG_STEP	(4UL << 20)
#define BIG_MAGIC	0x4249475345474dULL

static int case_big_segment(void)
{
	const unsigned long n = BIG_SIZE / BIG_STEP, wstep = BIG_STEP / 8;
	volatile uint64_t *sh = shared_page(), *att;
	struct xpmem_addr addr = { .offset = 0 };
	long long f0, f1;
	xpmem_apid_t apid;
	unsigned long i;
	pid_t child;
	double t0;

	if (!sh)
		return fail("mmap: %s", strerror(errno));
	child = spawn();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		volatile uint64_t *big;
		xpmem_segid_t segid;

		big = mmap(NULL, BIG_SIZE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (big == MAP_FAILED) {
			sh_set(sh, SH_ERR, errno);
			_exit(EXIT_FAIL);
		}
		/* 4 KiB pages: 256 huge pages would not fit in this VM. */
		madvise((void *)big, BIG_SIZE, MADV_NOHUGEPAGE);
		for (i = 0; i < n; i++)
			big[i * wstep] = BIG_MAGIC ^ i;
		segid = xpmem_make((void *)big, BIG_SIZE, XPMEM_PERMIT_MODE,
				   (void *)0600);
		if (segid == -1) {
			sh_set(sh, SH_ERR, errno);
			_exit(EXIT_FAIL);
		}
		sh_set(sh, SH_SEGID, segid);
		if (!sh_wait(sh, SH_STEP, 1, 0))
			_exit(EXIT_FAIL);
		_exit(xpmem_remove(segid) ? EXIT_FAIL : EXIT_PASS);
	}
	if (!sh_wait(sh, SH_SEGID, 1, child))
		return fail("the exporter child could not export 1 GiB (errno %llu)",
			    (unsigned long long)sh[SH_ERR]);
	apid = xpmem_get(sh[SH_SEGID], XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1)
		return fail("xpmem_get: %s", strerror(errno));
	addr.apid = apid;
	att = xpmem_attach(addr, BIG_SIZE, NULL);
	if (att == (void *)-1)
		return fail("xpmem_attach of 1 GiB: %s", strerror(errno));
	read_stat("faults", &f0);
	t0 = now();
	for (i = 0; i < n; i++)
		if (att[i * wstep] != (BIG_MAGIC ^ i))
			return fail("touched page at %lu MiB reads %#llx", i * 4,
				    (unsigned long long)att[i * wstep]);
	/* Untouched pages in the middle of every 16th 4 MiB step. */
	for (i = 0; i < n; i += 16)
		if (att[i * wstep + wstep / 2])
			return fail("untouched page at %lu MiB + 2 MiB reads %#llx",
				    i * 4, (unsigned long long)att[i * wstep + wstep / 2]);
	read_stat("faults", &f1);
	say("NOTE read %lu touched and %lu untouched pages of 1 GiB in %.2f s, %lld FAULT(s)",
	    n, n / 16, now() - t0, f1 - f0);
	return finish_import(att, apid, sh, child, 1);
}

/* The call returned -1 with errno @want (native's), or the case fails. */
#define WANT_ERR(call, want, what)					\
	do {								\
		errno = 0;						\
		if ((long)(call) != -1)					\
			return fail("%s succeeded; natively %s", what,	\
				    strerror(want));			\
		if (errno != (want))					\
			return fail("%s: %s; natively %s", what,	\
				    strerror(errno), strerror(want));	\
	} while (0)

#define X86_64_TASK_SIZE	0x7ffffffff000UL

/*
 * local-errors: every error path of make/remove/get/release/attach/detach
 * that one VM can reach gives the native module's errno (hpc/xpmem
 * kernel/xpmem_{make,get,attach,main,misc}.c). Not here: ENOMEM and EBUSY
 * (id space) and XPMEM_ERRNO_NOPROC, which this driver never returns (see
 * the `killed` row of the compatibility table in ../README.md).
 */
static int case_local_errors(void)
{
	volatile uint64_t *buf = alloc_buf(1), *sh = shared_page();
	struct xpmem_addr addr = { .apid = 12345, .offset = 0 };
	struct xpmem_cmd_get get = { .flags = XPMEM_RDWR,
				     .permit_type = XPMEM_PERMIT_MODE };
	void *att, *gap;
	xpmem_segid_t segid;
	xpmem_apid_t apid;
	pid_t child;
	int dummy, fd, rc;

	if (!buf || !sh)
		return fail("mmap");
	/* make: xpmem_make() */
	WANT_ERR(xpmem_make((char *)buf + 1, PAGE, XPMEM_PERMIT_MODE,
			    (void *)0600), EINVAL, "make of an unaligned address");
	WANT_ERR(xpmem_make((void *)buf, PAGE + 8, XPMEM_PERMIT_MODE,
			    (void *)0600), EINVAL, "make of an unaligned size");
	WANT_ERR(xpmem_make((void *)buf, 0, XPMEM_PERMIT_MODE, (void *)0600),
		 EINVAL, "make of size 0");
	WANT_ERR(xpmem_make((void *)buf, PAGE, 7, (void *)0600), EINVAL,
		 "make with permit_type 7");
	WANT_ERR(xpmem_make((void *)buf, PAGE, XPMEM_PERMIT_MODE,
			    (void *)01777), EINVAL, "make with mode 01777");
	WANT_ERR(xpmem_make((void *)(X86_64_TASK_SIZE - PAGE), 2 * PAGE,
			    XPMEM_PERMIT_MODE, (void *)0600), EINVAL,
		 "make past TASK_SIZE");
	fd = lib_fd();
	if (fd < 0)
		return fail("no /dev/xpmem descriptor of the library");
	/* copy_from_user of every command's argument fails: EFAULT. */
	WANT_ERR(ioctl(fd, XPMEM_CMD_MAKE, (void *)8), EFAULT, "MAKE of a bad pointer");
	WANT_ERR(ioctl(fd, XPMEM_CMD_REMOVE, (void *)8), EFAULT, "REMOVE of a bad pointer");
	WANT_ERR(ioctl(fd, XPMEM_CMD_GET, (void *)8), EFAULT, "GET of a bad pointer");
	WANT_ERR(ioctl(fd, XPMEM_CMD_RELEASE, (void *)8), EFAULT, "RELEASE of a bad pointer");
	WANT_ERR(ioctl(fd, XPMEM_CMD_ATTACH, (void *)8), EFAULT, "ATTACH of a bad pointer");
	WANT_ERR(ioctl(fd, XPMEM_CMD_DETACH, (void *)8), EFAULT, "DETACH of a bad pointer");
	/* -ENOIOCTLCMD becomes ENOTTY in the VFS. */
	WANT_ERR(ioctl(fd, _IO(XPMEM_IOC_MAGIC, 9), NULL), ENOTTY, "unknown command");

	/* remove: xpmem_remove() */
	WANT_ERR(xpmem_remove(0), EINVAL, "remove of segid 0");
	WANT_ERR(xpmem_remove(-5), EINVAL, "remove of segid -5");
	WANT_ERR(xpmem_remove(4242), ENOENT, "remove of a made-up segid");
	segid = xpmem_make((void *)buf, 2 * PAGE, XPMEM_PERMIT_MODE, (void *)0600);
	if (segid == -1)
		return fail("xpmem_make: %s", strerror(errno));
	if (xpmem_remove(segid))
		return fail("xpmem_remove: %s", strerror(errno));
	WANT_ERR(xpmem_remove(segid), ENOENT, "second remove");
	/* Another process's segment: EACCES (only the owner removes). */
	child = spawn();
	if (child < 0)
		return fail("fork: %s", strerror(errno));
	if (child == 0) {
		xpmem_segid_t s = xpmem_make((void *)buf, 2 * PAGE,
					     XPMEM_PERMIT_MODE, (void *)0666);

		if (s == -1)
			_exit(EXIT_FAIL);
		sh_set(sh, SH_SEGID, s);
		if (!sh_wait(sh, SH_STEP, 1, 0))
			_exit(EXIT_FAIL);
		_exit(xpmem_remove(s) ? EXIT_FAIL : EXIT_PASS);
	}
	if (!sh_wait(sh, SH_SEGID, 1, child))
		return fail("the child could not make a segment");
	WANT_ERR(xpmem_remove(sh[SH_SEGID]), EACCES, "remove of another process's segment");
	sh_set(sh, SH_STEP, 1);
	rc = reap(child);
	if (rc)
		return fail("the child could not remove its own segment (%d)", rc);

	/* get: xpmem_get() */
	WANT_ERR(xpmem_get(0, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), EINVAL, "get of segid 0");
	WANT_ERR(xpmem_get(-1, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), EINVAL, "get of segid -1");
	WANT_ERR(xpmem_get(1, 3, XPMEM_PERMIT_MODE, NULL), EINVAL, "get with flags 3");
	WANT_ERR(xpmem_get(1, 4, XPMEM_PERMIT_MODE, NULL), EINVAL, "get with flags 4");
	WANT_ERR(xpmem_get(1, XPMEM_RDWR, 2, NULL), EINVAL, "get with permit_type 2");
	get.segid = segid;
	get.permit_value = 0666;
	WANT_ERR(ioctl(fd, XPMEM_CMD_GET, &get), EINVAL, "GET with a non-NULL permit_value");
	WANT_ERR(xpmem_get(4242, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT,
		 "get of a made-up segid");
	WANT_ERR(xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT,
		 "get of a removed segid");

	/* attach: xpmem_attach() */
	addr.apid = 0;
	WANT_ERR(xpmem_attach(addr, PAGE, NULL), EINVAL, "attach with apid 0");
	addr.apid = -1;
	WANT_ERR(xpmem_attach(addr, PAGE, NULL), EINVAL, "attach with apid -1");
	addr.apid = 12345;
	WANT_ERR(xpmem_attach(addr, PAGE, NULL), ENOENT, "attach with a made-up apid");
	segid = xpmem_make((void *)buf, 2 * PAGE, XPMEM_PERMIT_MODE, (void *)0600);
	if (segid == -1)
		return fail("xpmem_make: %s", strerror(errno));
	apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1)
		return fail("xpmem_get: %s", strerror(errno));
	addr.apid = apid;
	addr.offset = 8;
	WANT_ERR(xpmem_attach(addr, PAGE, NULL), EINVAL, "attach at an unaligned offset");
	addr.offset = -PAGE;
	WANT_ERR(xpmem_attach(addr, PAGE, NULL), EINVAL, "attach at a negative offset");
	addr.offset = 0;
	WANT_ERR(xpmem_attach(addr, 0, NULL), EINVAL, "attach of size 0");
	WANT_ERR(xpmem_attach(addr, 3 * PAGE, NULL), EINVAL, "attach past the segment's end");
	WANT_ERR(xpmem_attach(addr, PAGE, (char *)buf + 8), EINVAL,
		 "attach at an unaligned address");
	WANT_ERR(xpmem_attach(addr, PAGE, (void *)(X86_64_TASK_SIZE - PAGE)), EINVAL,
		 "attach at the last page below TASK_SIZE");
	att = xpmem_attach(addr, 2 * PAGE, NULL);
	if (att == (void *)-1)
		return fail("xpmem_attach: %s", strerror(errno));
	WANT_ERR(xpmem_attach(addr, PAGE, (char *)att + PAGE), EINVAL,
		 "attach over an attachment");
	/* The exporter attaching its own segment over the source pages. */
	WANT_ERR(xpmem_attach(addr, 2 * PAGE, (char *)buf + PAGE), EINVAL,
		 "attach of the own segment over its source");

	/* detach: xpmem_detach() */
	WANT_ERR(xpmem_detach(&dummy), EINVAL, "detach of a non-attachment");
	gap = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (gap == MAP_FAILED || munmap(gap, PAGE))
		return fail("mmap: %s", strerror(errno));
	if (xpmem_detach(gap))
		return fail("detach of an unmapped address: %s; natively 0",
			    strerror(errno));
	if (xpmem_detach(att))
		return fail("xpmem_detach: %s", strerror(errno));
	if (xpmem_detach(att))
		return fail("second detach: %s; natively 0", strerror(errno));

	/* After the segment is gone: attach ENOENT, release still works. */
	if (xpmem_remove(segid))
		return fail("xpmem_remove: %s", strerror(errno));
	WANT_ERR(xpmem_attach(addr, PAGE, NULL), ENOENT, "attach of a removed segment");

	/* release: xpmem_release() */
	WANT_ERR(xpmem_release(0), EINVAL, "release of apid 0");
	WANT_ERR(xpmem_release(-1), EINVAL, "release of apid -1");
	WANT_ERR(xpmem_release(12345), ENOENT, "release of a made-up apid");
	if (xpmem_release(apid))
		return fail("release after the segment was removed: %s; natively 0",
			    strerror(errno));
	WANT_ERR(xpmem_release(apid), ENOENT, "second release");
	return pass();
}

static const struct {
	const char *name;
	int (*fn)(void);
	const char *help;
} cases[] = {
	{ "version", case_version, "VERSION ioctl" },
	{ "nodev", case_nodev, "without the device, calls fail with ENODEV" },
	{ "proc-zero", case_proc_zero, "all current /proc/xpmem counters are 0" },
	{ "local", case_local, "export + attach in one VM, both directions, SIGBUS after munmap" },
	{ "local-errors", case_local_errors, "argument checking" },
	{ "get-permit-value", case_get_permit_value, "xpmem_get ignores permit_value, as Open MPI calls it" },
	{ "whole-space", case_whole_space, "export 0..XPMEM_MAXADDR_SIZE, attach by vaddr, detach inside, address hint" },
	{ "unmapped-range", case_unmapped_range, "segment over unmapped memory: SIGBUS, then the data once the exporter maps it" },
	{ "holes", case_holes, "page 3 of 8 unmapped: SIGBUS there, the pages around it read right" },
	{ "later-mapped", case_later_mapped, "memory mapped after a whole-space make is attachable" },
	{ "killed", case_killed, "SIGKILLed exporter: SIGBUS, segment gone; SIGKILLed importer: munmap prompt, nothing left" },
	{ "threads-fault", case_threads_fault, "--threads (8) threads read the same fresh pages at once" },
	{ "one-to-many", case_one_to_many, "16 importer processes of segments of 1, 10, 100, 1000 pages, markers back" },
	{ "fork-importer", case_fork_importer, "fork child of an importer: SIGSEGV, the parent's apid gives EACCES" },
	{ "read-only-local", case_read_only_local, "XPMEM_RDONLY permit in one VM: reads, SIGSEGV on write, RDWR attach EACCES" },
	{ "big-segment", case_big_segment, "1 GiB MAP_NORESERVE segment attached whole (the whole read-write aperture)" },
	{ "get-ipc-owner", case_get_ipc_owner, "root gets uid 1000's 0600 segment (CAP_IPC_OWNER); uid 2000 gets EACCES" },
	{ "export", case_export, "export; wait for an importer to write (pairs with attach)" },
	{ "export-hold", case_export_hold, "export and hold for --timeout s, --until N DONE lines or until --stop FILE exists" },
	{ "export-fork", case_export_fork, "fork + copy-on-write in the exporter (attach-fork)" },
	{ "export-unmap", NULL, "munmap after the importer read (attach-gone)" },
	{ "export-exit", NULL, "exit after the importer read (attach-gone)" },
	{ "attach", case_attach, "read, write back, detach" },
	{ "attach-ro", case_attach_ro, "read-only permit: reads work, writes SIGSEGV" },
	{ "attach-fork", case_attach_fork, "see the exporter's post-fork data" },
	{ "attach-gone", case_attach_gone, "SIGBUS once the exporter is gone" },
	{ "get-denied", case_get_denied, "GET as --uid (default 1000) fails with EACCES" },
	{ "export-multi", case_export_multi, "one segment, --importers N importers (attach-multi)" },
	{ "attach-multi", case_attach_multi, "importer --index I: writes page I, sees the others'" },
	{ "export-two", case_export_two, "two segments from one process (attach-two)" },
	{ "attach-two", case_attach_two, "two segments attached at once (export-two, export-multi x2)" },
	{ "attach-twice", case_attach_twice, "two attachments of one segment (export-multi)" },
	{ "export-pressure", case_export_pressure, "pages collapse, split, balloon, compaction (attach-follow)" },
	{ "attach-follow", case_attach_follow, "read each generation while pages move" },
	{ "export-wait-gone", case_export_wait_gone, "munmap after a GONE line reaches no importer" },
	{ "attach-exit", case_attach_exit, "exit while attached (export-wait-gone)" },
	{ "attach-poweroff", case_attach_poweroff, "power the VM off while attached" },
	{ "export-poweroff", case_export_poweroff, "after READY: export, attach, power off (attach-gone)" },
	{ "attach-bench", case_attach_bench, "first-touch rate, attached vs local bandwidth (export-hold)" },
	{ "stress-fault-inval", case_stress_fault_inval, "--threads readers fault while the exporter drops/remaps --rounds times" },
	{ "fault-hog", case_fault_hog, "uid 1000 keeps --threads FAULTs pending (no_resolve); another munmap returns" },
	{ "export-hostile", case_export_hostile, "munmap in --chunks steps while the importer misbehaves; each by the deadline + 10%" },
	{ "attach-hostile", case_attach_hostile, "--misbehave MODE after reading; old data or filler, then SIGBUS (export-hostile)" },
	{ "attach-kill", case_attach_kill, "--name: read, say READ; once the exporter's VM is killed: SIGBUS, name gone" },
	{ "attach-fault", case_attach_fault, "--name: touch a page of a no_resolve exporter; SIGBUS once its VM is killed" },
	{ "export-inval-kill", case_export_inval_kill, "--name: munmap while a no_ack importer's VM is killed; no forced revocation" },
	{ "get-hold", case_get_hold, "--name: xpmem_get, say GOT, hold the permit --timeout s (its VM is killed)" },
	{ "names", case_names, "named segments in one VM: make_name, search, /proc/xpmem/names, EEXIST, gone with the segment" },
	{ "export-space", case_export_space, "--name: whole address space with a hole at 0x100000000000, filled later, then SIGKILL (attach-space)" },
	{ "attach-space", case_attach_space, "--name: attach by the exporter's address, hole SIGBUS, later data, threads, SIGBUS after the kill" },
	{ "disk-write", case_disk_write, "write --pages MiB of a pattern to --dev, fsync, print SYNCED and its sum" },
	{ "disk-verify", case_disk_verify, "read --pages MiB of --dev back and check every word" },
	{ "disk-bench", case_disk_bench, "sequential MiB/s and 4 KiB random-read IOPS of --dev (--pages MiB, --rounds reads)" },
	{ "disk-readonly", case_disk_readonly, "--dev is read-only in the guest; reads work, writes fail" },
	{ "net-send", case_net_send, "send --bytes of a pattern to --host (IPv4):--port over TCP (or vsock --cid:--port), print SENT and its sum" },
	{ "net-recv", case_net_recv, "accept one TCP (or with --cid, vsock) connection on --port, check --bytes of the pattern, print RECEIVED and its sum" },
	{ "vsock-echo", case_vsock_echo, "accept one vsock (--cid any) or TCP connection on --port, echo it until EOF, print ECHOED" },
	{ "agent-refused", case_agent_refused, "connect to another VM's guest agent at --cid (--port 5252) over vsock: it must refuse" },
	{ "net-rtt", case_net_rtt, "--rounds 1-byte round trips to an echo server (vsock-echo without --cid) at --host:--port, print RESULT with mean/p50/p99 us" },
	{ "net-flood", case_net_flood, "UDP broadcasts and bad raw frames on --dev for --seconds (or until --stop FILE exists)" },
	{ "self-attach", case_self_attach, "attach own buffer from own whole-space segment; munmap needs no forced revocation" },
	{ "name-taken", case_name_taken, "--name of another VM's segment is found and cannot be taken here (EEXIST)" },
	{ "local-latency", case_local_latency, "after GO: --timeout s of one-page export/attach/munmap rounds in this VM" },
};

static void usage(void)
{
	unsigned int i;

	fprintf(stderr,
		"usage: xpmem-test CASE [--pages N] [--segid ID] [--mode 0NNN] [--timeout S] [--uid U]\n"
		"       [--to VM,..] [--importers N] [--index I] [--until N] [--threads N] [--rounds N]\n"
		"       [--chunks N] [--misbehave MODE] [--hold S] [--name NAME]\n"
		"       [--dev /dev/vdX] [--serial ID] [--host H] [--cid C] [--port P] [--bytes N]\n"
		"       [--seconds S] [--stop FILE]\n"
		"Output: lines 'XPMEM-TEST CASE SEGID n', 'XPMEM-TEST CASE PASS',\n"
		"'XPMEM-TEST CASE FAIL reason'. Exit 0 pass, 1 fail, 2 usage.\n"
		"The segid comes from --segid, xpmem.segid= on the kernel command\n"
		"line, or a line 'SEGID n' on stdin; with --name, exporters name\n"
		"their segment and importers look it up (xpmem_search).\nCases:\n");
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		fprintf(stderr, "  %-13s %s\n", cases[i].name, cases[i].help);
}

int main(int argc, char **argv)
{
	unsigned int i;
	int a;

	if (argc < 2) {
		usage();
		return EXIT_USAGE;
	}
	for (a = 2; a + 1 < argc; a += 2) {
		const char *k = argv[a], *v = argv[a + 1];

		if (!strcmp(k, "--pages"))
			opt.pages = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--segid"))
			opt.segid = strtoll(v, NULL, 0);
		else if (!strcmp(k, "--mode"))
			opt.mode = strtoul(v, NULL, 8);
		else if (!strcmp(k, "--timeout"))
			opt.timeout = atoi(v);
		else if (!strcmp(k, "--uid"))
			opt.uid = atoi(v);
		else if (!strcmp(k, "--to"))
			opt.to = v;
		else if (!strcmp(k, "--importers"))
			opt.importers = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--index"))
			opt.index = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--until"))
			opt.until = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--threads"))
			opt.threads = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--rounds"))
			opt.rounds = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--chunks"))
			opt.chunks = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--misbehave"))
			opt.misbehave = v;
		else if (!strcmp(k, "--hold"))
			opt.hold = atoi(v);
		else if (!strcmp(k, "--name"))
			opt.name = v;
		else if (!strcmp(k, "--dev"))
			opt.dev = v;
		else if (!strcmp(k, "--serial"))
			opt.serial = v;
		else if (!strcmp(k, "--host"))
			opt.host = v;
		else if (!strcmp(k, "--cid"))
			opt.cid = strtoull(v, NULL, 0);
		else if (!strcmp(k, "--port"))
			opt.port = strtoul(v, NULL, 0);
		else if (!strcmp(k, "--bytes"))
			opt.bytes = strtoull(v, NULL, 0);
		else if (!strcmp(k, "--seconds"))
			opt.seconds = atoi(v);
		else if (!strcmp(k, "--stop"))
			opt.stop = v;
		else {
			usage();
			return EXIT_USAGE;
		}
	}
	if (a != argc || !opt.pages || opt.timeout <= 0 || !opt.importers ||
	    opt.importers > MAX_IMPORTERS || opt.importers > opt.pages ||
	    opt.index >= MAX_IMPORTERS) {
		usage();
		return EXIT_USAGE;
	}
	cur_case = argv[1];
	if (!strcmp(cur_case, "export-unmap"))
		return case_export_gone(false);
	if (!strcmp(cur_case, "export-exit"))
		return case_export_gone(true);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (cases[i].fn && !strcmp(cases[i].name, cur_case)) {
			int rc = cases[i].fn();

			kill_kids();
			return rc;
		}
	}
	usage();
	return EXIT_USAGE;
}
