/* SPDX-License-Identifier: GPL-2.0 */
/*
 * virtio-xpmem guest driver: private definitions.
 *
 * Locking order (outer to inner):
 *   owner->lock (mutex) -> xd->inval_budget (a sleeping wait) -> seg->lock
 *     (mutex) -> xd->reqq_lock (spinlock) -> xd->evq_lock (spinlock)
 *   xd->att_list_lock (mutex) is never held while sending a request.
 *   A budget's spinlock is innermost: nothing is taken or waited for under
 *   it, and it is also taken from the requestq interrupt (a FAULT's slot is
 *   returned when its chain comes back).
 * The exporter's mmap_lock is taken only by the resolve worker, never while
 * holding seg->lock. The importer fault handler runs under the importer's
 * mmap_lock and holds no driver lock while waiting for the device.
 *
 * Reclaim safety: the invalidate callback of a segment can be entered from
 * direct reclaim of any task. Everything it needs is preallocated: the
 * INVALIDATE request is embedded in the segment (one in flight per segment,
 * serialised by seg->lock), and the INVALIDATE_ACK of an importer is embedded
 * in the event buffer that carried the INVALIDATE event. So no allocation
 * can recurse into the notifier while seg->lock is held, and an importer in
 * the same guest can always acknowledge. The ACK is not waited for: its
 * completion re-posts the event buffer. Deferred requests (FAULT,
 * INVALIDATE) are limited to half of the request ring so that the
 * acknowledgements and resolve replies they wait for always find room
 * (spec 8.1.1). The limit is split into two budgets that never wait for each
 * other: INVALIDATEs (taken before seg->lock, uninterruptibly, returned when
 * the INVALIDATE completed) and FAULTs (taken killably, returned by the
 * FAULT's completion, not by its waiter, so a killed waiter keeps its slot
 * until the device gives the chain back). Each budget also caps the slots
 * one process (mm) holds, so no process can take a whole budget, and a
 * process's FAULTs, however slow their exporter, never delay an INVALIDATE.
 *
 * Request lifetime: the interrupt handler's last access to a request is the
 * wake-up of its waiter or, for a request with on_done, the callback (see
 * xpmem_req_finish()), so a waiter may free the container of an embedded
 * request as soon as it is woken.
 */
#ifndef _XPMEM_PRIV_H
#define _XPMEM_PRIV_H

#include <linux/completion.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include <virtio_xpmem.h>

#include "xpmem_uapi.h"

struct seq_file;

#define XPMEM_NR_EVENT_BUFS	64
#define XPMEM_MAX_EVENT_SIZE	4096

/* One request chain on the requestq. */
struct xpmem_req {
	struct kref ref;
	struct completion done;
	bool embedded;		/* part of a longer-lived object: never kfree'd */
	int err;		/* transport error (-ENODEV), 0 otherwise */
	u32 resp_len;		/* bytes written by the device */
	unsigned int out_len;	/* bytes of @out sent */
	unsigned int in_len;	/* bytes of @in offered */
	void *extra;		/* optional second readable buffer */
	unsigned int extra_len;
	/*
	 * Called in interrupt context when the device gives the chain back
	 * (or when the device goes away), before the waiter is woken. An
	 * embedded request with on_done has no waiter: the callback owns it.
	 */
	void (*on_done)(struct xpmem_req *req);
	/* FAULT: the budget slot it holds until the device gives it back. */
	struct xpmem_budget *budget;
	unsigned long budget_key;
	struct {
		struct virtio_xpmem_req_hdr hdr;
		union {
			struct virtio_xpmem_make_req make;
			struct virtio_xpmem_remove_req remove;
			struct virtio_xpmem_get_req get;
			struct virtio_xpmem_release_req release;
			struct virtio_xpmem_attach_req attach;
			struct virtio_xpmem_detach_req detach;
			struct virtio_xpmem_fault_req fault;
			struct virtio_xpmem_resolve_reply_req resolve_reply;
			struct virtio_xpmem_invalidate_req invalidate;
			struct virtio_xpmem_invalidate_ack_req invalidate_ack;
			struct virtio_xpmem_name_req name;
			struct virtio_xpmem_search_req search;
		} body;
	} out;
	struct {
		struct virtio_xpmem_resp_hdr hdr;
		union {
			struct virtio_xpmem_make_resp make;
			struct virtio_xpmem_get_resp get;
			struct virtio_xpmem_attach_resp attach;
			struct virtio_xpmem_fault_resp fault;
			struct virtio_xpmem_invalidate_resp invalidate;
			struct virtio_xpmem_search_resp search;
		} body;
	} in;
};

/* An eventq buffer; the work item handles the event it carries. */
struct xpmem_evbuf {
	struct work_struct work;
	struct xpmem_dev *xd;
	struct xpmem_req reply;	/* INVALIDATE_ACK / fallback RESOLVE_REPLY */
	u32 len;		/* bytes written by the device */
	bool parked;		/* test_misbehave=no_refill kept it; evq_lock */
	u8 data[];
};

/*
 * Slots of deferred requests (spec 8.1.1): @free of a fixed pool, at most
 * @per_key per process. @keys has one entry per slot, so a process that
 * holds a slot always has an entry and a free slot always finds one.
 * Allocation-free: INVALIDATE takes its slot from reclaim.
 */
struct xpmem_budget_key {
	unsigned long key;
	unsigned int held;
};

struct xpmem_budget {
	spinlock_t lock;
	unsigned int size;	/* slots in the pool */
	unsigned int free;
	unsigned int per_key;
	struct xpmem_budget_key *keys;	/* @size entries */
	wait_queue_head_t wait;
};

struct xpmem_dev {
	struct kref ref;
	struct virtio_device *vdev;
	struct virtqueue *reqq;
	struct virtqueue *evq;
	spinlock_t reqq_lock;	/* reqq add/get, @broken */
	spinlock_t evq_lock;	/* evq add/get */
	wait_queue_head_t reqq_wait;	/* room in reqq, or broken */
	/*
	 * Bound the deferred requests in flight so that together they hold
	 * at most half of requestq's descriptors (spec 8.1.1).
	 */
	struct xpmem_budget inval_budget;
	struct xpmem_budget fault_budget;
	bool broken;		/* removed or reset: fail everything */
	u64 drv_token;		/* owner token for replies without an owner */

	u32 vm_id;
	u32 event_size;
	u32 max_fault_pages;
	u64 deadline_ms;

	struct {
		bool present;
		u64 addr;
		u64 len;
		void *wb;	/* memremap(WB): reserves the WB memtype */
	} shm[2];

	struct xpmem_evbuf *evbufs[XPMEM_NR_EVENT_BUFS];
	unsigned int evbuf_size;
	struct workqueue_struct *evwq;	/* event handling, WQ_MEM_RECLAIM */
	struct workqueue_struct *reswq;	/* resolves (may fault pages) */
	struct task_struct *bad_evbufs_task;	/* test_misbehave=bad_evbufs */
	u8 bad_evbuf[8];	/* what it posts (DMA-able: xd is kmalloc'ed) */
	unsigned int bad_evbufs_out;	/* of those, on the ring; evq_lock */

	struct xarray segs;	/* segid -> struct xpmem_seg */
	struct xarray atts;	/* attach_id -> struct xpmem_att */
	struct mutex att_list_lock;
};

/* A process (thread group) using one open file of /dev/xpmem. */
struct xpmem_owner {
	struct list_head node;	/* in xpmem_file.owners */
	pid_t tgid;
	u64 token;
	struct mutex lock;	/* segs, permits */
	struct list_head segs;
	struct list_head permits;
	struct list_head atts;	/* under xd->att_list_lock */
};

struct xpmem_file {
	struct mutex lock;
	struct list_head owners;
	struct xpmem_dev *xd;	/* bound on first device use, holds a ref */
};

struct xpmem_permit {
	struct list_head node;
	u64 apid;
	s64 segid;		/* the segment it was got for */
	bool rdonly;		/* got with XPMEM_RDONLY: attach read-only */
};

/* An exported range of an exporter's address space. */
struct xpmem_seg {
	struct kref ref;
	struct list_head node;	/* in owner->segs */
	struct xpmem_dev *xd;
	u64 segid;		/* 0 once removed; under @lock */
	u64 token;		/* owner token of the exporter */
	unsigned long vaddr;
	unsigned long size;
	struct mm_struct *mm;	/* mmgrab'd */
	struct mmu_interval_notifier notifier;
	struct mutex lock;	/* ordering of RESOLVE_REPLY vs INVALIDATE */
	unsigned long res_lo;	/* hull of resolved addresses, under @lock */
	unsigned long res_hi;
	bool notifier_live;
	struct xpmem_req inv_req;	/* preallocated INVALIDATE */
	char name[VIRTIO_XPMEM_NAME_SIZE];	/* "" or its name; under xd->segs' xa_lock */
};

/* A FAULT answer kept for the retry of a fault that dropped mmap_lock. */
struct xpmem_grant {
	bool valid;
	bool write;
	u32 seq;		/* att->seq when the FAULT was sent */
	u64 idx;		/* page_index of the FAULT */
	int result;		/* pages mapped from idx, or -errno */
};

/* An importer's attachment, backed by one pseudo file/inode. */
struct xpmem_att {
	struct kref ref;
	struct xpmem_dev *xd;
	struct xpmem_owner *owner;	/* under xd->att_list_lock */
	struct list_head node;		/* in owner->atts */
	u64 attach_id;
	u64 token;
	u64 apid;		/* the permit it was attached with */
	u64 npages;
	phys_addr_t base;	/* guest-physical start of its aperture */
	bool rdonly;
	bool detach_sent;	/* under xd->att_list_lock */
	unsigned long uaddr;	/* start of the original mapping */
	struct inode *inode;	/* ihold'd: mapping stays valid */
	/*
	 * @lock orders PTE insertion against invalidation: the fault handler
	 * inserts only under @lock and only if @seq did not change since it
	 * sent its FAULT; invalidation bumps @seq under @lock, then zaps.
	 */
	spinlock_t lock;
	u32 seq;
	bool dead;		/* detached or owner gone: SIGBUS */
	struct xpmem_grant grant;
	unsigned long *mapped;	/* pages the device reported mapped */
	u64 nmapped;
};

/* Counters shown in /proc/xpmem/stats. */
struct xpmem_stats {
	atomic64_t owners;
	atomic64_t segments;
	atomic64_t permits;
	atomic64_t attachments;
	atomic64_t pages_mapped;	/* importer pages mapped by the device */
	atomic64_t inval_sent_inflight;
	atomic64_t inval_recv_inflight;
	atomic64_t resolves_inflight;
	atomic64_t faults_inflight;
	atomic64_t inval_sent;
	atomic64_t inval_targets;	/* importer attachments our INVALIDATEs reached */
	atomic64_t inval_revoked;	/* of those, revoked at the device deadline */
	atomic64_t inval_skipped;
	atomic64_t inval_recv;
	atomic64_t revoked_recv;
	atomic64_t resolves;
	atomic64_t resolved_pages;
	atomic64_t resolve_failures;
	atomic64_t faults;
	atomic64_t fault_pages;
	atomic64_t fault_sigbus;
	/* test_misbehave only */
	atomic64_t evbufs_parked;	/* current: no_refill kept them */
	atomic64_t inval_ignored;	/* no_ack */
	atomic64_t resolves_ignored;	/* no_resolve */
	atomic64_t bad_evbufs;		/* bad_evbufs posted */
};

extern struct xpmem_stats xpmem_stats;
extern unsigned int prefetch_pages;

/*
 * Module parameter test_misbehave (tests only, default off): make this guest
 * a hostile peer, see guest-driver/README.md.
 */
enum xpmem_misbehave {
	XPMEM_MISBEHAVE_OFF,
	XPMEM_MISBEHAVE_NO_ACK,		/* ignore INVALIDATE events: no zap, no ACK */
	XPMEM_MISBEHAVE_NO_REFILL,	/* keep used event buffers off the eventq */
	XPMEM_MISBEHAVE_BAD_EVBUFS,	/* post invalid event buffers in a loop */
	XPMEM_MISBEHAVE_NO_RESOLVE,	/* never answer RESOLVE events */
};

extern int xpmem_misbehave;

static inline bool xpmem_misbehaving(enum xpmem_misbehave mode)
{
	return unlikely(READ_ONCE(xpmem_misbehave) == mode);
}

const char *xpmem_misbehave_name(void);

/* xpmem_main.c */
u64 xpmem_new_token(void);

/* xpmem_virtio.c */
int xpmem_virtio_init(void);
void xpmem_virtio_exit(void);
struct xpmem_dev *xpmem_dev_get(void);
void xpmem_dev_put(struct xpmem_dev *xd);
struct xpmem_req *xpmem_req_alloc(gfp_t gfp);
void xpmem_req_init(struct xpmem_req *req, u32 opcode, u64 owner,
		    unsigned int body_len, unsigned int resp_body_len);
void xpmem_req_put(struct xpmem_req *req);
int xpmem_req_submit(struct xpmem_dev *xd, struct xpmem_req *req);
int xpmem_req_wait(struct xpmem_req *req, bool killable);
int xpmem_budget_get(struct xpmem_budget *b, unsigned long key, bool killable);
void xpmem_budget_put(struct xpmem_budget *b, unsigned long key);
int xpmem_req_call(struct xpmem_dev *xd, struct xpmem_req *req);
void xpmem_evbuf_reply_done(struct xpmem_req *req);
int xpmem_status_to_errno(u32 status);
u32 xpmem_req_status(const struct xpmem_req *req, unsigned int need_body);

/* xpmem_export.c */
long xpmem_ioctl_make(struct xpmem_dev *xd, struct xpmem_owner *owner,
		      struct xpmem_cmd_make __user *uarg);
long xpmem_ioctl_remove(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_remove __user *uarg);
void xpmem_seg_teardown(struct xpmem_seg *seg);
long xpmem_ioctl_name(struct xpmem_dev *xd, struct xpmem_owner *owner,
		      struct xpmem_cmd_name __user *uarg);
long xpmem_ioctl_search(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_search __user *uarg);
void xpmem_show_names(struct seq_file *m, struct xpmem_dev *xd);
bool xpmem_handle_resolve(struct xpmem_evbuf *eb,
			  const struct virtio_xpmem_resolve_event *ev);

/* xpmem_import.c */
int xpmem_fs_init(void);
void xpmem_fs_exit(void);
long xpmem_ioctl_get(struct xpmem_dev *xd, struct xpmem_owner *owner,
		     struct xpmem_cmd_get __user *uarg);
long xpmem_ioctl_release(struct xpmem_dev *xd, struct xpmem_owner *owner,
			 struct xpmem_cmd_release __user *uarg);
long xpmem_ioctl_attach(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_attach __user *uarg);
long xpmem_ioctl_detach(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_detach __user *uarg);
void xpmem_owner_kill_atts(struct xpmem_dev *xd, struct xpmem_owner *owner);
bool xpmem_handle_invalidate(struct xpmem_evbuf *eb,
			     const struct virtio_xpmem_invalidate_event *ev);
void xpmem_kill_all_atts(struct xpmem_dev *xd);
bool xpmem_range_in_att(const struct mmu_notifier_range *range);
void xpmem_handle_revoked(struct xpmem_dev *xd,
			  const struct virtio_xpmem_revoked_event *ev);

#endif /* _XPMEM_PRIV_H */
