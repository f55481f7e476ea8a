// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-xpmem guest driver: the exporter side.
 *
 * Nothing is pinned. Each segment registers an MMU interval notifier over
 * its range of the exporter's address space. When the device asks for pages
 * (RESOLVE event) a worker faults them in with hmm_range_fault() and reports
 * their guest-physical addresses; the RESOLVE_REPLY is made available under
 * seg->lock after checking the notifier sequence, so it is always ordered
 * before the INVALIDATE of any later change to the same range. The notifier
 * sends INVALIDATE and blocks until the device completes it, i.e. until every
 * importer acknowledged or was revoked and the device unmapped its slots:
 * only then may the exporter's kernel free or reuse the page.
 */

#include <linux/hmm.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "xpmem_priv.h"

/* Lookups raced by an invalidation before a resolve gives up. */
#define XPMEM_RESOLVE_ATTEMPTS	16

struct xpmem_resolve_job {
	struct work_struct work;
	struct xpmem_dev *xd;
	u64 resolve_id;
	u64 segid;
	u64 vaddr;
	u32 npages;
	u32 flags;
	struct xpmem_req reply;	/* embedded: a reply is always possible */
};

static void xpmem_seg_release(struct kref *ref)
{
	struct xpmem_seg *seg = container_of(ref, struct xpmem_seg, ref);

	mmdrop(seg->mm);
	xpmem_dev_put(seg->xd);
	kfree(seg);
}

static struct xpmem_seg *xpmem_seg_lookup(struct xpmem_dev *xd, u64 segid)
{
	struct xpmem_seg *seg;

	xa_lock(&xd->segs);
	seg = xa_load(&xd->segs, segid);
	if (seg && !kref_get_unless_zero(&seg->ref))
		seg = NULL;
	xa_unlock(&xd->segs);
	return seg;
}

/* The part of [start, end) that was handed to the device; under seg->lock. */
static bool xpmem_seg_clip(struct xpmem_seg *seg, unsigned long *start,
			   unsigned long *end)
{
	*start = max3(*start, seg->vaddr, seg->res_lo);
	*end = min3(*end, seg->vaddr + seg->size, seg->res_hi);
	return seg->segid && *start < *end;
}

/*
 * Check a completed INVALIDATE and add its counts to the stats. A reply with
 * status OK but too short for the body is a completion of unknown counts:
 * warn and read nothing past the used length (spec 8.8.1).
 */
static void xpmem_inval_account(const struct xpmem_req *req, u64 segid)
{
	const struct virtio_xpmem_invalidate_resp *body = &req->in.body.invalidate;
	u32 status = xpmem_req_status(req, 0);
	u32 targets, revoked;

	if (status != VIRTIO_XPMEM_S_OK) {
		if (status != VIRTIO_XPMEM_S_NOENT)
			pr_warn_ratelimited("xpmem: INVALIDATE of segment %#llx failed: status %u\n",
					    segid, status);
		return;
	}
	if (req->resp_len < sizeof(req->in.hdr) + sizeof(*body)) {
		pr_warn_ratelimited("xpmem: INVALIDATE of segment %#llx: %u-byte reply has no counts\n",
				    segid, req->resp_len);
		return;
	}
	targets = le32_to_cpu(body->targets);
	revoked = le32_to_cpu(body->revoked);
	if (revoked > targets) {
		pr_warn_ratelimited("xpmem: INVALIDATE of segment %#llx: device reports %u revoked of %u targets\n",
				    segid, revoked, targets);
		revoked = targets;
	}
	atomic64_add(targets, &xpmem_stats.inval_targets);
	atomic64_add(revoked, &xpmem_stats.inval_revoked);
}

static bool xpmem_seg_invalidate(struct mmu_interval_notifier *mni,
				 const struct mmu_notifier_range *range,
				 unsigned long cur_seq)
{
	struct xpmem_seg *seg = container_of(mni, struct xpmem_seg, notifier);
	struct xpmem_req *req = &seg->inv_req;
	struct xpmem_dev *xd = seg->xd;
	unsigned long start = range->start, end = range->end;
	int err;

	/*
	 * Waiting for the importers may take up to the device's deadline.
	 * Non-blocking callers (the OOM reaper) get "false" and retry later
	 * or skip this mm, as mmu_interval_notifier_ops documents.
	 */
	if (!mmu_notifier_range_blockable(range))
		return false;

	/*
	 * A process that attached a segment inside its own exported range
	 * (a whole-address-space segment) zaps that attachment while handling
	 * an INVALIDATE event, possibly for this very segment with seg->lock
	 * held: the attachment's aperture pages were never handed out, so
	 * there is nothing to take back and nothing to wait for. The sequence
	 * stays: a resolve in flight (which can only be of other pages) need
	 * not retry, and seg->lock, which set_seq would need, may be held.
	 */
	if (xpmem_range_in_att(range)) {
		atomic64_inc(&xpmem_stats.inval_skipped);
		return true;
	}

	/*
	 * Bump the sequence first: a resolve that looked pages up before this
	 * point will not send them (it checks under seg->lock), so a range
	 * that was never handed out needs no INVALIDATE (spec 8.8.1, 8.9).
	 */
	mutex_lock(&seg->lock);
	mmu_interval_set_seq(mni, cur_seq);
	if (!xpmem_seg_clip(seg, &start, &end)) {
		mutex_unlock(&seg->lock);
		atomic64_inc(&xpmem_stats.inval_skipped);
		return true;
	}
	mutex_unlock(&seg->lock);

	/*
	 * A slot of the INVALIDATE budget, before seg->lock (resolves never
	 * wait for it). It waits only for other INVALIDATEs, each done within
	 * the device's deadline, and at most a quarter of it per process:
	 * no FAULT, however slow its exporter, and no single process can hold
	 * this munmap up.
	 */
	xpmem_budget_get(&xd->inval_budget, (unsigned long)seg->mm, false);
	mutex_lock(&seg->lock);
	start = range->start;
	end = range->end;
	if (!xpmem_seg_clip(seg, &start, &end)) {
		/* Another invalidation covered it meanwhile. */
		mutex_unlock(&seg->lock);
		xpmem_budget_put(&xd->inval_budget, (unsigned long)seg->mm);
		atomic64_inc(&xpmem_stats.inval_skipped);
		return true;
	}
	if (start <= seg->res_lo && end >= seg->res_hi) {
		seg->res_lo = ULONG_MAX;
		seg->res_hi = 0;
	}

	xpmem_req_init(req, VIRTIO_XPMEM_REQ_INVALIDATE, seg->token,
		       sizeof(req->out.body.invalidate),
		       sizeof(req->in.body.invalidate));
	req->out.body.invalidate.segid = cpu_to_le64(seg->segid);
	req->out.body.invalidate.vaddr = cpu_to_le64(start);
	req->out.body.invalidate.len = cpu_to_le64(end - start);

	atomic64_inc(&xpmem_stats.inval_sent);
	atomic64_inc(&xpmem_stats.inval_sent_inflight);
	/* Uninterruptible: the page must not be freed before completion. */
	err = xpmem_req_call(xd, req);
	atomic64_dec(&xpmem_stats.inval_sent_inflight);
	if (!err)
		xpmem_inval_account(req, seg->segid);
	mutex_unlock(&seg->lock);
	/* Waited uninterruptibly: the chain is back, the slot is free. */
	xpmem_budget_put(&xd->inval_budget, (unsigned long)seg->mm);
	return true;
}

static const struct mmu_interval_notifier_ops xpmem_seg_ops = {
	.invalidate = xpmem_seg_invalidate,
};

/* Fill a RESOLVE_REPLY without pages (failure). */
static void xpmem_resolve_fail_init(struct xpmem_req *req, u64 token,
				    u64 resolve_id, u32 status)
{
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_RESOLVE_REPLY, token,
		       sizeof(req->out.body.resolve_reply), 0);
	req->out.body.resolve_reply.resolve_id = cpu_to_le64(resolve_id);
	req->out.body.resolve_reply.npages = 0;
	req->out.body.resolve_reply.status = cpu_to_le32(status);
	atomic64_inc(&xpmem_stats.resolve_failures);
}

/*
 * Fault in [start, start + n pages) of the segment's mm and return in @pfns
 * the hmm pfns, the number of leading usable pages in *@count and the
 * notifier sequence the result is valid for. When the whole window cannot be
 * faulted (it runs past a mapping, or part of it is read-only), only the
 * first page is required and the others are taken if already present.
 */
static int xpmem_seg_fault(struct xpmem_seg *seg, unsigned long start,
			   u32 n, bool write, unsigned long *pfns,
			   u32 *count, unsigned long *seq)
{
	unsigned long req_flags = HMM_PFN_REQ_FAULT |
				  (write ? HMM_PFN_REQ_WRITE : 0);
	unsigned long timeout = jiffies +
				msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	struct hmm_range range = {
		.notifier = &seg->notifier,
		.start = start,
		.end = start + ((unsigned long)n << PAGE_SHIFT),
		.hmm_pfns = pfns,
		.dev_private_owner = NULL,
	};
	bool partial = false;
	u32 i;
	int ret;

	for (;;) {
		if (time_after(jiffies, timeout))
			return -EBUSY;
		if (partial) {
			range.default_flags = 0;
			range.pfn_flags_mask = req_flags;
			memset(pfns, 0, n * sizeof(*pfns));
			pfns[0] = req_flags;
		} else {
			range.default_flags = req_flags;
			range.pfn_flags_mask = 0;
		}
		range.notifier_seq = mmu_interval_read_begin(&seg->notifier);
		mmap_read_lock(seg->mm);
		ret = hmm_range_fault(&range);
		mmap_read_unlock(seg->mm);
		if (ret == -EBUSY)
			continue;
		if ((ret == -EFAULT || ret == -EPERM) && !partial && n > 1) {
			partial = true;
			continue;
		}
		if (ret)
			return ret;
		break;
	}

	for (i = 0; i < n; i++) {
		unsigned long p = pfns[i];

		if (!(p & HMM_PFN_VALID) || (p & HMM_PFN_ERROR))
			break;
		if (write && !(p & HMM_PFN_WRITE))
			break;
	}
	*count = i;
	*seq = range.notifier_seq;
	return i ? 0 : -EFAULT;
}

static void xpmem_resolve_work(struct work_struct *work)
{
	struct xpmem_resolve_job *job =
		container_of(work, struct xpmem_resolve_job, work);
	struct xpmem_dev *xd = job->xd;
	bool write = job->flags & VIRTIO_XPMEM_RESOLVE_F_WRITE;
	struct xpmem_req *req = &job->reply;
	struct xpmem_seg *seg;
	unsigned long *pfns = NULL, seq, start;
	__le64 *gpas = NULL;
	u32 status, count, i, n = job->npages;
	int err, attempts = 0;
	u64 token;

	atomic64_inc(&xpmem_stats.resolves);
	atomic64_inc(&xpmem_stats.resolves_inflight);

	seg = xpmem_seg_lookup(xd, job->segid);
	if (!seg) {
		status = VIRTIO_XPMEM_S_GONE;
		token = xd->drv_token;
		goto fail;
	}
	token = seg->token;
	start = job->vaddr;
	status = VIRTIO_XPMEM_S_INVALID;
	if (!n || n > xd->max_fault_pages || !PAGE_ALIGNED(start) ||
	    start < seg->vaddr || start - seg->vaddr >= seg->size ||
	    ((u64)n << PAGE_SHIFT) > seg->size - (start - seg->vaddr))
		goto fail;

	status = VIRTIO_XPMEM_S_FAULT;
	pfns = kmalloc_array(n, sizeof(*pfns), GFP_KERNEL);
	gpas = kmalloc_array(n, sizeof(*gpas), GFP_KERNEL);
	if (!pfns || !gpas)
		goto fail;

	for (;;) {
		/* The range keeps changing: let the importer fault again. */
		if (++attempts > XPMEM_RESOLVE_ATTEMPTS)
			goto fail;
		if (!mmget_not_zero(seg->mm)) {
			status = VIRTIO_XPMEM_S_GONE;
			goto fail;
		}
		err = xpmem_seg_fault(seg, start, n, write, pfns, &count, &seq);
		mmput(seg->mm);
		if (err)
			goto fail;

		mutex_lock(&seg->lock);
		if (!seg->segid) {
			mutex_unlock(&seg->lock);
			status = VIRTIO_XPMEM_S_GONE;
			goto fail;
		}
		if (!mmu_interval_read_retry(&seg->notifier, seq))
			break;
		mutex_unlock(&seg->lock);
	}

	/* seg->lock held: no invalidation of these pages can start now. */
	for (i = 0; i < count; i++)
		gpas[i] = cpu_to_le64(PFN_PHYS(page_to_pfn(hmm_pfn_to_page(pfns[i]))));
	seg->res_lo = min(seg->res_lo, start);
	seg->res_hi = max(seg->res_hi, start + ((unsigned long)count << PAGE_SHIFT));

	xpmem_req_init(req, VIRTIO_XPMEM_REQ_RESOLVE_REPLY, token,
		       sizeof(req->out.body.resolve_reply), 0);
	req->out.body.resolve_reply.resolve_id = cpu_to_le64(job->resolve_id);
	req->out.body.resolve_reply.npages = cpu_to_le32(count);
	req->out.body.resolve_reply.status = cpu_to_le32(VIRTIO_XPMEM_S_OK);
	req->extra = gpas;
	req->extra_len = count * sizeof(*gpas);
	err = xpmem_req_submit(xd, req);
	mutex_unlock(&seg->lock);
	if (!err) {
		xpmem_req_wait(req, false);
		atomic64_add(count, &xpmem_stats.resolved_pages);
	}
	goto out;

fail:
	xpmem_resolve_fail_init(req, token, job->resolve_id, status);
	xpmem_req_call(xd, req);
out:
	kfree(gpas);
	kfree(pfns);
	if (seg)
		kref_put(&seg->ref, xpmem_seg_release);
	atomic64_dec(&xpmem_stats.resolves_inflight);
	xpmem_dev_put(xd);
	kfree(job);
}

/*
 * RESOLVE event, called from the event worker. The event buffer must go back
 * to the device quickly (INVALIDATE events need buffers), so the work is
 * handed to the resolve workqueue; the job is allocated without reclaim, and
 * if that fails the resolve is refused with the buffer's own request.
 */
bool xpmem_handle_resolve(struct xpmem_evbuf *eb,
			  const struct virtio_xpmem_resolve_event *ev)
{
	struct xpmem_dev *xd = eb->xd;
	struct xpmem_resolve_job *job;

	/* test_misbehave=no_resolve: a hostile exporter never answers. */
	if (xpmem_misbehaving(XPMEM_MISBEHAVE_NO_RESOLVE)) {
		atomic64_inc(&xpmem_stats.resolves_ignored);
		return false;
	}

	job = kmalloc(sizeof(*job), GFP_NOWAIT | __GFP_NOWARN);
	if (!job) {
		/* Refuse it; the buffer returns when the reply completes. */
		xpmem_resolve_fail_init(&eb->reply, xd->drv_token,
					le64_to_cpu(ev->resolve_id),
					VIRTIO_XPMEM_S_FAULT);
		eb->reply.on_done = xpmem_evbuf_reply_done;
		return !xpmem_req_submit(xd, &eb->reply);
	}
	INIT_WORK(&job->work, xpmem_resolve_work);
	job->xd = xd;
	kref_get(&xd->ref);
	job->resolve_id = le64_to_cpu(ev->resolve_id);
	job->segid = le64_to_cpu(ev->segid);
	job->vaddr = le64_to_cpu(ev->vaddr);
	job->npages = le32_to_cpu(ev->npages);
	job->flags = le32_to_cpu(ev->flags);
	job->reply.embedded = true;
	queue_work(xd->reswq, &job->work);
	return false;
}

/*
 * Tear a segment down locally: stop answering for it, remove the notifier
 * (waits for a running invalidate callback) and drop the list's reference.
 * The caller has unlinked it from its owner. If @send_remove, tell the
 * device first so it revokes the importers.
 */
static void xpmem_seg_destroy(struct xpmem_seg *seg, bool send_remove)
{
	struct xpmem_dev *xd = seg->xd;
	struct xpmem_req *req;
	u64 segid = seg->segid;

	if (send_remove && segid) {
		req = xpmem_req_alloc(GFP_KERNEL);
		if (req) {
			xpmem_req_init(req, VIRTIO_XPMEM_REQ_REMOVE, seg->token,
				       sizeof(req->out.body.remove), 0);
			req->out.body.remove.segid = cpu_to_le64(segid);
			xpmem_req_call(xd, req);
			xpmem_req_put(req);
		}
	}
	if (segid)
		xa_cmpxchg(&xd->segs, segid, seg, NULL, 0);

	mutex_lock(&seg->lock);
	seg->segid = 0;
	mutex_unlock(&seg->lock);

	if (seg->notifier_live)
		mmu_interval_notifier_remove(&seg->notifier);
	atomic64_dec(&xpmem_stats.segments);
	kref_put(&seg->ref, xpmem_seg_release);
}

void xpmem_seg_teardown(struct xpmem_seg *seg)
{
	xpmem_seg_destroy(seg, false);
}

long xpmem_ioctl_make(struct xpmem_dev *xd, struct xpmem_owner *owner,
		      struct xpmem_cmd_make __user *uarg)
{
	struct xpmem_cmd_make cmd;
	struct mm_struct *mm = current->mm;
	unsigned long task_size, size;
	struct xpmem_req *req;
	struct xpmem_seg *seg;
	u64 segid;
	u32 status;
	int err;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if (!mm)
		return -EINVAL;
	if (cmd.permit_type != XPMEM_PERMIT_MODE ||
	    (cmd.permit_value & ~(u64)VIRTIO_XPMEM_PERMIT_MODE_MASK))
		return -EINVAL;
	task_size = mm->task_size;
	if (!cmd.size || !PAGE_ALIGNED(cmd.vaddr) || cmd.vaddr >= task_size)
		return -EINVAL;
	if (cmd.size == XPMEM_MAXADDR_SIZE) {
		size = task_size - cmd.vaddr;
	} else {
		if (!PAGE_ALIGNED(cmd.size) || cmd.size > task_size - cmd.vaddr)
			return -EINVAL;
		size = cmd.size;
	}

	seg = kzalloc(sizeof(*seg), GFP_KERNEL);
	if (!seg)
		return -ENOMEM;
	kref_init(&seg->ref);
	mutex_init(&seg->lock);
	INIT_LIST_HEAD(&seg->node);
	seg->xd = xd;
	kref_get(&xd->ref);
	seg->token = owner->token;
	seg->vaddr = cmd.vaddr;
	seg->size = size;
	seg->res_lo = ULONG_MAX;
	seg->res_hi = 0;
	seg->inv_req.embedded = true;
	mmgrab(mm);
	seg->mm = mm;
	atomic64_inc(&xpmem_stats.segments);

	/* Before the device knows the segment: no change can be missed. */
	err = mmu_interval_notifier_insert(&seg->notifier, mm, seg->vaddr,
					   seg->size, &xpmem_seg_ops);
	if (err)
		goto err_seg;
	seg->notifier_live = true;

	err = -ENOMEM;
	req = xpmem_req_alloc(GFP_KERNEL);
	if (!req)
		goto err_seg;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_MAKE, owner->token,
		       sizeof(req->out.body.make), sizeof(req->in.body.make));
	req->out.body.make.vaddr = cpu_to_le64(seg->vaddr);
	req->out.body.make.size = cpu_to_le64(seg->size);
	req->out.body.make.permit_type = cpu_to_le32(VIRTIO_XPMEM_PERMIT_MODE);
	req->out.body.make.permit_value = cpu_to_le64(cmd.permit_value);
	req->out.body.make.uid =
		cpu_to_le32(from_kuid_munged(&init_user_ns, current_euid()));
	req->out.body.make.gid =
		cpu_to_le32(from_kgid_munged(&init_user_ns, current_egid()));
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, sizeof(req->in.body.make));
	segid = le64_to_cpu(req->in.body.make.segid);
	xpmem_req_put(req);
	if (err)
		goto err_seg;
	err = xpmem_status_to_errno(status);
	if (err)
		goto err_seg;
	if ((s64)segid <= 0) {
		dev_warn_ratelimited(&xd->vdev->dev,
				     "device returned invalid segid %#llx\n",
				     segid);
		err = -EIO;
		goto err_seg;
	}

	mutex_lock(&seg->lock);
	seg->segid = segid;
	mutex_unlock(&seg->lock);
	err = xa_insert(&xd->segs, segid, seg, GFP_KERNEL);
	if (err) {
		/* A duplicate id from the device: refuse it. */
		if (err == -EBUSY)
			err = -EIO;
		xpmem_seg_destroy(seg, true);
		return err;
	}

	mutex_lock(&owner->lock);
	list_add(&seg->node, &owner->segs);
	mutex_unlock(&owner->lock);

	if (put_user((s64)segid, &uarg->segid)) {
		mutex_lock(&owner->lock);
		list_del_init(&seg->node);
		mutex_unlock(&owner->lock);
		xpmem_seg_destroy(seg, true);
		return -EFAULT;
	}
	return 0;

err_seg:
	xpmem_seg_destroy(seg, false);
	return err;
}

long xpmem_ioctl_remove(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_remove __user *uarg)
{
	struct xpmem_seg *seg, *found = NULL;
	struct xpmem_req *req;
	s64 segid;
	u32 status;
	int err;

	if (get_user(segid, &uarg->segid))
		return -EFAULT;
	if (segid <= 0)
		return -EINVAL;

	mutex_lock(&owner->lock);
	list_for_each_entry(seg, &owner->segs, node) {
		if (seg->segid == segid) {
			list_del_init(&seg->node);
			found = seg;
			break;
		}
	}
	mutex_unlock(&owner->lock);
	if (found) {
		xpmem_seg_destroy(found, true);
		return 0;
	}

	/* Not ours: let the device give the precise error (PERM/NOENT). */
	req = xpmem_req_alloc(GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_REMOVE, owner->token,
		       sizeof(req->out.body.remove), 0);
	req->out.body.remove.segid = cpu_to_le64(segid);
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, 0);
	xpmem_req_put(req);
	if (err)
		return err;
	err = xpmem_status_to_errno(status);
	return err ? err : -ENOENT;
}

/*
 * Check a name from user space (spec 8.13): 1 to XPMEM_NAME_MAX graphic
 * ASCII bytes and a NUL inside the field (the bytes after the NUL are
 * cleared, as the device wants them), and a device that offers names.
 */
static int xpmem_check_name(struct xpmem_dev *xd, char *name)
{
	size_t len = strnlen(name, XPMEM_NAME_MAX + 1);
	size_t i;

	if (len > XPMEM_NAME_MAX)
		return -ENAMETOOLONG;
	if (!len)
		return -EINVAL;
	for (i = 0; i < len; i++) {
		if (name[i] < 0x21 || name[i] > 0x7e)
			return -EINVAL;
	}
	memset(name + len, 0, XPMEM_NAME_MAX + 1 - len);
	if (!virtio_has_feature(xd->vdev, VIRTIO_XPMEM_F_NAMES))
		return -EOPNOTSUPP;
	return 0;
}

long xpmem_ioctl_name(struct xpmem_dev *xd, struct xpmem_owner *owner,
		      struct xpmem_cmd_name __user *uarg)
{
	struct xpmem_cmd_name cmd;
	struct xpmem_req *req;
	struct xpmem_seg *seg;
	u32 status;
	int err;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.segid <= 0)
		return -EINVAL;
	err = xpmem_check_name(xd, cmd.name);
	if (err)
		return err;

	/* The device checks ownership and uniqueness in the whole domain. */
	req = xpmem_req_alloc(GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_NAME, owner->token,
		       sizeof(req->out.body.name), 0);
	req->out.body.name.segid = cpu_to_le64(cmd.segid);
	BUILD_BUG_ON(sizeof(req->out.body.name.name) != sizeof(cmd.name));
	memcpy(req->out.body.name.name, cmd.name, sizeof(cmd.name));
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, 0);
	xpmem_req_put(req);
	if (err)
		return err;
	err = xpmem_status_to_errno(status);
	if (err)
		return err;

	/* Remember it for /proc/xpmem/names (the segment may be gone already). */
	seg = xpmem_seg_lookup(xd, cmd.segid);
	if (seg) {
		xa_lock(&xd->segs);
		memcpy(seg->name, cmd.name, sizeof(seg->name));
		xa_unlock(&xd->segs);
		kref_put(&seg->ref, xpmem_seg_release);
	}
	return 0;
}

long xpmem_ioctl_search(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_search __user *uarg)
{
	struct xpmem_cmd_search cmd;
	struct xpmem_req *req;
	u32 status;
	s64 segid;
	int err;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	err = xpmem_check_name(xd, cmd.name);
	if (err)
		return err;

	req = xpmem_req_alloc(GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_SEARCH, owner->token,
		       sizeof(req->out.body.search),
		       sizeof(req->in.body.search));
	memcpy(req->out.body.search.name, cmd.name, sizeof(cmd.name));
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, sizeof(req->in.body.search));
	segid = (s64)le64_to_cpu(req->in.body.search.segid);
	xpmem_req_put(req);
	if (err)
		return err;
	err = xpmem_status_to_errno(status);
	if (err)
		return err;
	if (segid <= 0) {
		dev_warn_ratelimited(&xd->vdev->dev,
				     "device returned invalid segid %#llx\n",
				     (u64)segid);
		return -EIO;
	}
	return put_user(segid, &uarg->segid) ? -EFAULT : 0;
}

/* /proc/xpmem/names: the named segments this VM exports. */
void xpmem_show_names(struct seq_file *m, struct xpmem_dev *xd)
{
	struct xpmem_seg *seg;
	unsigned long segid;

	xa_lock(&xd->segs);
	xa_for_each(&xd->segs, segid, seg) {
		if (seg->name[0])
			seq_printf(m, "%#lx %s\n", segid, seg->name);
	}
	xa_unlock(&xd->segs);
}
