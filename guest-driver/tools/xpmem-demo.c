// SPDX-License-Identifier: GPL-2.0
/*
 * xpmem-demo: a small XPMEM program, and a bandwidth probe.
 *   xpmem-demo export PAGES SECONDS   export a buffer, print its segid,
 *                                     print what importers wrote into it
 *   xpmem-demo attach SEGID PAGES     read the exporter's message, answer
 *   xpmem-demo bench SEGID PAGES      time first touch (fault path) and
 *                                     repeated reads of an attachment
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "xpmem.h"

#define PAGE 4096UL

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
	fprintf(stderr, "usage: xpmem-demo export PAGES SECONDS | attach SEGID PAGES | bench SEGID PAGES\n");
	return 2;
}
