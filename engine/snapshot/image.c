/*
 * Copying an image into the store and back, with the copier. This is the
 * path for images and devices that nothing changes during the copy (the
 * caller's guarantee); snapshot/ adds the points in time.
 */
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>

#include <dsnap/snapshot.h>

#include "copier/copier.h"
#include "util/util.h"

int ds_image_backup(struct ds_store *s, int fd, uint64_t size, ds_chunk_id *root,
		    ds_progress_fn progress, void *opaque)
{
	struct copier_job j = {.s = s, .fd = fd, .progress = progress, .opaque = opaque};
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	j.m = ds_manifest_new(ds_store_chunk_size(s), size);
	if (!j.m)
		return -ENOMEM;
	j.seek_holes = S_ISREG(st.st_mode);
	r = copier_backup(&j);
	if (r == 0)
		r = ds_manifest_save(s, j.m, root);
	ds_manifest_free(j.m);
	return r;
}

int ds_image_restore(struct ds_store *s, const ds_chunk_id *root, int fd,
		     ds_progress_fn progress, void *opaque)
{
	struct copier_job j = {.s = s, .fd = fd, .progress = progress, .opaque = opaque};
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	r = ds_manifest_load(s, root, &j.m);
	if (r < 0)
		return r;
	if (S_ISREG(st.st_mode)) {
		/* Only into a new, empty file: a restore never overwrites a file. */
		if (st.st_size != 0)
			r = -EEXIST;
		else if (ftruncate(fd, (off_t)j.m->disk_size) < 0)
			r = -errno;
		j.zeros = ZERO_SKIP;
	} else if (S_ISBLK(st.st_mode)) {
		uint64_t dev_size;
		if (ioctl(fd, BLKGETSIZE64, &dev_size) < 0)
			r = -errno;
		else if (dev_size < j.m->disk_size)
			r = -ENOSPC;
		j.zeros = ZERO_WRITE;
	} else {
		r = -EINVAL;
	}
	if (r == 0)
		r = copier_restore(&j);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	ds_manifest_free(j.m);
	return r;
}
