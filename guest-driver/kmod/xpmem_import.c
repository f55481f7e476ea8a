// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-xpmem guest driver: the importer side.
 *
 * An attachment is a VMA over a private pseudo file (one inode per
 * attachment, so unmap_mapping_pages() on that inode reaches exactly the
 * attachment's VMAs, wherever they were split or moved). The VMA is
 * VM_PFNMAP|VM_IO (no struct pages behind it) and VM_DONTCOPY (not
 * inherited by fork; VM_IO also refuses MADV_DOFORK). Its pages are aperture
 * pages of a virtio shared memory region, inserted by the fault handler with
 * the VMA's own write-back protection; probe reserved WB for the window.
 *
 * FAULT carries FAULT_F_WRITE for write accesses; the device resolves pages of
 * read-write attachments for writing in any case (breaking copy-on-write in
 * the exporter), so they are mapped writable at the first fault.
 *
 * Races with invalidation: the event handler bumps att->seq under att->lock,
 * then zaps. The fault handler samples att->seq before it sends FAULT and
 * inserts the PTEs under att->lock only if att->seq is unchanged (page tables
 * are allocated beforehand, so nothing sleeps under the spinlock). So a slot
 * is never mapped from a FAULT answer that predates an INVALIDATE or REVOKED
 * event (spec 8.7.1), and no PTE outlives an acknowledged INVALIDATE.
 */

#include <linux/bitmap.h>
#include <linux/capability.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/vmalloc.h>

#include "xpmem_priv.h"

#define XPMEMFS_MAGIC	0x78706d65	/* "xpme" */

unsigned int prefetch_pages = 16;
module_param(prefetch_pages, uint, 0644);
MODULE_PARM_DESC(prefetch_pages,
		 "Pages requested per importer fault, the faulting page first "
		 "(default 16, capped by the device's max_fault_pages)");

static struct vfsmount *xpmem_mnt;

static int xpmem_fs_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, XPMEMFS_MAGIC) ? 0 : -ENOMEM;
}

/* No .owner: the kernel-internal mount must not pin the module. */
static struct file_system_type xpmem_fs_type = {
	.name = "xpmem",
	.init_fs_context = xpmem_fs_init_fs_context,
	.kill_sb = kill_anon_super,
};

int xpmem_fs_init(void)
{
	xpmem_mnt = kern_mount(&xpmem_fs_type);
	return PTR_ERR_OR_ZERO(xpmem_mnt);
}

void xpmem_fs_exit(void)
{
	kern_unmount(xpmem_mnt);
}

static void xpmem_att_free(struct kref *ref)
{
	struct xpmem_att *att = container_of(ref, struct xpmem_att, ref);

	atomic64_sub(att->nmapped, &xpmem_stats.pages_mapped);
	atomic64_dec(&xpmem_stats.attachments);
	kvfree(att->mapped);
	iput(att->inode);
	xpmem_dev_put(att->xd);
	kfree(att);
}

static void xpmem_att_put(struct xpmem_att *att)
{
	kref_put(&att->ref, xpmem_att_free);
}

static struct xpmem_att *xpmem_att_lookup(struct xpmem_dev *xd, u64 id)
{
	struct xpmem_att *att;

	xa_lock(&xd->atts);
	att = xa_load(&xd->atts, id);
	if (att && !kref_get_unless_zero(&att->ref))
		att = NULL;
	xa_unlock(&xd->atts);
	return att;
}

/* Track pages the device reports mapped (for /proc); under att->lock. */
static void xpmem_att_mark_locked(struct xpmem_att *att, u64 idx, u64 n)
{
	u64 i, set = 0;

	for (i = idx; i < idx + n; i++)
		set += !__test_and_set_bit(i, att->mapped);
	att->nmapped += set;
	atomic64_add(set, &xpmem_stats.pages_mapped);
}

static void xpmem_att_unmark_locked(struct xpmem_att *att, u64 idx, u64 n)
{
	u64 i, cleared = 0;

	for (i = find_next_bit(att->mapped, idx + n, idx); i < idx + n;
	     i = find_next_bit(att->mapped, idx + n, i + 1)) {
		__clear_bit(i, att->mapped);
		cleared++;
	}
	att->nmapped -= cleared;
	atomic64_sub(cleared, &xpmem_stats.pages_mapped);
}

/*
 * Remove every user PTE of pages [idx, idx + n) of the attachment (and, with
 * @kill, make later faults SIGBUS). Bumping att->seq under att->lock first
 * stops a fault handler that is about to insert PTEs from a FAULT answered
 * before this invalidation. unmap_mapping_pages() takes i_mmap_rwsem, not
 * any mmap_lock, and flushes the TLBs before returning.
 */
static void xpmem_att_zap(struct xpmem_att *att, u64 idx, u64 n, bool kill)
{
	if (idx >= att->npages)
		return;
	n = min(n, att->npages - idx);
	spin_lock(&att->lock);
	att->seq++;
	if (kill)
		att->dead = true;
	xpmem_att_unmark_locked(att, idx, n);
	spin_unlock(&att->lock);
	unmap_mapping_pages(att->inode->i_mapping, idx, n, false);
}

static void xpmem_detach_send(struct xpmem_dev *xd, u64 token, u64 attach_id)
{
	struct xpmem_req *req = xpmem_req_alloc(GFP_KERNEL);
	u32 status;
	int err;

	if (!req)
		return;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_DETACH, token,
		       sizeof(req->out.body.detach), 0);
	req->out.body.detach.attach_id = cpu_to_le64(attach_id);
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, 0);
	xpmem_req_put(req);
	if (!err && status != VIRTIO_XPMEM_S_OK &&
	    status != VIRTIO_XPMEM_S_NOENT)
		pr_warn_ratelimited("xpmem: DETACH %#llx failed: status %u\n",
				    attach_id, status);
}

/*
 * End an attachment: no more faults (SIGBUS), no user PTEs, and the device
 * told (unless the owner's RELEASE_OWNER already dropped it). Idempotent.
 */
static void xpmem_att_detach(struct xpmem_att *att)
{
	struct xpmem_dev *xd = att->xd;
	bool send;

	mutex_lock(&xd->att_list_lock);
	if (att->owner) {
		list_del_init(&att->node);
		att->owner = NULL;
	}
	send = !att->detach_sent;
	att->detach_sent = true;
	mutex_unlock(&xd->att_list_lock);

	xa_cmpxchg(&xd->atts, att->attach_id, att, NULL, 0);
	/* Spec 8.6.1: no process mapping may survive the DETACH. */
	xpmem_att_zap(att, 0, att->npages, true);
	if (send)
		xpmem_detach_send(xd, att->token, att->attach_id);
}

static int xpmem_att_file_release(struct inode *inode, struct file *file)
{
	struct xpmem_att *att = file->private_data;

	xpmem_att_detach(att);
	xpmem_att_put(att);
	return 0;
}

/*
 * A FAULT chain came back from the device (or the device went away):
 * interrupt context. Its slot is free only now, whether or not its waiter
 * is still there (a killed waiter left long ago).
 */
static void xpmem_fault_done(struct xpmem_req *req)
{
	atomic64_dec(&xpmem_stats.faults_inflight);
	xpmem_budget_put(req->budget, req->budget_key);
}

/*
 * Ask the device to map @n pages from @idx into @mm's mapping of @att;
 * returns pages mapped or -errno.
 */
static int xpmem_att_request(struct xpmem_att *att, struct mm_struct *mm,
			     u64 idx, u32 n, bool write)
{
	struct xpmem_dev *xd = att->xd;
	unsigned long key = (unsigned long)mm;
	struct xpmem_req *req;
	u32 status, mapped = 0;
	int err;

	req = xpmem_req_alloc(GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_FAULT, att->token,
		       sizeof(req->out.body.fault), sizeof(req->in.body.fault));
	req->out.body.fault.attach_id = cpu_to_le64(att->attach_id);
	req->out.body.fault.page_index = cpu_to_le64(idx);
	req->out.body.fault.npages = cpu_to_le32(n);
	req->out.body.fault.flags =
		cpu_to_le32(write ? VIRTIO_XPMEM_FAULT_F_WRITE : 0);

	/*
	 * A slot of this process's share of the FAULT budget (the key is the
	 * mm being faulted; a recycled mm address only inherits slots that come
	 * back within the device's resolve timeout). The completion returns
	 * it, not this waiter, which may be killed while the chain is out.
	 */
	if (xpmem_budget_get(&xd->fault_budget, key, true)) {
		xpmem_req_put(req);
		return -EINTR;
	}
	req->budget = &xd->fault_budget;
	req->budget_key = key;
	req->on_done = xpmem_fault_done;
	atomic64_inc(&xpmem_stats.faults);
	atomic64_inc(&xpmem_stats.faults_inflight);
	err = xpmem_req_submit(xd, req);
	if (err) {
		/* The device never had it: nothing will call on_done. */
		atomic64_dec(&xpmem_stats.faults_inflight);
		xpmem_budget_put(&xd->fault_budget, key);
	} else {
		err = xpmem_req_wait(req, true);
	}
	if (!err) {
		status = xpmem_req_status(req, sizeof(req->in.body.fault));
		err = xpmem_status_to_errno(status);
		mapped = min(le32_to_cpu(req->in.body.fault.mapped), n);
	}
	xpmem_req_put(req);
	if (err)
		return err;
	atomic64_add(mapped, &xpmem_stats.fault_pages);
	return mapped;
}

static int xpmem_pte_noop(pte_t *pte, unsigned long addr, void *data)
{
	return 0;
}

/*
 * A FAULT answer obtained with mmap_lock dropped, for the retried fault to
 * use (under att->lock). Valid only while att->seq is unchanged.
 */
static void xpmem_att_set_grant(struct xpmem_att *att, u32 seq, u64 idx,
				int result, bool write)
{
	spin_lock(&att->lock);
	if (att->seq == seq) {
		att->grant.valid = true;
		att->grant.seq = seq;
		att->grant.idx = idx;
		att->grant.result = result;
		att->grant.write = write;
	}
	spin_unlock(&att->lock);
}

/* Take a grant covering @idx: pages mapped from @idx, -errno, or 0 (none). */
static int xpmem_att_take_grant_locked(struct xpmem_att *att, u64 idx,
				       bool write)
{
	struct xpmem_grant *g = &att->grant;

	if (!g->valid || g->seq != att->seq || (write && !g->write))
		return 0;
	if (g->result < 0) {
		if (g->idx != idx)
			return 0;
		g->valid = false;
		return g->result;
	}
	if (idx < g->idx || idx >= g->idx + g->result)
		return 0;
	g->valid = false;
	return g->idx + g->result - idx;
}

static vm_fault_t xpmem_att_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct mm_struct *mm = vma->vm_mm;
	struct xpmem_att *att = vma->vm_private_data;
	bool write = vmf->flags & FAULT_FLAG_WRITE;
	unsigned long pfn, addr = vmf->address;
	u64 idx = vmf->pgoff;
	vm_fault_t ret = VM_FAULT_NOPAGE;
	bool dead;
	int i, n, win;
	u32 seq;

	if (idx >= att->npages || (write && att->rdonly))
		goto sigbus;
	win = max(1u, min(READ_ONCE(prefetch_pages), att->xd->max_fault_pages));
	win = min_t(u64, win, att->npages - idx);
	win = min_t(u64, win, (vma->vm_end - addr) >> PAGE_SHIFT);

	spin_lock(&att->lock);
	seq = att->seq;
	dead = att->dead;
	n = dead ? 0 : xpmem_att_take_grant_locked(att, idx, write);
	spin_unlock(&att->lock);
	if (dead)
		goto sigbus;

	if (!n && (vmf->flags & FAULT_FLAG_ALLOW_RETRY) &&
	    !(vmf->flags & FAULT_FLAG_RETRY_NOWAIT)) {
		/*
		 * Wait for the device without mmap_lock: the exporter may be
		 * this very process, whose resolve needs mmap_lock for reading
		 * while a writer (mmap, munmap) queues behind this fault. The
		 * retried fault uses the answer (the grant).
		 */
		kref_get(&att->ref);
		mmap_read_unlock(mm);
		n = xpmem_att_request(att, mm, idx, win, write);
		if (n != -EINTR && n != -ENOMEM)
			xpmem_att_set_grant(att, seq, idx, n, write);
		xpmem_att_put(att);
		return VM_FAULT_RETRY;
	}
	if (!n)
		n = xpmem_att_request(att, mm, idx, win, write);
	if (n < 0) {
		if (n == -ENOMEM)
			return VM_FAULT_OOM;
		goto sigbus;
	}
	if (!n)
		return VM_FAULT_NOPAGE;	/* nothing mapped: fault again */
	n = min(n, win);

	/*
	 * Page tables first (this may sleep), so that the PTEs can then be
	 * inserted under att->lock, atomically with the check that no
	 * INVALIDATE or REVOKED event arrived since the FAULT was sent.
	 * mmap_lock is held: the tables cannot go away in between.
	 */
	if (apply_to_page_range(vma->vm_mm, addr,
				(unsigned long)n << PAGE_SHIFT, xpmem_pte_noop,
				NULL))
		return VM_FAULT_OOM;

	/*
	 * A read-write attachment is always resolved for writing by the
	 * exporter (spec 8.7), so its pages are mapped writable at once.
	 */
	pfn = PHYS_PFN(att->base) + idx;
	spin_lock(&att->lock);
	if (att->seq != seq || att->dead) {
		spin_unlock(&att->lock);
		return VM_FAULT_NOPAGE;	/* invalidated meanwhile: re-FAULT */
	}
	for (i = 0; i < n; i++) {
		ret = vmf_insert_pfn_prot(vma, addr + i * PAGE_SIZE, pfn + i,
					  vma->vm_page_prot);
		if (ret != VM_FAULT_NOPAGE)
			break;
	}
	if (i)
		xpmem_att_mark_locked(att, idx, i);
	spin_unlock(&att->lock);
	return i ? VM_FAULT_NOPAGE : ret;

sigbus:
	atomic64_inc(&xpmem_stats.fault_sigbus);
	return VM_FAULT_SIGBUS;
}

static int xpmem_att_mremap(struct vm_area_struct *vma)
{
	return -EINVAL;	/* attachments stay where they were attached */
}

static const struct vm_operations_struct xpmem_vm_ops = {
	.fault = xpmem_att_fault,
	.mremap = xpmem_att_mremap,
};

/*
 * Whether an MMU notifier range lies inside one attachment of this driver.
 * Its pages are aperture pages (VM_PFNMAP), which an exporter can never
 * resolve, so an exporter's notifier has nothing to take back there. Kernels
 * from 6.3 no longer say which VMA a range is in: there, false.
 */
bool xpmem_range_in_att(const struct mmu_notifier_range *range)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 3, 0)
	const struct vm_area_struct *vma = range->vma;

	return vma && vma->vm_ops == &xpmem_vm_ops &&
	       vma->vm_start <= range->start && range->end <= vma->vm_end;
#else
	return false;
#endif
}

static int xpmem_att_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct xpmem_att *att = file->private_data;

	/* Only xpmem_ioctl_attach() can reach this (the fd is never installed). */
	if (vma->vm_pgoff || vma_pages(vma) > att->npages)
		return -EINVAL;
	vma->vm_flags |= VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP |
			 VM_DONTCOPY;
	if (att->rdonly)
		vma->vm_flags &= ~(VM_WRITE | VM_MAYWRITE);
	vma->vm_ops = &xpmem_vm_ops;
	vma->vm_private_data = att;
	return 0;
}

static const struct file_operations xpmem_att_fops = {
	.owner = THIS_MODULE,
	.mmap = xpmem_att_mmap,
	.release = xpmem_att_file_release,
};

long xpmem_ioctl_get(struct xpmem_dev *xd, struct xpmem_owner *owner,
		     struct xpmem_cmd_get __user *uarg)
{
	struct xpmem_cmd_get cmd;
	struct xpmem_permit *perm;
	struct xpmem_req *req;
	u32 status, flags;
	u64 apid;
	int err;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.flags != XPMEM_RDONLY && cmd.flags != XPMEM_RDWR)
		return -EINVAL;
	if (cmd.permit_type != XPMEM_PERMIT_MODE || cmd.permit_value)
		return -EINVAL;
	if (cmd.segid <= 0)
		return -EINVAL;

	perm = kzalloc(sizeof(*perm), GFP_KERNEL);
	req = xpmem_req_alloc(GFP_KERNEL);
	if (!perm || !req) {
		kfree(perm);
		kfree(req);
		return -ENOMEM;
	}
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_GET, owner->token,
		       sizeof(req->out.body.get), sizeof(req->in.body.get));
	req->out.body.get.segid = cpu_to_le64(cmd.segid);
	flags = cmd.flags == XPMEM_RDONLY ? VIRTIO_XPMEM_GET_RDONLY :
					    VIRTIO_XPMEM_GET_RDWR;
	/*
	 * IPC semantics: CAP_IPC_OWNER passes the mode check. The segment's
	 * owner namespace is not known here, so the capability is checked in
	 * the initial user namespace; the device honours it only for segments
	 * of this VM.
	 */
	if (capable(CAP_IPC_OWNER))
		flags |= VIRTIO_XPMEM_GET_F_IPC_OWNER;
	req->out.body.get.flags = cpu_to_le32(flags);
	req->out.body.get.permit_type = cpu_to_le32(VIRTIO_XPMEM_PERMIT_MODE);
	req->out.body.get.uid =
		cpu_to_le32(from_kuid_munged(&init_user_ns, current_euid()));
	req->out.body.get.gid =
		cpu_to_le32(from_kgid_munged(&init_user_ns, current_egid()));
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, sizeof(req->in.body.get));
	apid = le64_to_cpu(req->in.body.get.apid);
	xpmem_req_put(req);
	if (!err)
		err = xpmem_status_to_errno(status);
	if (!err && (s64)apid <= 0)
		err = -EIO;
	if (err) {
		kfree(perm);
		return err;
	}

	perm->apid = apid;
	perm->segid = cmd.segid;
	perm->rdonly = cmd.flags == XPMEM_RDONLY;
	mutex_lock(&owner->lock);
	list_add(&perm->node, &owner->permits);
	mutex_unlock(&owner->lock);
	atomic64_inc(&xpmem_stats.permits);

	/* On failure the permit stays recorded and goes with its owner. */
	if (put_user((s64)apid, &uarg->apid))
		return -EFAULT;
	return 0;
}

static void xpmem_kill_atts(struct xpmem_dev *xd, struct xpmem_owner *owner,
			    u64 apid);

long xpmem_ioctl_release(struct xpmem_dev *xd, struct xpmem_owner *owner,
			 struct xpmem_cmd_release __user *uarg)
{
	struct xpmem_permit *perm, *found = NULL;
	struct xpmem_req *req;
	s64 apid;
	u32 status;
	int err;

	if (get_user(apid, &uarg->apid))
		return -EFAULT;
	if (apid <= 0)
		return -EINVAL;

	/* Spec 8.5: RELEASE detaches the permit's attachments. */
	xpmem_kill_atts(xd, owner, apid);

	req = xpmem_req_alloc(GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_RELEASE, owner->token,
		       sizeof(req->out.body.release), 0);
	req->out.body.release.apid = cpu_to_le64(apid);
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, 0);
	xpmem_req_put(req);
	if (!err)
		err = xpmem_status_to_errno(status);

	mutex_lock(&owner->lock);
	list_for_each_entry(perm, &owner->permits, node) {
		if (perm->apid == apid) {
			found = perm;
			break;
		}
	}
	/* Released, or the device no longer knows it: forget it. */
	if (found && (!err || err == -ENOENT))
		list_del(&found->node);
	else
		found = NULL;
	mutex_unlock(&owner->lock);
	if (found) {
		kfree(found);
		atomic64_dec(&xpmem_stats.permits);
	}
	return err;
}

static struct file *xpmem_att_file(struct xpmem_att *att)
{
	struct inode *inode;
	struct file *file;

	inode = alloc_anon_inode(xpmem_mnt->mnt_sb);
	if (IS_ERR(inode))
		return ERR_CAST(inode);
	/* The attachment keeps the inode (and its mapping) until it is freed. */
	ihold(inode);
	att->inode = inode;
	/* alloc_file_pseudo() does not take the fops owner's reference. */
	__module_get(THIS_MODULE);
	file = alloc_file_pseudo(inode, xpmem_mnt, "xpmem-attachment",
				 att->rdonly ? O_RDONLY : O_RDWR,
				 &xpmem_att_fops);
	if (IS_ERR(file)) {
		module_put(THIS_MODULE);
		iput(inode);
		return file;
	}
	file->private_data = att;
	return file;
}

/* Whether an attachment is mapped anywhere in [start, start + len). */
static bool xpmem_range_has_att(struct mm_struct *mm, unsigned long start,
				unsigned long len)
{
	unsigned long end = start + len;
	struct vm_area_struct *vma;
	bool found = false;

	if (!mm || end < start)
		return false;
	mmap_read_lock(mm);
	for (vma = find_vma(mm, start); vma && vma->vm_start < end;
	     vma = find_vma(mm, vma->vm_end)) {
		if (vma->vm_ops == &xpmem_vm_ops) {
			found = true;
			break;
		}
	}
	mmap_read_unlock(mm);
	return found;
}

/*
 * Whether @owner's own segment @segid has its pages [@offset, @offset + @len)
 * in [@vaddr, @vaddr + @len). Called with owner->lock held.
 */
static bool xpmem_own_seg_overlaps(struct xpmem_owner *owner, s64 segid,
				   u64 offset, u64 vaddr, u64 len)
{
	struct xpmem_seg *seg;
	u64 src;

	list_for_each_entry(seg, &owner->segs, node) {
		if (seg->segid != segid)
			continue;
		src = seg->vaddr + offset;
		return vaddr < src + len && src < vaddr + len;
	}
	return false;
}

long xpmem_ioctl_attach(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_attach __user *uarg)
{
	struct xpmem_cmd_attach cmd;
	struct xpmem_permit *perm;
	unsigned long off_in_page, len, addr;
	bool rdonly, perm_rdonly, overlap;
	u64 attach_id, aoff, npages;
	struct xpmem_att *att;
	struct xpmem_req *req;
	struct file *file;
	u32 status, shm_id;
	int err, sid;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	/*
	 * As natively: page-aligned vaddr and offset, and a vaddr that leaves
	 * room for a page below TASK_SIZE. The native module ignores fd and
	 * flags; here XPMEM_RDONLY alone asks for a read-only attachment and
	 * XPMEM_RDWR for a writable one, every other bit is ignored.
	 */
	if (cmd.apid <= 0 || cmd.offset < 0 || !cmd.size ||
	    !PAGE_ALIGNED(cmd.vaddr) || !PAGE_ALIGNED(cmd.offset) ||
	    (cmd.vaddr && cmd.vaddr >= TASK_SIZE - PAGE_SIZE))
		return -EINVAL;
	/*
	 * Native XPMEM refuses every attach of a permit got with XPMEM_RDONLY
	 * (EACCES). Here such a permit gives read-only attachments (the
	 * read-only aperture), and flags may also ask for read-only explicitly;
	 * an explicit XPMEM_RDWR attach of a read-only permit gets native's
	 * EACCES.
	 */
	rdonly = (cmd.flags & (XPMEM_RDONLY | XPMEM_RDWR)) == XPMEM_RDONLY;
	perm_rdonly = false;
	overlap = false;
	mutex_lock(&owner->lock);
	list_for_each_entry(perm, &owner->permits, node) {
		if (perm->apid == cmd.apid) {
			perm_rdonly = perm->rdonly;
			overlap = cmd.vaddr &&
				  xpmem_own_seg_overlaps(owner, perm->segid,
							 cmd.offset, cmd.vaddr,
							 PAGE_ALIGN(cmd.size));
			break;
		}
	}
	mutex_unlock(&owner->lock);
	if (perm_rdonly && (cmd.flags & XPMEM_RDWR))
		return -EACCES;
	/* Natively, an exporter cannot attach its segment over its source. */
	if (overlap)
		return -EINVAL;
	rdonly |= perm_rdonly;
	/* Natively, MAP_FIXED over another attachment is refused. */
	if (cmd.vaddr && xpmem_range_has_att(current->mm, cmd.vaddr,
					     PAGE_ALIGN(cmd.size)))
		return -EINVAL;
	sid = rdonly ? VIRTIO_XPMEM_SHM_RO : VIRTIO_XPMEM_SHM_RW;
	/*
	 * Without the read-only aperture (spec 4.1) a read-write permit can
	 * still be attached read-only: the read-write window, mapped without
	 * write permission. A read-only permit cannot be attached at all.
	 */
	if (sid == VIRTIO_XPMEM_SHM_RO && !xd->shm[sid].present && !perm_rdonly)
		sid = VIRTIO_XPMEM_SHM_RW;
	if (!xd->shm[sid].present)
		return sid == VIRTIO_XPMEM_SHM_RO ? -EOPNOTSUPP : -ENODEV;

	off_in_page = 0;	/* the offset is page-aligned (above) */
	if (cmd.size > xd->shm[sid].len)
		return -ENOMEM;
	len = PAGE_ALIGN(cmd.size + off_in_page);
	if (len > xd->shm[sid].len)
		return -ENOMEM;
	npages = len >> PAGE_SHIFT;

	req = xpmem_req_alloc(GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_ATTACH, owner->token,
		       sizeof(req->out.body.attach),
		       sizeof(req->in.body.attach));
	req->out.body.attach.apid = cpu_to_le64(cmd.apid);
	req->out.body.attach.offset = cpu_to_le64(cmd.offset - off_in_page);
	req->out.body.attach.size = cpu_to_le64(len);
	req->out.body.attach.flags = cpu_to_le32(sid == VIRTIO_XPMEM_SHM_RO ?
					VIRTIO_XPMEM_ATTACH_F_RDONLY : 0);
	err = xpmem_req_call(xd, req);
	status = xpmem_req_status(req, sizeof(req->in.body.attach));
	attach_id = le64_to_cpu(req->in.body.attach.attach_id);
	aoff = le64_to_cpu(req->in.body.attach.aperture_offset);
	shm_id = le32_to_cpu(req->in.body.attach.shm_id);
	xpmem_req_put(req);
	if (err)
		return err;
	err = xpmem_status_to_errno(status);
	if (err)
		return err;
	if (!attach_id || shm_id != sid || !PAGE_ALIGNED(aoff) ||
	    aoff > xd->shm[sid].len || len > xd->shm[sid].len - aoff) {
		dev_warn_ratelimited(&xd->vdev->dev,
				     "ATTACH reply out of range (id %#llx, region %u, offset %#llx)\n",
				     attach_id, shm_id, aoff);
		err = -EIO;
		goto err_detach;
	}

	err = -ENOMEM;
	att = kzalloc(sizeof(*att), GFP_KERNEL);
	if (!att)
		goto err_detach;
	att->mapped = kvcalloc(BITS_TO_LONGS(npages), sizeof(long),
			       GFP_KERNEL);
	if (!att->mapped) {
		kfree(att);
		goto err_detach;
	}
	kref_init(&att->ref);
	INIT_LIST_HEAD(&att->node);
	spin_lock_init(&att->lock);
	att->xd = xd;
	kref_get(&xd->ref);
	att->attach_id = attach_id;
	att->token = owner->token;
	att->apid = cmd.apid;
	att->npages = npages;
	att->base = xd->shm[sid].addr + aoff;
	att->rdonly = rdonly;
	atomic64_inc(&xpmem_stats.attachments);

	file = xpmem_att_file(att);
	if (IS_ERR(file)) {
		err = PTR_ERR(file);
		att->detach_sent = true;
		xpmem_detach_send(xd, owner->token, attach_id);
		xpmem_att_put(att);	/* iput(NULL) is a no-op */
		return err;
	}

	/* From here on, the file's release detaches. */
	err = xa_insert(&xd->atts, attach_id, att, GFP_KERNEL);
	if (err) {
		fput(file);
		return err == -EBUSY ? -EIO : err;
	}
	mutex_lock(&xd->att_list_lock);
	att->owner = owner;
	list_add(&att->node, &owner->atts);
	mutex_unlock(&xd->att_list_lock);

	addr = vm_mmap(file, cmd.vaddr, len,
		       PROT_READ | (att->rdonly ? 0 : PROT_WRITE),
		       MAP_SHARED | (cmd.vaddr ? MAP_FIXED : 0), 0);
	fput(file);	/* the VMA holds the file now, or nothing does */
	if (IS_ERR_VALUE(addr))
		return (long)addr;
	att->uaddr = addr;

	if (put_user((u64)(addr + off_in_page), &uarg->vaddr)) {
		vm_munmap(addr, len);
		return -EFAULT;
	}
	return 0;

err_detach:
	xpmem_detach_send(xd, owner->token, attach_id);
	return err;
}

long xpmem_ioctl_detach(struct xpmem_dev *xd, struct xpmem_owner *owner,
			struct xpmem_cmd_detach __user *uarg)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long start, end, astart, aend;
	struct xpmem_att *att;
	bool whole = true;
	u64 vaddr;

	if (get_user(vaddr, &uarg->vaddr))
		return -EFAULT;
	if (!mm)
		return -EINVAL;

	mmap_read_lock(mm);
	vma = vma_lookup(mm, vaddr);
	if (!vma) {
		/* As natively: nothing mapped there, nothing to detach. */
		mmap_read_unlock(mm);
		return 0;
	}
	if (vma->vm_ops != &xpmem_vm_ops) {
		mmap_read_unlock(mm);
		return -EINVAL;
	}
	att = vma->vm_private_data;
	if (att->token != owner->token) {
		mmap_read_unlock(mm);
		return -EACCES;
	}
	kref_get(&att->ref);
	start = vma->vm_start;
	end = vma->vm_end;
	/* Unmap the whole original range if it still holds only this attachment. */
	astart = att->uaddr;
	aend = astart + (att->npages << PAGE_SHIFT);
	for (vma = find_vma(mm, astart); vma && vma->vm_start < aend;
	     vma = find_vma(mm, vma->vm_end)) {
		if (vma->vm_private_data != att || vma->vm_ops != &xpmem_vm_ops) {
			whole = false;
			break;
		}
	}
	mmap_read_unlock(mm);

	xpmem_att_detach(att);
	if (whole)
		vm_munmap(astart, aend - astart);
	else
		vm_munmap(start, end - start);
	xpmem_att_put(att);
	return 0;
}

/*
 * The device is about to drop attachments of @owner (all of them, or those
 * made with permit @apid): they die (SIGBUS) and their PTEs go now, before
 * the device may hand their aperture range to another attachment.
 */
static void xpmem_kill_atts(struct xpmem_dev *xd, struct xpmem_owner *owner,
			    u64 apid)
{
	struct xpmem_att *att, *tmp;
	LIST_HEAD(dead);

	mutex_lock(&xd->att_list_lock);
	list_for_each_entry_safe(att, tmp, &owner->atts, node) {
		if (apid && att->apid != apid)
			continue;
		list_del(&att->node);
		att->owner = NULL;
		/* RELEASE_OWNER or RELEASE detaches it on the device side. */
		att->detach_sent = true;
		kref_get(&att->ref);
		list_add(&att->node, &dead);
	}
	mutex_unlock(&xd->att_list_lock);

	list_for_each_entry_safe(att, tmp, &dead, node) {
		list_del_init(&att->node);
		xa_cmpxchg(&xd->atts, att->attach_id, att, NULL, 0);
		xpmem_att_zap(att, 0, att->npages, true);
		xpmem_att_put(att);
	}
}

void xpmem_owner_kill_atts(struct xpmem_dev *xd, struct xpmem_owner *owner)
{
	xpmem_kill_atts(xd, owner, 0);
}

/* The device is going away: every attachment dies, its PTEs go now. */
void xpmem_kill_all_atts(struct xpmem_dev *xd)
{
	struct xpmem_att *att;
	unsigned long id;

	xa_for_each(&xd->atts, id, att) {
		/* Take the reference under xa_lock: @att may be going away. */
		att = xpmem_att_lookup(xd, id);
		if (!att)
			continue;
		xpmem_att_zap(att, 0, att->npages, true);
		xpmem_att_put(att);
	}
}

/*
 * INVALIDATE event: zap, then acknowledge. The ACK is not waited for (spec
 * 8.8.1: the exporter may be this VM); the event buffer goes back to eventq
 * when the ACK completes. Returns true if the buffer was handed over.
 */
static void xpmem_ack_done(struct xpmem_req *req)
{
	atomic64_dec(&xpmem_stats.inval_recv_inflight);
	xpmem_evbuf_reply_done(req);
}

bool xpmem_handle_invalidate(struct xpmem_evbuf *eb,
			     const struct virtio_xpmem_invalidate_event *ev)
{
	struct xpmem_dev *xd = eb->xd;
	struct xpmem_req *req = &eb->reply;
	struct xpmem_att *att;
	u64 token = xd->drv_token;

	atomic64_inc(&xpmem_stats.inval_recv);
	/*
	 * test_misbehave=no_ack: a hostile importer keeps its PTEs (the page
	 * stays reachable until the device revokes it) and never answers.
	 */
	if (xpmem_misbehaving(XPMEM_MISBEHAVE_NO_ACK)) {
		atomic64_inc(&xpmem_stats.inval_ignored);
		return false;
	}
	att = xpmem_att_lookup(xd, le64_to_cpu(ev->attach_id));
	if (att) {
		token = att->token;
		xpmem_att_zap(att, le64_to_cpu(ev->page_index),
			      le64_to_cpu(ev->npages), false);
		xpmem_att_put(att);
	}
	/* Acknowledge unknown attachments too: nothing of them is mapped. */
	xpmem_req_init(req, VIRTIO_XPMEM_REQ_INVALIDATE_ACK, token,
		       sizeof(req->out.body.invalidate_ack), 0);
	req->out.body.invalidate_ack.invalidation_id = ev->invalidation_id;
	req->on_done = xpmem_ack_done;
	atomic64_inc(&xpmem_stats.inval_recv_inflight);
	if (xpmem_req_submit(xd, req)) {
		atomic64_dec(&xpmem_stats.inval_recv_inflight);
		return false;
	}
	return true;
}

void xpmem_handle_revoked(struct xpmem_dev *xd,
			  const struct virtio_xpmem_revoked_event *ev)
{
	struct xpmem_att *att;

	atomic64_inc(&xpmem_stats.revoked_recv);
	att = xpmem_att_lookup(xd, le64_to_cpu(ev->attach_id));
	if (!att)
		return;
	/* Later faults on these pages get REVOKED/GONE from the device. */
	xpmem_att_zap(att, le64_to_cpu(ev->page_index),
		      le64_to_cpu(ev->npages), false);
	xpmem_att_put(att);
}
