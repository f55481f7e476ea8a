/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The XPMEM user ABI as seen by the kernel module: the ioctl numbers and the
 * argument layouts of the public XPMEM module (x86-64 offsets are asserted
 * below; libxpmem/xpmem.h and the Rust crate assert the same offsets).
 */
#ifndef _XPMEM_UAPI_H
#define _XPMEM_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/stddef.h>

#define XPMEM_CURRENT_VERSION	0x00027004

#define XPMEM_MAXADDR_SIZE	((__kernel_size_t)-1)
#define XPMEM_RDONLY		0x1
#define XPMEM_RDWR		0x2
#define XPMEM_PERMIT_MODE	0x1
#define XPMEM_ERRNO_NOPROC	2004

#define XPMEM_CMD_VERSION	_IO('x', 0)
#define XPMEM_CMD_MAKE		_IO('x', 1)
#define XPMEM_CMD_REMOVE	_IO('x', 2)
#define XPMEM_CMD_GET		_IO('x', 3)
#define XPMEM_CMD_RELEASE	_IO('x', 4)
#define XPMEM_CMD_ATTACH	_IO('x', 5)
#define XPMEM_CMD_DETACH	_IO('x', 6)
#define XPMEM_CMD_FORK_BEGIN	_IO('x', 7)
#define XPMEM_CMD_FORK_END	_IO('x', 8)
/* Named segments (not in native XPMEM; numbers clear of its commands). */
#define XPMEM_CMD_NAME		_IO('x', 0x20)
#define XPMEM_CMD_SEARCH	_IO('x', 0x21)
#define XPMEM_NAME_MAX		63	/* bytes, without the NUL */

struct xpmem_cmd_make {
	__u64 vaddr;
	__kernel_size_t size;
	int permit_type;
	__u64 permit_value;
	__s64 segid;		/* out */
};

struct xpmem_cmd_remove {
	__s64 segid;
};

struct xpmem_cmd_get {
	__s64 segid;
	int flags;
	int permit_type;
	__u64 permit_value;
	__s64 apid;		/* out */
};

struct xpmem_cmd_release {
	__s64 apid;
};

struct xpmem_cmd_attach {
	__s64 apid;
	__kernel_off_t offset;
	__kernel_size_t size;
	__u64 vaddr;		/* in/out */
	int fd;
	int flags;
};

struct xpmem_cmd_detach {
	__u64 vaddr;
};

struct xpmem_cmd_name {
	__s64 segid;
	char name[XPMEM_NAME_MAX + 1];	/* NUL-terminated */
};

struct xpmem_cmd_search {
	char name[XPMEM_NAME_MAX + 1];	/* NUL-terminated */
	__s64 segid;		/* out */
};

#ifdef __x86_64__
_Static_assert(offsetof(struct xpmem_cmd_make, size) == 8, "make.size");
_Static_assert(offsetof(struct xpmem_cmd_make, permit_type) == 16, "make.pt");
_Static_assert(offsetof(struct xpmem_cmd_make, permit_value) == 24, "make.pv");
_Static_assert(offsetof(struct xpmem_cmd_make, segid) == 32, "make.segid");
_Static_assert(sizeof(struct xpmem_cmd_make) == 40, "make size");
_Static_assert(offsetof(struct xpmem_cmd_get, flags) == 8, "get.flags");
_Static_assert(offsetof(struct xpmem_cmd_get, permit_type) == 12, "get.pt");
_Static_assert(offsetof(struct xpmem_cmd_get, permit_value) == 16, "get.pv");
_Static_assert(offsetof(struct xpmem_cmd_get, apid) == 24, "get.apid");
_Static_assert(sizeof(struct xpmem_cmd_get) == 32, "get size");
_Static_assert(offsetof(struct xpmem_cmd_attach, offset) == 8, "att.offset");
_Static_assert(offsetof(struct xpmem_cmd_attach, size) == 16, "att.size");
_Static_assert(offsetof(struct xpmem_cmd_attach, vaddr) == 24, "att.vaddr");
_Static_assert(offsetof(struct xpmem_cmd_attach, fd) == 32, "att.fd");
_Static_assert(offsetof(struct xpmem_cmd_attach, flags) == 36, "att.flags");
_Static_assert(sizeof(struct xpmem_cmd_attach) == 40, "attach size");
_Static_assert(sizeof(struct xpmem_cmd_name) == 72, "name size");
_Static_assert(offsetof(struct xpmem_cmd_search, segid) == 64, "search.segid");
_Static_assert(sizeof(struct xpmem_cmd_search) == 72, "search size");
#endif

#endif /* _XPMEM_UAPI_H */
