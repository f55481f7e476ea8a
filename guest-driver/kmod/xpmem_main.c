// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-xpmem guest driver: /dev/xpmem (the XPMEM user ABI), /proc/xpmem
 * and module setup.
 *
 * Every thread group using an open file of /dev/xpmem is an "owner" with its
 * own non-zero token; the device checks ownership with it (only the owner
 * may remove/release/detach, a permit is usable only by the owner that got
 * it). When a thread group closes the file (flush: also at its exit, and
 * also when it inherited the descriptor and the file lives on in its
 * parent), or the file is released, the owner's attachments are zapped, the
 * device is told RELEASE_OWNER and its segments' notifiers are removed.
 */

#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>

#include "xpmem_priv.h"

struct xpmem_stats xpmem_stats;

static atomic64_t xpmem_next_token = ATOMIC64_INIT(0);

u64 xpmem_new_token(void)
{
	return atomic64_inc_return(&xpmem_next_token);
}

static int xpmem_open(struct inode *inode, struct file *file)
{
	struct xpmem_file *xf = kzalloc(sizeof(*xf), GFP_KERNEL);

	if (!xf)
		return -ENOMEM;
	mutex_init(&xf->lock);
	INIT_LIST_HEAD(&xf->owners);
	file->private_data = xf;
	return 0;
}

static void xpmem_owner_release(struct xpmem_dev *xd,
				struct xpmem_owner *owner)
{
	struct xpmem_permit *perm, *ptmp;
	struct xpmem_seg *seg, *stmp;
	struct xpmem_req *req;

	if (xd) {
		xpmem_owner_kill_atts(xd, owner);
		req = xpmem_req_alloc(GFP_KERNEL);
		if (req) {
			xpmem_req_init(req, VIRTIO_XPMEM_REQ_RELEASE_OWNER,
				       owner->token, 0, 0);
			xpmem_req_call(xd, req);
			xpmem_req_put(req);
		}
	}
	list_for_each_entry_safe(seg, stmp, &owner->segs, node) {
		list_del_init(&seg->node);
		xpmem_seg_teardown(seg);
	}
	list_for_each_entry_safe(perm, ptmp, &owner->permits, node) {
		list_del(&perm->node);
		kfree(perm);
		atomic64_dec(&xpmem_stats.permits);
	}
	atomic64_dec(&xpmem_stats.owners);
	kfree(owner);
}

static int xpmem_release(struct inode *inode, struct file *file)
{
	struct xpmem_file *xf = file->private_data;
	struct xpmem_owner *owner, *tmp;

	list_for_each_entry_safe(owner, tmp, &xf->owners, node) {
		list_del(&owner->node);
		xpmem_owner_release(xf->xd, owner);
	}
	xpmem_dev_put(xf->xd);
	kfree(xf);
	return 0;
}

/*
 * A close of the file by a thread group ends that group's use of it, as in
 * the native module: a process that inherited the descriptor from its parent
 * loses its segments (and their names), permits and attachments when it
 * exits, not when the last holder of the file closes it. During fork's
 * clean-up of a failed child, flush runs in the parent with another files
 * table: that is not the parent's close.
 */
static int xpmem_flush(struct file *file, fl_owner_t id)
{
	struct xpmem_file *xf = file->private_data;
	struct xpmem_owner *owner, *found = NULL;
	struct xpmem_dev *xd;

	if (current->files && current->files != id)
		return 0;
	mutex_lock(&xf->lock);
	list_for_each_entry(owner, &xf->owners, node) {
		if (owner->tgid == current->tgid) {
			list_del(&owner->node);
			found = owner;
			break;
		}
	}
	xd = xf->xd;
	mutex_unlock(&xf->lock);
	if (found)
		xpmem_owner_release(xd, found);
	return 0;
}

/* The device this file uses (bound on first use) and the caller's owner. */
static int xpmem_file_context(struct xpmem_file *xf, struct xpmem_dev **xdp,
			      struct xpmem_owner **ownerp)
{
	struct xpmem_owner *owner;
	int err = 0;

	mutex_lock(&xf->lock);
	if (!xf->xd)
		xf->xd = xpmem_dev_get();
	if (!xf->xd || READ_ONCE(xf->xd->broken)) {
		err = -ENODEV;
		goto out;
	}
	list_for_each_entry(owner, &xf->owners, node) {
		if (owner->tgid == current->tgid)
			goto found;
	}
	owner = kzalloc(sizeof(*owner), GFP_KERNEL);
	if (!owner) {
		err = -ENOMEM;
		goto out;
	}
	owner->tgid = current->tgid;
	owner->token = xpmem_new_token();
	mutex_init(&owner->lock);
	INIT_LIST_HEAD(&owner->segs);
	INIT_LIST_HEAD(&owner->permits);
	INIT_LIST_HEAD(&owner->atts);
	list_add(&owner->node, &xf->owners);
	atomic64_inc(&xpmem_stats.owners);
found:
	*xdp = xf->xd;
	*ownerp = owner;
out:
	mutex_unlock(&xf->lock);
	return err;
}

static long xpmem_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct xpmem_file *xf = file->private_data;
	void __user *uarg = (void __user *)arg;
	struct xpmem_owner *owner;
	struct xpmem_dev *xd;
	long err;

	switch (cmd) {
	case XPMEM_CMD_VERSION:
		return XPMEM_CURRENT_VERSION;
	case XPMEM_CMD_FORK_BEGIN:
	case XPMEM_CMD_FORK_END:
		/*
		 * Natively these unpin the caller's exported pages around a
		 * fork (and hold off recalls). This driver never pins: the
		 * MMU notifier follows copy-on-write. Accepted, nothing to do.
		 */
		return 0;
	case XPMEM_CMD_MAKE:
	case XPMEM_CMD_REMOVE:
	case XPMEM_CMD_GET:
	case XPMEM_CMD_RELEASE:
	case XPMEM_CMD_ATTACH:
	case XPMEM_CMD_DETACH:
	case XPMEM_CMD_NAME:
	case XPMEM_CMD_SEARCH:
		break;
	default:
		return -ENOTTY;
	}

	err = xpmem_file_context(xf, &xd, &owner);
	if (err)
		return err;

	switch (cmd) {
	case XPMEM_CMD_MAKE:
		return xpmem_ioctl_make(xd, owner, uarg);
	case XPMEM_CMD_REMOVE:
		return xpmem_ioctl_remove(xd, owner, uarg);
	case XPMEM_CMD_GET:
		return xpmem_ioctl_get(xd, owner, uarg);
	case XPMEM_CMD_RELEASE:
		return xpmem_ioctl_release(xd, owner, uarg);
	case XPMEM_CMD_ATTACH:
		return xpmem_ioctl_attach(xd, owner, uarg);
	case XPMEM_CMD_NAME:
		return xpmem_ioctl_name(xd, owner, uarg);
	case XPMEM_CMD_SEARCH:
		return xpmem_ioctl_search(xd, owner, uarg);
	default:
		return xpmem_ioctl_detach(xd, owner, uarg);
	}
}

static const struct file_operations xpmem_fops = {
	.owner = THIS_MODULE,
	.open = xpmem_open,
	.flush = xpmem_flush,
	.release = xpmem_release,
	.unlocked_ioctl = xpmem_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice xpmem_miscdev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "xpmem",
	.fops = &xpmem_fops,
	.mode = 0666,
};

/*
 * /proc/xpmem/global_pages has the two lines XPMEM's test suite compares
 * (grep "pages pinned" on every file of /proc/xpmem). This driver never pins exporter
 * pages, so both are 0 by construction, not by bookkeeping.
 */
static int xpmem_proc_pages_show(struct seq_file *m, void *v)
{
	seq_puts(m, "all pages pinned by XPMEM: 0\n");
	seq_puts(m, "all pages unpinned by XPMEM: 0\n");
	return 0;
}

#define XPMEM_STAT(name) \
	seq_printf(m, "%-28s %lld\n", #name ":", \
		   (long long)atomic64_read(&xpmem_stats.name))

static int xpmem_proc_stats_show(struct seq_file *m, void *v)
{
	struct xpmem_dev *xd = xpmem_dev_get();

	seq_printf(m, "version: %#x\n", XPMEM_CURRENT_VERSION);
	if (xd) {
		seq_printf(m, "device: vm %u, max_fault_pages %u, deadline %llu ms%s\n",
			   xd->vm_id, xd->max_fault_pages, xd->deadline_ms,
			   xd->broken ? " (broken)" : "");
		seq_printf(m, "aperture rw: %llu MiB, ro: %llu MiB\n",
			   xd->shm[0].len >> 20, xd->shm[1].len >> 20);
		seq_printf(m, "deferred slots: invalidate %u (%u per process), fault %u (%u per process)\n",
			   xd->inval_budget.size, xd->inval_budget.per_key,
			   xd->fault_budget.size, xd->fault_budget.per_key);
		xpmem_dev_put(xd);
	} else {
		seq_puts(m, "device: none\n");
	}
	seq_printf(m, "prefetch_pages: %u\n", READ_ONCE(prefetch_pages));
	if (READ_ONCE(xpmem_misbehave) != XPMEM_MISBEHAVE_OFF)
		seq_printf(m, "test_misbehave: %s\n", xpmem_misbehave_name());
	seq_puts(m, "# current (0 when nobody uses xpmem)\n");
	XPMEM_STAT(owners);
	XPMEM_STAT(segments);
	XPMEM_STAT(permits);
	XPMEM_STAT(attachments);
	XPMEM_STAT(pages_mapped);
	XPMEM_STAT(inval_sent_inflight);
	XPMEM_STAT(inval_recv_inflight);
	XPMEM_STAT(resolves_inflight);
	XPMEM_STAT(faults_inflight);
	seq_puts(m, "# totals since load\n");
	XPMEM_STAT(inval_sent);
	XPMEM_STAT(inval_targets);
	XPMEM_STAT(inval_revoked);
	XPMEM_STAT(inval_skipped);
	XPMEM_STAT(inval_recv);
	XPMEM_STAT(revoked_recv);
	XPMEM_STAT(resolves);
	XPMEM_STAT(resolved_pages);
	XPMEM_STAT(resolve_failures);
	XPMEM_STAT(faults);
	XPMEM_STAT(fault_pages);
	XPMEM_STAT(fault_sigbus);
	seq_puts(m, "# test_misbehave (tests only)\n");
	XPMEM_STAT(evbufs_parked);
	XPMEM_STAT(inval_ignored);
	XPMEM_STAT(resolves_ignored);
	XPMEM_STAT(bad_evbufs);
	return 0;
}

/* One line per named segment this VM exports: "<segid> <name>". */
static int xpmem_proc_names_show(struct seq_file *m, void *v)
{
	struct xpmem_dev *xd = xpmem_dev_get();

	if (xd) {
		xpmem_show_names(m, xd);
		xpmem_dev_put(xd);
	}
	return 0;
}

static struct proc_dir_entry *xpmem_proc_dir;

static int __init xpmem_init(void)
{
	int err;

	err = xpmem_fs_init();
	if (err)
		return err;

	xpmem_proc_dir = proc_mkdir("xpmem", NULL);
	if (!xpmem_proc_dir) {
		err = -ENOMEM;
		goto err_fs;
	}
	if (!proc_create_single("global_pages", 0444, xpmem_proc_dir,
				xpmem_proc_pages_show) ||
	    !proc_create_single("stats", 0444, xpmem_proc_dir,
				xpmem_proc_stats_show) ||
	    !proc_create_single("names", 0444, xpmem_proc_dir,
				xpmem_proc_names_show)) {
		err = -ENOMEM;
		goto err_proc;
	}

	err = misc_register(&xpmem_miscdev);
	if (err)
		goto err_proc;

	err = xpmem_virtio_init();
	if (err)
		goto err_misc;

	pr_info("xpmem: virtio-xpmem driver loaded, version %#x\n",
		XPMEM_CURRENT_VERSION);
	return 0;

err_misc:
	misc_deregister(&xpmem_miscdev);
err_proc:
	proc_remove(xpmem_proc_dir);
err_fs:
	xpmem_fs_exit();
	return err;
}

static void __exit xpmem_exit(void)
{
	xpmem_virtio_exit();
	misc_deregister(&xpmem_miscdev);
	proc_remove(xpmem_proc_dir);
	xpmem_fs_exit();
}

module_init(xpmem_init);
module_exit(xpmem_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("XPMEM across virtual machines over virtio-xpmem");
MODULE_AUTHOR("virtio-xpmem project");
