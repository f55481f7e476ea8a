// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * libxpmem: the XPMEM user library over /dev/xpmem. Every call returns -1
 * (or (void *)-1 for xpmem_attach) with errno set on failure, like the
 * public library. The device is opened on first use and stays open; the
 * descriptor is close-on-exec and shared by threads (and, after fork, by the
 * child, which the driver treats as a separate owner).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "xpmem.h"

_Static_assert(offsetof(struct xpmem_cmd_make, segid) == 32, "make ABI");
_Static_assert(offsetof(struct xpmem_cmd_get, apid) == 24, "get ABI");
_Static_assert(offsetof(struct xpmem_cmd_attach, flags) == 36, "attach ABI");
_Static_assert(sizeof(struct xpmem_cmd_attach) == 40, "attach ABI");
_Static_assert(sizeof(struct xpmem_cmd_name) == 72, "name ABI");
_Static_assert(offsetof(struct xpmem_cmd_search, segid) == 64, "search ABI");

static atomic_int xpmem_fd = -1;

static int xpmem_dev(void)
{
	int fd = atomic_load(&xpmem_fd);
	int expected = -1;

	if (fd >= 0)
		return fd;
	fd = open(XPMEM_DEV_PATH, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (!atomic_compare_exchange_strong(&xpmem_fd, &expected, fd)) {
		close(fd);	/* another thread won the race */
		fd = expected;
	}
	return fd;
}

static int xpmem_ioctl(unsigned long cmd, void *arg)
{
	int fd = xpmem_dev();

	if (fd < 0)
		return -1;
	return ioctl(fd, cmd, arg);
}

int xpmem_version(void)
{
	return xpmem_ioctl(XPMEM_CMD_VERSION, NULL);
}

xpmem_segid_t xpmem_make(void *vaddr, size_t size, int permit_type,
			 void *permit_value)
{
	struct xpmem_cmd_make cmd = {
		.vaddr = (__u64)(uintptr_t)vaddr,
		.size = size,
		.permit_type = permit_type,
		.permit_value = (__u64)(uintptr_t)permit_value,
	};

	if (xpmem_ioctl(XPMEM_CMD_MAKE, &cmd) == -1)
		return -1;
	/* As natively, an id of 0 is a failure (never issued). */
	if (!cmd.segid) {
		errno = EIO;
		return -1;
	}
	return cmd.segid;
}

int xpmem_remove(xpmem_segid_t segid)
{
	struct xpmem_cmd_remove cmd = { .segid = segid };

	return xpmem_ioctl(XPMEM_CMD_REMOVE, &cmd) == -1 ? -1 : 0;
}

/*
 * Like the native library, permit_value is ignored and the kernel gets NULL:
 * Open MPI and UCX pass (void *)0666 here, which the kernel (this one and the
 * native module) refuses.
 */
xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type,
		       void *permit_value)
{
	struct xpmem_cmd_get cmd = {
		.segid = segid,
		.flags = flags,
		.permit_type = permit_type,
		.permit_value = 0,
	};

	(void)permit_value;

	if (xpmem_ioctl(XPMEM_CMD_GET, &cmd) == -1)
		return -1;
	if (!cmd.apid) {
		errno = EIO;
		return -1;
	}
	return cmd.apid;
}

int xpmem_release(xpmem_apid_t apid)
{
	struct xpmem_cmd_release cmd = { .apid = apid };

	return xpmem_ioctl(XPMEM_CMD_RELEASE, &cmd) == -1 ? -1 : 0;
}

void *xpmem_attach(struct xpmem_addr addr, size_t size, void *vaddr)
{
	struct xpmem_cmd_attach cmd = {
		.apid = addr.apid,
		.offset = addr.offset,
		.size = size,
		.vaddr = (__u64)(uintptr_t)vaddr,
		.fd = -1,
		.flags = 0,
	};

	if (xpmem_ioctl(XPMEM_CMD_ATTACH, &cmd) == -1)
		return (void *)-1;
	return (void *)(uintptr_t)cmd.vaddr;
}

int xpmem_detach(void *vaddr)
{
	struct xpmem_cmd_detach cmd = { .vaddr = (__u64)(uintptr_t)vaddr };

	return xpmem_ioctl(XPMEM_CMD_DETACH, &cmd) == -1 ? -1 : 0;
}

/* Copies a name into a command's field; ENAMETOOLONG if it does not fit. */
static int xpmem_copy_name(char field[XPMEM_NAME_MAX + 1], const char *name)
{
	size_t len;

	if (!name) {
		errno = EINVAL;
		return -1;
	}
	len = strnlen(name, XPMEM_NAME_MAX + 1);
	if (len > XPMEM_NAME_MAX) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(field, name, len);
	memset(field + len, 0, XPMEM_NAME_MAX + 1 - len);
	return 0;
}

int xpmem_name(xpmem_segid_t segid, const char *name)
{
	struct xpmem_cmd_name cmd = { .segid = segid };

	if (xpmem_copy_name(cmd.name, name) == -1)
		return -1;
	return xpmem_ioctl(XPMEM_CMD_NAME, &cmd) == -1 ? -1 : 0;
}

/* MAKE then NAME; a segment whose name is refused is removed again. */
xpmem_segid_t xpmem_make_name(void *vaddr, size_t size, int permit_type,
			      void *permit_value, const char *name)
{
	xpmem_segid_t segid;
	int saved;

	segid = xpmem_make(vaddr, size, permit_type, permit_value);
	if (segid == -1)
		return -1;
	if (xpmem_name(segid, name) == -1) {
		saved = errno;
		xpmem_remove(segid);
		errno = saved;
		return -1;
	}
	return segid;
}

xpmem_segid_t xpmem_search(const char *name)
{
	struct xpmem_cmd_search cmd = { .segid = 0 };

	if (xpmem_copy_name(cmd.name, name) == -1)
		return -1;
	if (xpmem_ioctl(XPMEM_CMD_SEARCH, &cmd) == -1)
		return -1;
	return cmd.segid;
}
