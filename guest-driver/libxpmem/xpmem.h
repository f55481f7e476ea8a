/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * XPMEM user interface: source compatible with the public XPMEM library
 * (same types, constants, ioctl numbers, argument layouts and functions).
 */
#ifndef _XPMEM_H
#define _XPMEM_H

#include <linux/types.h>
#include <asm/ioctl.h>
#ifndef __KERNEL__
#include <stddef.h>
#include <sys/types.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef __s64 xpmem_segid_t;	/* from xpmem_make() */
typedef __s64 xpmem_apid_t;	/* from xpmem_get() */

struct xpmem_addr {
	xpmem_apid_t apid;	/* access permit of the segment */
	off_t offset;		/* byte offset into the segment */
};

#define XPMEM_MAXADDR_SIZE	((size_t)(-1L))
#define XPMEM_DEV_PATH		"/dev/xpmem"
#define XPMEM_ERRNO_NOPROC	2004

#define XPMEM_RDONLY		0x1
#define XPMEM_RDWR		0x2
#define XPMEM_PERMIT_MODE	0x1

#define XPMEM_IOC_MAGIC		'x'
#define XPMEM_CMD_VERSION	_IO(XPMEM_IOC_MAGIC, 0)
#define XPMEM_CMD_MAKE		_IO(XPMEM_IOC_MAGIC, 1)
#define XPMEM_CMD_REMOVE	_IO(XPMEM_IOC_MAGIC, 2)
#define XPMEM_CMD_GET		_IO(XPMEM_IOC_MAGIC, 3)
#define XPMEM_CMD_RELEASE	_IO(XPMEM_IOC_MAGIC, 4)
#define XPMEM_CMD_ATTACH	_IO(XPMEM_IOC_MAGIC, 5)
#define XPMEM_CMD_DETACH	_IO(XPMEM_IOC_MAGIC, 6)
#define XPMEM_CMD_FORK_BEGIN	_IO(XPMEM_IOC_MAGIC, 7)
#define XPMEM_CMD_FORK_END	_IO(XPMEM_IOC_MAGIC, 8)

/*
 * Named segments: an extension of this project (spec 8.13), not in native
 * XPMEM. A name is 1 to XPMEM_NAME_MAX printable ASCII bytes without spaces,
 * unique among all VMs of a setup; it goes away with its segment.
 */
#define XPMEM_HAVE_NAMES	1
#define XPMEM_NAME_MAX		63
#define XPMEM_CMD_NAME		_IO(XPMEM_IOC_MAGIC, 0x20)
#define XPMEM_CMD_SEARCH	_IO(XPMEM_IOC_MAGIC, 0x21)

struct xpmem_cmd_make {
	__u64 vaddr;
	size_t size;
	int permit_type;
	__u64 permit_value;
	xpmem_segid_t segid;	/* out */
};

struct xpmem_cmd_remove {
	xpmem_segid_t segid;
};

struct xpmem_cmd_get {
	xpmem_segid_t segid;
	int flags;
	int permit_type;
	__u64 permit_value;
	xpmem_apid_t apid;	/* out */
};

struct xpmem_cmd_release {
	xpmem_apid_t apid;
};

struct xpmem_cmd_attach {
	xpmem_apid_t apid;
	off_t offset;
	size_t size;
	__u64 vaddr;		/* in: 0 or a MAP_FIXED address; out: address */
	int fd;
	int flags;
};

struct xpmem_cmd_detach {
	__u64 vaddr;
};

struct xpmem_cmd_name {
	xpmem_segid_t segid;
	char name[XPMEM_NAME_MAX + 1];
};

struct xpmem_cmd_search {
	char name[XPMEM_NAME_MAX + 1];
	xpmem_segid_t segid;	/* out */
};

#ifndef __KERNEL__
int xpmem_version(void);
xpmem_segid_t xpmem_make(void *vaddr, size_t size, int permit_type,
			 void *permit_value);
int xpmem_remove(xpmem_segid_t segid);
xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type,
		       void *permit_value);
int xpmem_release(xpmem_apid_t apid);
void *xpmem_attach(struct xpmem_addr addr, size_t size, void *vaddr);
int xpmem_detach(void *vaddr);
/* Extensions (XPMEM_HAVE_NAMES); -1 with errno on failure. */
int xpmem_name(xpmem_segid_t segid, const char *name);
xpmem_segid_t xpmem_make_name(void *vaddr, size_t size, int permit_type,
			      void *permit_value, const char *name);
xpmem_segid_t xpmem_search(const char *name);
#endif

#ifdef __cplusplus
}
#endif

#endif /* _XPMEM_H */
