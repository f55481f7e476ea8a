// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-xpmem guest driver: the virtio transport side.
 *
 * requestq carries driver requests; each chain is [request header + body]
 * (+ optional second readable buffer) then [response header + body]. The
 * buffer token is the struct xpmem_req itself, so the used ring can return
 * chains in any order (FAULT and INVALIDATE complete late) and each waiter
 * is woken through its own completion.
 *
 * eventq is kept stocked with XPMEM_NR_EVENT_BUFS buffers; every used buffer
 * is handled by its own work item and re-posted when the handler is done.
 */

#include <linux/delay.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/virtio_ids.h>

#include "xpmem_priv.h"

/* Statuses outside the device's range, for malformed responses. */
#define XPMEM_S_SHORT	0xffffffffu

static DEFINE_MUTEX(xpmem_cur_lock);
static struct xpmem_dev *xpmem_cur;	/* the bound device, one per guest */

static void xpmem_misbehave_apply(struct xpmem_dev *xd, int old, int mode);

static void xpmem_dev_release(struct kref *ref)
{
	struct xpmem_dev *xd = container_of(ref, struct xpmem_dev, ref);

	WARN_ON(!xa_empty(&xd->segs));
	WARN_ON(!xa_empty(&xd->atts));
	/* Segments and attachments return their slots before they go. */
	WARN_ON(xd->inval_budget.free != xd->inval_budget.size ||
		xd->fault_budget.free != xd->fault_budget.size);
	xa_destroy(&xd->segs);
	xa_destroy(&xd->atts);
	kfree(xd->inval_budget.keys);
	kfree(xd->fault_budget.keys);
	kfree(xd);
}

struct xpmem_dev *xpmem_dev_get(void)
{
	struct xpmem_dev *xd;

	mutex_lock(&xpmem_cur_lock);
	xd = xpmem_cur;
	if (xd)
		kref_get(&xd->ref);
	mutex_unlock(&xpmem_cur_lock);
	return xd;
}

void xpmem_dev_put(struct xpmem_dev *xd)
{
	if (xd)
		kref_put(&xd->ref, xpmem_dev_release);
}

struct xpmem_req *xpmem_req_alloc(gfp_t gfp)
{
	return kzalloc(sizeof(struct xpmem_req), gfp);
}

/*
 * (Re)initialise a request. Embedded requests are reused; their previous use
 * must have completed (they are only ever waited for uninterruptibly).
 */
void xpmem_req_init(struct xpmem_req *req, u32 opcode, u64 owner,
		    unsigned int body_len, unsigned int resp_body_len)
{
	kref_init(&req->ref);
	init_completion(&req->done);
	req->err = 0;
	req->resp_len = 0;
	req->extra = NULL;
	req->extra_len = 0;
	req->on_done = NULL;
	memset(&req->out, 0, sizeof(req->out));
	memset(&req->in, 0, sizeof(req->in));
	req->out.hdr.opcode = cpu_to_le32(opcode);
	req->out.hdr.owner = cpu_to_le64(owner);
	req->out_len = sizeof(req->out.hdr) + body_len;
	req->in_len = sizeof(req->in.hdr) + resp_body_len;
}

static void xpmem_req_release(struct kref *ref)
{
	struct xpmem_req *req = container_of(ref, struct xpmem_req, ref);

	if (!req->embedded)
		kfree(req);
}

void xpmem_req_put(struct xpmem_req *req)
{
	kref_put(&req->ref, xpmem_req_release);
}

/*
 * Make @req available to the device. The device holds its own reference
 * until the chain comes back (or is detached when the device goes away), so
 * a killable waiter may give up and drop its reference early.
 */
int xpmem_req_submit(struct xpmem_dev *xd, struct xpmem_req *req)
{
	struct scatterlist out, extra, in, *sgs[3];
	unsigned int nout = 0;
	unsigned long flags;
	bool notify;
	int err;

	sg_init_one(&out, &req->out, req->out_len);
	sgs[nout++] = &out;
	if (req->extra_len) {
		sg_init_one(&extra, req->extra, req->extra_len);
		sgs[nout++] = &extra;
	}
	sg_init_one(&in, &req->in, req->in_len);
	sgs[nout] = &in;

	kref_get(&req->ref);
	for (;;) {
		spin_lock_irqsave(&xd->reqq_lock, flags);
		if (xd->broken) {
			err = -ENODEV;
			break;
		}
		err = virtqueue_add_sgs(xd->reqq, sgs, nout, 1, req,
					GFP_ATOMIC);
		if (err != -ENOSPC)
			break;
		spin_unlock_irqrestore(&xd->reqq_lock, flags);
		wait_event(xd->reqq_wait, READ_ONCE(xd->broken) ||
			   READ_ONCE(xd->reqq->num_free) >= nout + 1);
	}
	if (err) {
		spin_unlock_irqrestore(&xd->reqq_lock, flags);
		/* The caller still holds its reference: this never frees. */
		kref_put(&req->ref, xpmem_req_release);
		return err;
	}
	notify = virtqueue_kick_prepare(xd->reqq);
	spin_unlock_irqrestore(&xd->reqq_lock, flags);
	if (notify)
		virtqueue_notify(xd->reqq);
	return 0;
}

/*
 * The device gave @req back (or went away: @req->err is set). The waiter may
 * free the container of an embedded request (a resolve job, a segment) as
 * soon as it is woken, so for those the device's reference is dropped (it
 * never frees them) and on_done read first, and the wake-up, or the callback
 * that owns the request from then on, is the last access. A heap request
 * stays alive through the device's reference until after the wake-up.
 */
static void xpmem_req_finish(struct xpmem_req *req)
{
	void (*on_done)(struct xpmem_req *req) = req->on_done;

	if (req->embedded) {
		xpmem_req_put(req);
		if (on_done)
			on_done(req);
		else
			complete(&req->done);
		return;
	}
	if (on_done)
		on_done(req);
	complete(&req->done);
	xpmem_req_put(req);
}

/* Take a slot for @key if the pool and the key's share allow. */
static bool xpmem_budget_try(struct xpmem_budget *b, unsigned long key)
{
	struct xpmem_budget_key *e, *unused = NULL;
	unsigned long flags;
	bool ok = false;
	unsigned int i;

	spin_lock_irqsave(&b->lock, flags);
	if (!b->free)
		goto out;
	for (i = 0; i < b->size; i++) {
		e = &b->keys[i];
		if (e->held && e->key == key)
			break;
		if (!e->held && !unused)
			unused = e;
	}
	if (i == b->size) {
		/* One entry per slot: a free slot means a free entry. */
		if (WARN_ON_ONCE(!unused))
			goto out;
		e = unused;
		e->key = key;
	}
	if (e->held >= b->per_key)
		goto out;
	e->held++;
	b->free--;
	ok = true;
out:
	spin_unlock_irqrestore(&b->lock, flags);
	return ok;
}

/*
 * Take a deferred-request slot for process @key, waiting while the pool is
 * empty or the process holds its share. The slots are returned by the
 * request's completion (FAULT) or after it (INVALIDATE), never earlier.
 */
int xpmem_budget_get(struct xpmem_budget *b, unsigned long key, bool killable)
{
	if (killable)
		return wait_event_killable(b->wait, xpmem_budget_try(b, key));
	wait_event(b->wait, xpmem_budget_try(b, key));
	return 0;
}

/* Return a slot of @key; any context. */
void xpmem_budget_put(struct xpmem_budget *b, unsigned long key)
{
	unsigned long flags;
	unsigned int i;

	spin_lock_irqsave(&b->lock, flags);
	for (i = 0; i < b->size; i++) {
		if (b->keys[i].held && b->keys[i].key == key) {
			b->keys[i].held--;
			b->free++;
			break;
		}
	}
	WARN_ON_ONCE(i == b->size);
	spin_unlock_irqrestore(&b->lock, flags);
	wake_up(&b->wait);
}

static int xpmem_budget_init(struct xpmem_budget *b, unsigned int size)
{
	spin_lock_init(&b->lock);
	init_waitqueue_head(&b->wait);
	b->size = size;
	b->free = size;
	/* One process gets a quarter: three others can still make progress. */
	b->per_key = max(1u, size / 4);
	b->keys = kcalloc(size, sizeof(*b->keys), GFP_KERNEL);
	return b->keys ? 0 : -ENOMEM;
}

int xpmem_req_wait(struct xpmem_req *req, bool killable)
{
	if (killable) {
		if (wait_for_completion_killable(&req->done))
			return -EINTR;
	} else {
		wait_for_completion(&req->done);
	}
	return req->err;
}

int xpmem_req_call(struct xpmem_dev *xd, struct xpmem_req *req)
{
	int err = xpmem_req_submit(xd, req);

	if (err)
		return err;
	return xpmem_req_wait(req, false);
}

/* The device's status, or XPMEM_S_SHORT if it wrote too little. */
u32 xpmem_req_status(const struct xpmem_req *req, unsigned int need_body)
{
	u32 status;

	if (req->resp_len < sizeof(req->in.hdr))
		return XPMEM_S_SHORT;
	status = le32_to_cpu(req->in.hdr.status);
	if (status == VIRTIO_XPMEM_S_OK &&
	    req->resp_len < sizeof(req->in.hdr) + need_body)
		return XPMEM_S_SHORT;
	return status;
}

int xpmem_status_to_errno(u32 status)
{
	switch (status) {
	case VIRTIO_XPMEM_S_OK:
		return 0;
	case VIRTIO_XPMEM_S_INVALID:
		return -EINVAL;
	case VIRTIO_XPMEM_S_NOENT:
	case VIRTIO_XPMEM_S_GONE:
		return -ENOENT;
	case VIRTIO_XPMEM_S_PERM:
		return -EACCES;
	case VIRTIO_XPMEM_S_NOSPC:
		return -ENOMEM;
	case VIRTIO_XPMEM_S_UNSUPPORTED:
		return -EOPNOTSUPP;
	case VIRTIO_XPMEM_S_FAULT:
		return -EFAULT;
	case VIRTIO_XPMEM_S_REVOKED:
		return -EIO;
	case VIRTIO_XPMEM_S_AGAIN:
		return -EAGAIN;	/* backing off after a forced revocation */
	case VIRTIO_XPMEM_S_EXIST:
		return -EEXIST;
	default:
		return -EIO;	/* malformed response */
	}
}

static void xpmem_reqq_done(struct virtqueue *vq)
{
	struct xpmem_dev *xd = vq->vdev->priv;
	struct xpmem_req *req;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&xd->reqq_lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len)) != NULL) {
			/* Never trust the length beyond what was offered. */
			req->resp_len = min_t(u32, len, req->in_len);
			xpmem_req_finish(req);
		}
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&xd->reqq_lock, flags);
	wake_up(&xd->reqq_wait);
}

/* Add @eb to eventq; under evq_lock. Returns whether to notify. */
static bool xpmem_evbuf_add_locked(struct xpmem_dev *xd,
				   struct xpmem_evbuf *eb)
{
	struct scatterlist sg;
	int err;

	if (xd->broken)
		return false;
	sg_init_one(&sg, eb->data, xd->evbuf_size);
	err = virtqueue_add_inbuf(xd->evq, &sg, 1, eb, GFP_ATOMIC);
	if (err) {
		dev_warn_ratelimited(&xd->vdev->dev,
				     "cannot re-post event buffer: %d\n", err);
		return false;
	}
	return virtqueue_kick_prepare(xd->evq);
}

/* (Re-)post an event buffer; test_misbehave=no_refill parks it instead. */
static void xpmem_evbuf_post(struct xpmem_dev *xd, struct xpmem_evbuf *eb)
{
	unsigned long flags;
	bool notify = false;

	spin_lock_irqsave(&xd->evq_lock, flags);
	if (xpmem_misbehaving(XPMEM_MISBEHAVE_NO_REFILL) && !xd->broken) {
		eb->parked = true;
		atomic64_inc(&xpmem_stats.evbufs_parked);
	} else {
		notify = xpmem_evbuf_add_locked(xd, eb);
	}
	spin_unlock_irqrestore(&xd->evq_lock, flags);
	if (notify)
		virtqueue_notify(xd->evq);
}

/* Post every buffer test_misbehave=no_refill kept back. */
static void xpmem_evbuf_unpark(struct xpmem_dev *xd)
{
	unsigned long flags;
	bool notify = false;
	unsigned int i;

	spin_lock_irqsave(&xd->evq_lock, flags);
	for (i = 0; i < XPMEM_NR_EVENT_BUFS; i++) {
		struct xpmem_evbuf *eb = xd->evbufs[i];

		if (!eb || !eb->parked)
			continue;
		eb->parked = false;
		atomic64_dec(&xpmem_stats.evbufs_parked);
		notify |= xpmem_evbuf_add_locked(xd, eb);
	}
	spin_unlock_irqrestore(&xd->evq_lock, flags);
	if (notify)
		virtqueue_notify(xd->evq);
}

static void xpmem_evq_done(struct virtqueue *vq)
{
	struct xpmem_dev *xd = vq->vdev->priv;
	struct xpmem_evbuf *eb;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&xd->evq_lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((eb = virtqueue_get_buf(vq, &len)) != NULL) {
			/* test_misbehave=bad_evbufs: the device gave one back. */
			if ((void *)eb == (void *)xd) {
				xd->bad_evbufs_out--;
				continue;
			}
			/* Removal flushes evwq after setting @broken. */
			if (xd->broken)
				continue;
			eb->len = min_t(u32, len, xd->evbuf_size);
			queue_work(xd->evwq, &eb->work);
		}
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&xd->evq_lock, flags);
}

static void xpmem_event_work(struct work_struct *work)
{
	struct xpmem_evbuf *eb = container_of(work, struct xpmem_evbuf, work);
	struct xpmem_dev *xd = eb->xd;
	const struct virtio_xpmem_event_hdr *hdr = (const void *)eb->data;
	const void *body = eb->data + sizeof(*hdr);
	bool replying = false;
	u32 blen, type;

	if (eb->len < sizeof(*hdr)) {
		dev_warn_ratelimited(&xd->vdev->dev, "short event (%u bytes)\n",
				     eb->len);
		goto repost;
	}
	blen = eb->len - sizeof(*hdr);
	type = le32_to_cpu(hdr->event_type);
	switch (type) {
	case VIRTIO_XPMEM_EVT_RESOLVE:
		if (blen < sizeof(struct virtio_xpmem_resolve_event))
			goto short_body;
		replying = xpmem_handle_resolve(eb, body);
		break;
	case VIRTIO_XPMEM_EVT_INVALIDATE:
		if (blen < sizeof(struct virtio_xpmem_invalidate_event))
			goto short_body;
		replying = xpmem_handle_invalidate(eb, body);
		break;
	case VIRTIO_XPMEM_EVT_REVOKED:
		if (blen < sizeof(struct virtio_xpmem_revoked_event))
			goto short_body;
		xpmem_handle_revoked(xd, body);
		break;
	default:
		dev_warn_ratelimited(&xd->vdev->dev, "unknown event type %u\n",
				     type);
		break;
	}
	goto repost;
short_body:
	dev_warn_ratelimited(&xd->vdev->dev, "event %u too short (%u bytes)\n",
			     type, eb->len);
repost:
	/* A buffer whose reply is in flight returns when the reply completes. */
	if (!replying)
		xpmem_evbuf_post(xd, eb);
}

/* Completion of an event buffer's own reply (interrupt context). */
void xpmem_evbuf_reply_done(struct xpmem_req *req)
{
	struct xpmem_evbuf *eb = container_of(req, struct xpmem_evbuf, reply);

	xpmem_evbuf_post(eb->xd, eb);
}

/* ---- test_misbehave: a hostile guest on purpose (tests only) ---- */

int xpmem_misbehave = XPMEM_MISBEHAVE_OFF;

static const char * const xpmem_misbehave_names[] = {
	[XPMEM_MISBEHAVE_OFF] = "off",
	[XPMEM_MISBEHAVE_NO_ACK] = "no_ack",
	[XPMEM_MISBEHAVE_NO_REFILL] = "no_refill",
	[XPMEM_MISBEHAVE_BAD_EVBUFS] = "bad_evbufs",
	[XPMEM_MISBEHAVE_NO_RESOLVE] = "no_resolve",
};

const char *xpmem_misbehave_name(void)
{
	return xpmem_misbehave_names[READ_ONCE(xpmem_misbehave)];
}

/* How long bad_evbufs keeps posting after it was switched on. */
#define XPMEM_BAD_EVBUFS_SECS	30

/*
 * Post event buffers the device must refuse, as fast as it gives them back:
 * alternately a device-readable buffer and a writable one shorter than any
 * event (xd->bad_evbuf: in @xd, which outlives the device's reset, so the
 * device may write into it whenever). Their token is @xd itself, which the
 * eventq callback drops. Stops
 * after XPMEM_BAD_EVBUFS_SECS, or when the mode is switched off (the thread
 * then idles until it is stopped).
 */
static int xpmem_bad_evbufs_thread(void *arg)
{
	struct xpmem_dev *xd = arg;
	unsigned long end = jiffies + XPMEM_BAD_EVBUFS_SECS * HZ;
	struct scatterlist sg;
	unsigned long flags;
	u64 posted = 0;
	bool notify, readable = false;
	int err;

	while (!kthread_should_stop()) {
		if (!xpmem_misbehaving(XPMEM_MISBEHAVE_BAD_EVBUFS) ||
		    time_after(jiffies, end)) {
			schedule_timeout_interruptible(HZ / 10);
			continue;
		}
		sg_init_one(&sg, xd->bad_evbuf, readable ?
			    sizeof(xd->bad_evbuf) : 1);
		notify = false;
		spin_lock_irqsave(&xd->evq_lock, flags);
		if (xd->broken) {
			err = -ENODEV;
		} else if (xd->bad_evbufs_out + XPMEM_NR_EVENT_BUFS >=
			   virtqueue_get_vring_size(xd->evq)) {
			/* Leave room for every real buffer to come back. */
			err = -ENOSPC;
		} else {
			if (readable)
				err = virtqueue_add_outbuf(xd->evq, &sg, 1, xd,
							   GFP_ATOMIC);
			else
				err = virtqueue_add_inbuf(xd->evq, &sg, 1, xd,
							  GFP_ATOMIC);
			if (!err)
				xd->bad_evbufs_out++;
			notify = virtqueue_kick_prepare(xd->evq);
		}
		spin_unlock_irqrestore(&xd->evq_lock, flags);
		if (notify)
			virtqueue_notify(xd->evq);
		if (!err) {
			posted++;
			readable = !readable;
			atomic64_inc(&xpmem_stats.bad_evbufs);
		} else {
			/* No room: let the device give some back. */
			usleep_range(200, 400);
		}
		cond_resched();
	}
	dev_info(&xd->vdev->dev, "test_misbehave: posted %llu bad event buffers\n",
		 posted);
	return 0;
}

/* The mode changed from @old to @mode; under xpmem_cur_lock. */
static void xpmem_misbehave_apply(struct xpmem_dev *xd, int old, int mode)
{
	struct task_struct *t;

	if (old == XPMEM_MISBEHAVE_NO_REFILL && mode != old)
		xpmem_evbuf_unpark(xd);
	if (xd->bad_evbufs_task && mode != XPMEM_MISBEHAVE_BAD_EVBUFS) {
		kthread_stop(xd->bad_evbufs_task);
		put_task_struct(xd->bad_evbufs_task);
		xd->bad_evbufs_task = NULL;
	}
	if (mode == XPMEM_MISBEHAVE_BAD_EVBUFS && !xd->bad_evbufs_task) {
		t = kthread_run(xpmem_bad_evbufs_thread, xd, "xpmem_bad_evbufs");
		if (IS_ERR(t)) {
			dev_warn(&xd->vdev->dev, "test_misbehave: no thread: %ld\n",
				 PTR_ERR(t));
			return;
		}
		get_task_struct(t);
		xd->bad_evbufs_task = t;
	}
}

static int xpmem_misbehave_set(const char *val, const struct kernel_param *kp)
{
	int mode, old;

	mode = sysfs_match_string(xpmem_misbehave_names, val);
	if (mode < 0)
		return -EINVAL;
	mutex_lock(&xpmem_cur_lock);
	old = READ_ONCE(xpmem_misbehave);
	WRITE_ONCE(xpmem_misbehave, mode);
	if (xpmem_cur) {
		if (mode != old)
			dev_warn(&xpmem_cur->vdev->dev, "test_misbehave: %s -> %s\n",
				 xpmem_misbehave_names[old],
				 xpmem_misbehave_names[mode]);
		xpmem_misbehave_apply(xpmem_cur, old, mode);
	}
	mutex_unlock(&xpmem_cur_lock);
	return 0;
}

static int xpmem_misbehave_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n", xpmem_misbehave_name());
}

static const struct kernel_param_ops xpmem_misbehave_ops = {
	.set = xpmem_misbehave_set,
	.get = xpmem_misbehave_get,
};

module_param_cb(test_misbehave, &xpmem_misbehave_ops, NULL, 0644);
MODULE_PARM_DESC(test_misbehave,
		 "TESTS ONLY: make this guest a hostile peer: off (default), "
		 "no_ack, no_refill, bad_evbufs, no_resolve");

static int xpmem_read_config(struct xpmem_dev *xd)
{
	struct virtio_device *vdev = xd->vdev;

	virtio_cread_le(vdev, struct virtio_xpmem_config, vm_id, &xd->vm_id);
	virtio_cread_le(vdev, struct virtio_xpmem_config, event_size,
			&xd->event_size);
	virtio_cread_le(vdev, struct virtio_xpmem_config, max_fault_pages,
			&xd->max_fault_pages);
	virtio_cread_le(vdev, struct virtio_xpmem_config,
			invalidate_deadline_ms, &xd->deadline_ms);

	if (xd->event_size > XPMEM_MAX_EVENT_SIZE) {
		dev_err(&vdev->dev, "event_size %u too large (max %u)\n",
			xd->event_size, XPMEM_MAX_EVENT_SIZE);
		return -EINVAL;
	}
	xd->evbuf_size = max_t(u32, xd->event_size, VIRTIO_XPMEM_EVENT_SIZE);
	if (!xd->max_fault_pages)
		xd->max_fault_pages = 1;
	xd->max_fault_pages = min_t(u32, xd->max_fault_pages,
				    VIRTIO_XPMEM_MAX_PAGES);
	return 0;
}

static void xpmem_shm_unmap(struct xpmem_dev *xd)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(xd->shm); i++) {
		if (xd->shm[i].wb)
			memunmap(xd->shm[i].wb);
		xd->shm[i].wb = NULL;
	}
}

/*
 * Find the import apertures. They are not RAM, so without a memtype
 * reservation x86 PAT would make every user mapping of them UC-. A WB
 * memremap() of the whole window reserves the write-back memtype, which
 * vmf_insert_pfn_prot() then finds and keeps.
 */
static void xpmem_shm_setup(struct xpmem_dev *xd)
{
	struct virtio_device *vdev = xd->vdev;
	struct virtio_shm_region r;
	int id;

	for (id = VIRTIO_XPMEM_SHM_RW; id <= VIRTIO_XPMEM_SHM_RO; id++) {
		if (id == VIRTIO_XPMEM_SHM_RO &&
		    !virtio_has_feature(vdev, VIRTIO_XPMEM_F_RO_APERTURE))
			continue;
		if (!virtio_get_shm_region(vdev, &r, id)) {
			dev_warn(&vdev->dev, "shared memory region %d missing\n",
				 id);
			continue;
		}
		if (!r.len || !PAGE_ALIGNED(r.addr) || !PAGE_ALIGNED(r.len) ||
		    r.addr + r.len < r.addr) {
			dev_warn(&vdev->dev,
				 "shared memory region %d unusable (%#llx+%#llx)\n",
				 id, r.addr, r.len);
			continue;
		}
		xd->shm[id].present = true;
		xd->shm[id].addr = r.addr;
		xd->shm[id].len = r.len;
		xd->shm[id].wb = memremap(r.addr, r.len, MEMREMAP_WB);
		if (!xd->shm[id].wb)
			dev_warn(&vdev->dev,
				 "cannot reserve WB for region %d: mappings will be uncached\n",
				 id);
		dev_info(&vdev->dev, "aperture %d: %#llx, %llu MiB\n", id,
			 r.addr, r.len >> 20);
	}
}

static void xpmem_free_evbufs(struct xpmem_dev *xd)
{
	int i;

	for (i = 0; i < XPMEM_NR_EVENT_BUFS; i++) {
		kfree(xd->evbufs[i]);
		xd->evbufs[i] = NULL;
	}
}

static int xpmem_probe(struct virtio_device *vdev)
{
	vq_callback_t *callbacks[] = { xpmem_reqq_done, xpmem_evq_done };
	static const char * const names[] = { "requestq", "eventq" };
	struct virtqueue *vqs[VIRTIO_XPMEM_NUM_QUEUES];
	struct xpmem_dev *xd;
	unsigned int i, nbufs;
	unsigned long flags;
	int err;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "device has no config space\n");
		return -EINVAL;
	}

	mutex_lock(&xpmem_cur_lock);
	if (xpmem_cur) {
		mutex_unlock(&xpmem_cur_lock);
		dev_err(&vdev->dev,
			"only one virtio-xpmem device per guest is supported\n");
		return -EBUSY;
	}
	mutex_unlock(&xpmem_cur_lock);

	xd = kzalloc(sizeof(*xd), GFP_KERNEL);
	if (!xd)
		return -ENOMEM;
	kref_init(&xd->ref);
	xd->vdev = vdev;
	xd->drv_token = xpmem_new_token();
	spin_lock_init(&xd->reqq_lock);
	spin_lock_init(&xd->evq_lock);
	init_waitqueue_head(&xd->reqq_wait);
	xa_init(&xd->segs);
	xa_init(&xd->atts);
	mutex_init(&xd->att_list_lock);
	vdev->priv = xd;

	err = xpmem_read_config(xd);
	if (err)
		goto err_free;
	xpmem_shm_setup(xd);

	err = virtio_find_vqs(vdev, VIRTIO_XPMEM_NUM_QUEUES, vqs, callbacks,
			      names, NULL);
	if (err)
		goto err_shm;
	xd->reqq = vqs[VIRTIO_XPMEM_QUEUE_REQUEST];
	xd->evq = vqs[VIRTIO_XPMEM_QUEUE_EVENT];
	/*
	 * FAULT and INVALIDATE use 2 descriptors each: a quarter of the ring
	 * in requests keeps half of the descriptors for everything else,
	 * which needs at most 3 (RESOLVE_REPLY) + 2 (INVALIDATE_ACK).
	 */
	if (virtqueue_get_vring_size(xd->reqq) < 10) {
		dev_err(&vdev->dev, "requestq too small (%u)\n",
			virtqueue_get_vring_size(xd->reqq));
		err = -EINVAL;
		goto err_vqs;
	}
	/*
	 * A quarter of the ring in deferred chains, half of them for
	 * INVALIDATEs, half for FAULTs: neither kind waits for the other.
	 */
	i = virtqueue_get_vring_size(xd->reqq) / 4;
	err = xpmem_budget_init(&xd->inval_budget, i / 2);
	if (!err)
		err = xpmem_budget_init(&xd->fault_budget, i - i / 2);
	if (err)
		goto err_budget;

	err = -ENOMEM;
	xd->evwq = alloc_workqueue("xpmem_event",
				   WQ_UNBOUND | WQ_MEM_RECLAIM | WQ_HIGHPRI, 0);
	if (!xd->evwq)
		goto err_budget;
	xd->reswq = alloc_workqueue("xpmem_resolve",
				    WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!xd->reswq)
		goto err_wq;

	nbufs = min_t(unsigned int, XPMEM_NR_EVENT_BUFS,
		      virtqueue_get_vring_size(xd->evq));
	for (i = 0; i < nbufs; i++) {
		struct xpmem_evbuf *eb;

		eb = kzalloc(sizeof(*eb) + xd->evbuf_size, GFP_KERNEL);
		if (!eb)
			goto err_bufs;
		eb->xd = xd;
		eb->reply.embedded = true;
		INIT_WORK(&eb->work, xpmem_event_work);
		xd->evbufs[i] = eb;
	}

	/*
	 * Spec 7: eventq is filled before DRIVER_OK, and kicked after (even
	 * with test_misbehave=no_refill, which only keeps used buffers back).
	 */
	spin_lock_irqsave(&xd->evq_lock, flags);
	for (i = 0; i < nbufs; i++)
		xpmem_evbuf_add_locked(xd, xd->evbufs[i]);
	spin_unlock_irqrestore(&xd->evq_lock, flags);
	virtio_device_ready(vdev);
	spin_lock_irqsave(&xd->evq_lock, flags);
	virtqueue_kick(xd->evq);
	spin_unlock_irqrestore(&xd->evq_lock, flags);

	mutex_lock(&xpmem_cur_lock);
	xpmem_cur = xd;
	mutex_unlock(&xpmem_cur_lock);

	dev_info(&vdev->dev,
		 "virtio-xpmem: vm %u, %u event buffers, max %u pages/fault, invalidate deadline %llu ms\n",
		 xd->vm_id, nbufs, xd->max_fault_pages, xd->deadline_ms);
	if (READ_ONCE(xpmem_misbehave) != XPMEM_MISBEHAVE_OFF) {
		dev_warn(&vdev->dev, "test_misbehave=%s: this guest misbehaves on purpose\n",
			 xpmem_misbehave_name());
		mutex_lock(&xpmem_cur_lock);
		xpmem_misbehave_apply(xd, XPMEM_MISBEHAVE_OFF,
				      READ_ONCE(xpmem_misbehave));
		mutex_unlock(&xpmem_cur_lock);
	}
	return 0;

err_bufs:
	xpmem_free_evbufs(xd);
	destroy_workqueue(xd->reswq);
err_wq:
	destroy_workqueue(xd->evwq);
err_budget:
	kfree(xd->inval_budget.keys);
	kfree(xd->fault_budget.keys);
err_vqs:
	vdev->config->del_vqs(vdev);
err_shm:
	xpmem_shm_unmap(xd);
err_free:
	vdev->priv = NULL;
	kfree(xd);
	return err;
}

/*
 * Device removal. The device forgets everything on reset (the host revokes
 * this guest's exports from all importers), so local objects only have to
 * stop using the device: every in-flight request completes with -ENODEV and
 * later ones fail at submission. Segments, permits and attachments stay
 * until their files are closed; attachments then fault with SIGBUS.
 */
static void xpmem_remove(struct virtio_device *vdev)
{
	struct xpmem_dev *xd = vdev->priv;
	struct xpmem_req *req;
	unsigned long flags;
	unsigned int i;

	mutex_lock(&xpmem_cur_lock);
	if (xpmem_cur == xd)
		xpmem_cur = NULL;
	if (xd->bad_evbufs_task) {
		kthread_stop(xd->bad_evbufs_task);
		put_task_struct(xd->bad_evbufs_task);
		xd->bad_evbufs_task = NULL;
	}
	mutex_unlock(&xpmem_cur_lock);

	/* Spec 8.11.1: no process mapping of a slot survives the reset. */
	xpmem_kill_all_atts(xd);

	/*
	 * @broken is tested under reqq_lock (submission) and under evq_lock
	 * (re-posting event buffers): set it under both.
	 */
	spin_lock_irqsave(&xd->reqq_lock, flags);
	spin_lock(&xd->evq_lock);
	xd->broken = true;
	spin_unlock(&xd->evq_lock);
	spin_unlock_irqrestore(&xd->reqq_lock, flags);

	virtio_reset_device(vdev);

	spin_lock_irqsave(&xd->reqq_lock, flags);
	while ((req = virtqueue_detach_unused_buf(xd->reqq)) != NULL) {
		req->err = -ENODEV;
		xpmem_req_finish(req);
	}
	spin_unlock_irqrestore(&xd->reqq_lock, flags);
	wake_up_all(&xd->reqq_wait);

	flush_workqueue(xd->evwq);
	flush_workqueue(xd->reswq);
	destroy_workqueue(xd->evwq);
	destroy_workqueue(xd->reswq);

	/* Event buffers are owned by xd->evbufs; the ring only borrows them. */
	while (virtqueue_detach_unused_buf(xd->evq))
		;
	vdev->config->del_vqs(vdev);
	for (i = 0; i < XPMEM_NR_EVENT_BUFS; i++)
		if (xd->evbufs[i] && xd->evbufs[i]->parked)
			atomic64_dec(&xpmem_stats.evbufs_parked);
	xpmem_free_evbufs(xd);
	xpmem_shm_unmap(xd);
	vdev->priv = NULL;
	xpmem_dev_put(xd);
}

static const struct virtio_device_id xpmem_id_table[] = {
	{ VIRTIO_ID_XPMEM, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, xpmem_id_table);

static unsigned int xpmem_features[] = {
	VIRTIO_XPMEM_F_RO_APERTURE,
	VIRTIO_XPMEM_F_NAMES,
};

static struct virtio_driver xpmem_virtio_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.id_table = xpmem_id_table,
	.feature_table = xpmem_features,
	.feature_table_size = ARRAY_SIZE(xpmem_features),
	.probe = xpmem_probe,
	.remove = xpmem_remove,
};

int xpmem_virtio_init(void)
{
	return register_virtio_driver(&xpmem_virtio_driver);
}

void xpmem_virtio_exit(void)
{
	unregister_virtio_driver(&xpmem_virtio_driver);
}
