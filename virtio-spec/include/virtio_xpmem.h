/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause */
/*
 * virtio-xpmem wire format.
 *
 * The normative description is virtio-spec/virtio-xpmem.md. The Rust crate
 * virtio-xpmem-wire (virtio-spec/wire) declares the same layout; its test
 * tests/c_agreement.rs compiles this header and compares every size, offset
 * and constant, so the two cannot drift apart.
 *
 * All multi-byte fields are little-endian. Usable from the guest kernel
 * module and from userspace (needs <linux/types.h>, from linux-libc-dev).
 */
#ifndef _VIRTIO_XPMEM_H
#define _VIRTIO_XPMEM_H

#include <linux/types.h>

/* Device ID: unassigned in OASIS virtio 1.3 and Linux virtio_ids.h. */
#define VIRTIO_ID_XPMEM				56

/* Feature bits. */
#define VIRTIO_XPMEM_F_RO_APERTURE		0	/* shm region 1 exists */
#define VIRTIO_XPMEM_F_NAMES			1	/* NAME and SEARCH */

/* Virtqueues. */
#define VIRTIO_XPMEM_QUEUE_REQUEST		0
#define VIRTIO_XPMEM_QUEUE_EVENT		1
#define VIRTIO_XPMEM_NUM_QUEUES			2

/* Shared memory region ids (import apertures). */
#define VIRTIO_XPMEM_SHM_RW			0
#define VIRTIO_XPMEM_SHM_RO			1

/* Limits. */
#define VIRTIO_XPMEM_PAGE_SHIFT			12
#define VIRTIO_XPMEM_PAGE_SIZE			4096
#define VIRTIO_XPMEM_MAX_PAGES			512	/* per FAULT/RESOLVE */
#define VIRTIO_XPMEM_MAXADDR_SIZE		0xffffffffffffffffULL	/* MAKE: to the end */
#define VIRTIO_XPMEM_EVENT_SIZE			40	/* largest event */
#define VIRTIO_XPMEM_NAME_SIZE			64	/* name field, NUL padded */

/* Request opcodes (struct virtio_xpmem_req_hdr.opcode). */
#define VIRTIO_XPMEM_REQ_MAKE			1
#define VIRTIO_XPMEM_REQ_REMOVE			2
#define VIRTIO_XPMEM_REQ_GET			3
#define VIRTIO_XPMEM_REQ_RELEASE		4
#define VIRTIO_XPMEM_REQ_ATTACH			5
#define VIRTIO_XPMEM_REQ_DETACH			6
#define VIRTIO_XPMEM_REQ_FAULT			7
#define VIRTIO_XPMEM_REQ_RESOLVE_REPLY		8
#define VIRTIO_XPMEM_REQ_INVALIDATE		9
#define VIRTIO_XPMEM_REQ_INVALIDATE_ACK		10
#define VIRTIO_XPMEM_REQ_RELEASE_OWNER		11
#define VIRTIO_XPMEM_REQ_NAME			12	/* VIRTIO_XPMEM_F_NAMES */
#define VIRTIO_XPMEM_REQ_SEARCH			13	/* VIRTIO_XPMEM_F_NAMES */

/* Event types (struct virtio_xpmem_event_hdr.event_type). */
#define VIRTIO_XPMEM_EVT_RESOLVE		1
#define VIRTIO_XPMEM_EVT_INVALIDATE		2
#define VIRTIO_XPMEM_EVT_REVOKED		3

/* Status codes (struct virtio_xpmem_resp_hdr.status). */
#define VIRTIO_XPMEM_S_OK			0
#define VIRTIO_XPMEM_S_INVALID			1
#define VIRTIO_XPMEM_S_NOENT			2
#define VIRTIO_XPMEM_S_PERM			3
#define VIRTIO_XPMEM_S_NOSPC			4
#define VIRTIO_XPMEM_S_UNSUPPORTED		5
#define VIRTIO_XPMEM_S_FAULT			6
#define VIRTIO_XPMEM_S_REVOKED			7
#define VIRTIO_XPMEM_S_GONE			8
#define VIRTIO_XPMEM_S_AGAIN			9
#define VIRTIO_XPMEM_S_EXIST			10

/* Flags and permit values. */
#define VIRTIO_XPMEM_GET_RDONLY			1
#define VIRTIO_XPMEM_GET_RDWR			2
#define VIRTIO_XPMEM_GET_F_IPC_OWNER		0x100
#define VIRTIO_XPMEM_PERMIT_MODE		1
#define VIRTIO_XPMEM_PERMIT_MODE_MASK		0777
#define VIRTIO_XPMEM_ATTACH_F_RDONLY		1
#define VIRTIO_XPMEM_FAULT_F_WRITE		1
#define VIRTIO_XPMEM_RESOLVE_F_WRITE		1

/* REVOKED event reasons. */
#define VIRTIO_XPMEM_REVOKE_DEADLINE		1
#define VIRTIO_XPMEM_REVOKE_REMOVED		2
#define VIRTIO_XPMEM_REVOKE_EXPORTER_GONE	3
#define VIRTIO_XPMEM_REVOKE_HOST		4

/* Device configuration space. */
struct virtio_xpmem_config {
	__le32 vm_id;
	__le32 event_size;
	__le32 max_fault_pages;
	__le32 reserved;
	__le64 invalidate_deadline_ms;
};

/* Common headers. */
struct virtio_xpmem_req_hdr {
	__le32 opcode;
	__le32 flags;		/* 0 */
	__le64 owner;		/* non-zero process token */
};

struct virtio_xpmem_resp_hdr {
	__le32 status;
	__le32 reserved;
};

struct virtio_xpmem_event_hdr {
	__le32 event_type;
	__le32 reserved;
};

/* Request bodies and response bodies. */
struct virtio_xpmem_make_req {
	__le64 vaddr;
	__le64 size;
	__le32 permit_type;	/* VIRTIO_XPMEM_PERMIT_MODE */
	__le32 uid;
	__le64 permit_value;	/* mode bits, <= 0777 */
	__le32 gid;
	__le32 reserved;
};

struct virtio_xpmem_make_resp {
	__le64 segid;
};

struct virtio_xpmem_remove_req {
	__le64 segid;
};

struct virtio_xpmem_get_req {
	__le64 segid;
	__le32 flags;		/* VIRTIO_XPMEM_GET_RDONLY or _RDWR */
	__le32 permit_type;	/* VIRTIO_XPMEM_PERMIT_MODE */
	__le64 permit_value;	/* 0 */
	__le32 uid;
	__le32 gid;
};

struct virtio_xpmem_get_resp {
	__le64 apid;
};

struct virtio_xpmem_release_req {
	__le64 apid;
};

struct virtio_xpmem_attach_req {
	__le64 apid;
	__le64 offset;
	__le64 size;
	__le32 flags;		/* VIRTIO_XPMEM_ATTACH_F_RDONLY */
	__le32 reserved;
};

struct virtio_xpmem_attach_resp {
	__le64 attach_id;
	__le64 aperture_offset;
	__le32 shm_id;		/* VIRTIO_XPMEM_SHM_RW or _RO */
	__le32 reserved;
};

struct virtio_xpmem_detach_req {
	__le64 attach_id;
};

struct virtio_xpmem_fault_req {
	__le64 attach_id;
	__le64 page_index;
	__le32 npages;
	__le32 flags;		/* VIRTIO_XPMEM_FAULT_F_WRITE */
};

struct virtio_xpmem_fault_resp {
	__le32 mapped;		/* 0: retry the fault */
	__le32 reserved;
};

/* Followed by npages x __le64 guest-physical page addresses. */
struct virtio_xpmem_resolve_reply_req {
	__le64 resolve_id;
	__le32 npages;
	__le32 status;
};

struct virtio_xpmem_invalidate_req {
	__le64 segid;
	__le64 vaddr;
	__le64 len;
};

/*
 * INVALIDATE response body. targets: importer attachments that had a mapped
 * slot in the range and were sent an INVALIDATE event (one that became moot
 * because the importer detached or its VM left still counts); revoked: how
 * many of those were revoked by force at the deadline.
 */
struct virtio_xpmem_invalidate_resp {
	__le32 targets;
	__le32 revoked;
};

struct virtio_xpmem_invalidate_ack_req {
	__le64 invalidation_id;
};

/*
 * NAME (VIRTIO_XPMEM_F_NAMES): name a segment of the caller. name holds 1 to
 * VIRTIO_XPMEM_NAME_SIZE - 1 graphic ASCII bytes (0x21..0x7e), then NULs.
 */
struct virtio_xpmem_name_req {
	__le64 segid;
	__u8 name[VIRTIO_XPMEM_NAME_SIZE];
};

/* SEARCH (VIRTIO_XPMEM_F_NAMES): the segment with this name. */
struct virtio_xpmem_search_req {
	__u8 name[VIRTIO_XPMEM_NAME_SIZE];
};

struct virtio_xpmem_search_resp {
	__le64 segid;
};

/* Event bodies. */
struct virtio_xpmem_resolve_event {
	__le64 resolve_id;
	__le64 segid;
	__le64 vaddr;
	__le32 npages;
	__le32 flags;		/* VIRTIO_XPMEM_RESOLVE_F_WRITE */
};

struct virtio_xpmem_invalidate_event {
	__le64 invalidation_id;
	__le64 attach_id;
	__le64 page_index;
	__le64 npages;
};

struct virtio_xpmem_revoked_event {
	__le64 attach_id;
	__le64 page_index;
	__le64 npages;
	__le32 reason;		/* VIRTIO_XPMEM_REVOKE_* */
	__le32 reserved;
};

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(struct virtio_xpmem_config) == 24, "config layout");
_Static_assert(sizeof(struct virtio_xpmem_req_hdr) == 16, "req_hdr layout");
_Static_assert(sizeof(struct virtio_xpmem_make_req) == 40, "make_req layout");
_Static_assert(sizeof(struct virtio_xpmem_get_req) == 32, "get_req layout");
_Static_assert(sizeof(struct virtio_xpmem_attach_resp) == 24, "attach_resp layout");
_Static_assert(sizeof(struct virtio_xpmem_invalidate_resp) == 8,
	       "invalidate_resp layout");
_Static_assert(sizeof(struct virtio_xpmem_name_req) == 72, "name_req layout");
_Static_assert(sizeof(struct virtio_xpmem_search_req) == 64,
	       "search_req layout");
_Static_assert(sizeof(struct virtio_xpmem_resolve_event) +
	       sizeof(struct virtio_xpmem_event_hdr) == VIRTIO_XPMEM_EVENT_SIZE,
	       "event size");
#endif

#endif /* _VIRTIO_XPMEM_H */
