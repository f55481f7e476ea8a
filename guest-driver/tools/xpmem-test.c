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
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
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
};

enum { IMP_NONE, IMP_VERIFIED, IMP_WROTE, IMP_DONE };
enum { EXP_NONE, EXP_READY, EXP_FORKED };

static const char *cur_case = "?";
static struct {
	unsigned long pages;
	long long segid;
	unsigned int mode;
	int timeout;	/* seconds */
	int uid;
} opt = { .pages = 16, .segid = -1, .mode = 0666, .timeout = 60, .uid = -1 };

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

/* Index of the first wrong word, or -1. */
static long check(volatile const uint64_t *data, unsigned long npages,
		  uint64_t gen)
{
	unsigned long p, w;

	for (p = 0; p < npages; p++)
		for (w = 0; w < WORDS; w++)
			if (data[p * WORDS + w] != pattern(p, w, gen))
				return p * WORDS + w;
	return -1;
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

/* A line "SEGID <n>" on stdin (the harness types it on the console). */
static bool segid_from_stdin(void)
{
	char line[256];

	say("WAITING SEGID");
	while (fgets(line, sizeof(line), stdin)) {
		char *s = strstr(line, "SEGID ");

		if (s) {
			opt.segid = strtoll(s + 6, NULL, 0);
			return opt.segid > 0;
		}
	}
	return false;
}

static bool need_segid(void)
{
	if (opt.segid > 0)
		return true;
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

static int export_setup(void)
{
	volatile struct ctl *ctl;

	exp_buf = alloc_buf(opt.pages);
	if (!exp_buf)
		return fail("mmap: %s", strerror(errno));
	ctl = (volatile struct ctl *)exp_buf;
	ctl->magic = MAGIC;
	ctl->npages = opt.pages;
	ctl->gen = 1;
	fill(exp_buf + WORDS, opt.pages, 1);
	exp_segid = xpmem_make((void *)exp_buf, (opt.pages + 1) * PAGE,
			       XPMEM_PERMIT_MODE,
			       (void *)(uintptr_t)opt.mode);
	if (exp_segid == -1)
		return fail("xpmem_make: %s", strerror(errno));
	ctl->exp_state = EXP_READY;
	say("SEGID %lld", (long long)exp_segid);
	return EXIT_PASS;
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

/* export-hold: export and keep the buffer for --timeout seconds. */
static int case_export_hold(void)
{
	int rc = export_setup();

	if (rc)
		return rc;
	sleep(opt.timeout);
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

static int attach(int flags)
{
	struct xpmem_addr addr;
	void *p;

	if (!need_segid())
		return fail("no segid (use --segid, xpmem.segid= or SEGID on stdin)");
	if (opt.uid >= 0 && setuid(opt.uid))
		return fail("setuid(%d): %s", opt.uid, strerror(errno));
	imp_apid = xpmem_get(opt.segid, flags, XPMEM_PERMIT_MODE, NULL);
	if (imp_apid == -1)
		return fail("xpmem_get(%lld): %s", opt.segid, strerror(errno));
	addr.apid = imp_apid;
	addr.offset = 0;
	p = xpmem_attach(addr, (opt.pages + 1) * PAGE, NULL);
	if (p == (void *)-1)
		return fail("xpmem_attach: %s", strerror(errno));
	imp_buf = p;
	return EXIT_PASS;
}

static int imp_verify(uint64_t gen)
{
	volatile struct ctl *ctl = (volatile struct ctl *)imp_buf;
	long bad;

	if (ctl->magic != MAGIC)
		return fail("control page magic %#llx",
			    (unsigned long long)ctl->magic);
	if (ctl->npages < opt.pages)
		return fail("exporter has %llu pages, want %lu",
			    (unsigned long long)ctl->npages, opt.pages);
	bad = check(imp_buf + WORDS, opt.pages, gen);
	if (bad >= 0)
		return fail("generation %llu data wrong at word %ld: %#llx",
			    (unsigned long long)gen, bad,
			    (unsigned long long)imp_buf[WORDS + bad]);
	return EXIT_PASS;
}

static int imp_finish(void)
{
	if (xpmem_detach((void *)imp_buf))
		return fail("xpmem_detach: %s", strerror(errno));
	if (xpmem_release(imp_apid))
		return fail("xpmem_release: %s", strerror(errno));
	return pass();
}

/* attach: read generation 1, write generation 2, tell the exporter. */
static int case_attach(void)
{
	volatile struct ctl *ctl;
	double t0;
	int rc = attach(XPMEM_RDWR);

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	t0 = now();
	rc = imp_verify(1);
	if (rc)
		return rc;
	say("READ %lu pages in %.3f s", opt.pages + 1, now() - t0);
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
	int rc = attach(XPMEM_RDWR);

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	rc = imp_verify(1);
	if (rc)
		return rc;
	ctl->imp_state = IMP_VERIFIED;
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
	int rc = attach(XPMEM_RDWR), sig = 0;

	if (rc)
		return rc;
	ctl = (volatile struct ctl *)imp_buf;
	rc = imp_verify(1);
	if (rc)
		return rc;
	ctl->imp_state = IMP_VERIFIED;
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

/* local-errors: argument checking that needs no second VM. */
static int case_local_errors(void)
{
	volatile uint64_t *buf = alloc_buf(1);
	struct xpmem_addr addr = { .apid = 12345, .offset = 0 };
	int dummy;

	if (!buf)
		return fail("mmap");
	errno = 0;
	if (xpmem_make((char *)buf + 1, PAGE, XPMEM_PERMIT_MODE,
		       (void *)0600) != -1 || errno != EINVAL)
		return fail("unaligned make: %s", strerror(errno));
	if (xpmem_make((void *)buf, PAGE, 7, (void *)0600) != -1 ||
	    errno != EINVAL)
		return fail("bad permit_type: %s", strerror(errno));
	if (xpmem_make((void *)buf, PAGE, XPMEM_PERMIT_MODE,
		       (void *)01777) != -1 || errno != EINVAL)
		return fail("bad mode: %s", strerror(errno));
	if (xpmem_get(0, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL) != -1 ||
	    errno != EINVAL)
		return fail("get segid 0: %s", strerror(errno));
	if (xpmem_get(1, 3, XPMEM_PERMIT_MODE, NULL) != -1 || errno != EINVAL)
		return fail("get flags 3: %s", strerror(errno));
	if (xpmem_attach(addr, PAGE, NULL) != (void *)-1)
		return fail("attach with a made-up apid succeeded");
	if (xpmem_detach(&dummy) != -1 || errno != EINVAL)
		return fail("detach of a non-attachment: %s", strerror(errno));
	if (xpmem_remove(4242) != -1)
		return fail("remove of a made-up segid succeeded");
	return pass();
}

/* version: the ioctl works even without the device. */
static int case_version(void)
{
	int v = xpmem_version();

	if (v == -1)
		return fail("xpmem_version: %s", strerror(errno));
	say("VERSION %#x", v);
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
	{ "export", case_export, "export; wait for an importer to write (pairs with attach)" },
	{ "export-hold", case_export_hold, "export and hold for --timeout s (attach-ro, get-denied)" },
	{ "export-fork", case_export_fork, "fork + copy-on-write in the exporter (attach-fork)" },
	{ "export-unmap", NULL, "munmap after the importer read (attach-gone)" },
	{ "export-exit", NULL, "exit after the importer read (attach-gone)" },
	{ "attach", case_attach, "read, write back, detach" },
	{ "attach-ro", case_attach_ro, "read-only permit: reads work, writes SIGSEGV" },
	{ "attach-fork", case_attach_fork, "see the exporter's post-fork data" },
	{ "attach-gone", case_attach_gone, "SIGBUS once the exporter is gone" },
	{ "get-denied", case_get_denied, "GET as --uid (default 1000) fails with EACCES" },
};

static void usage(void)
{
	unsigned int i;

	fprintf(stderr,
		"usage: xpmem-test CASE [--pages N] [--segid ID] [--mode 0NNN] [--timeout S] [--uid U]\n"
		"Output: lines 'XPMEM-TEST CASE SEGID n', 'XPMEM-TEST CASE PASS',\n"
		"'XPMEM-TEST CASE FAIL reason'. Exit 0 pass, 1 fail, 2 usage.\n"
		"The segid comes from --segid, xpmem.segid= on the kernel command\n"
		"line, or a line 'SEGID n' on stdin.\nCases:\n");
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
		else {
			usage();
			return EXIT_USAGE;
		}
	}
	if (a != argc || !opt.pages || opt.timeout <= 0) {
		usage();
		return EXIT_USAGE;
	}
	cur_case = argv[1];
	if (!strcmp(cur_case, "export-unmap"))
		return case_export_gone(false);
	if (!strcmp(cur_case, "export-exit"))
		return case_export_gone(true);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (cases[i].fn && !strcmp(cases[i].name, cur_case))
			return cases[i].fn();
	usage();
	return EXIT_USAGE;
}
