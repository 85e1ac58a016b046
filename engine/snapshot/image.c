/*
 * Copying an image into the store and back.
 *
 * The image is cut into batches of IMAGE_BATCH chunks; one worker per CPU
 * takes batch after batch (an atomic counter hands them out), reads it with
 * pread, and puts it (hashing and compressing in the worker). Restore runs
 * the same way in reverse. Holes are found with SEEK_DATA/SEEK_HOLE and
 * never read. This is the plain-file path; the io_uring copier replaces the
 * reads for live disks.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>

#include <dsnap/snapshot.h>

#include "util/util.h"

#define IMAGE_BATCH 32
#define IMAGE_MAX_WORKERS 16

struct job {
	struct ds_store *s;
	struct ds_manifest *m;
	int fd;
	bool is_file;      /* restore: leave zero chunks as holes */
	bool seek_data;    /* backup: the fd supports SEEK_DATA */
	atomic_uint_fast64_t next_batch;
	atomic_uint_fast64_t done_bytes;
	atomic_int err;
	pthread_mutex_t progress_lock;
	ds_progress_fn progress;
	void *opaque;
};

static uint64_t chunk_len(const struct ds_manifest *m, uint64_t i)
{
	uint64_t off = i * m->chunk_size;

	return MIN((uint64_t)m->chunk_size, m->disk_size - off);
}

static void job_progress(struct job *j, uint64_t bytes)
{
	uint64_t done = atomic_fetch_add(&j->done_bytes, bytes) + bytes;

	if (!j->progress)
		return;
	pthread_mutex_lock(&j->progress_lock);
	j->progress(done, j->m->disk_size, j->opaque);
	pthread_mutex_unlock(&j->progress_lock);
}

/* True when [off, off + len) has no data (a hole); probes with SEEK_DATA. */
static bool range_is_hole(int fd, uint64_t off, uint64_t len)
{
	off_t d = lseek(fd, (off_t)off, SEEK_DATA);

	if (d < 0)
		return errno == ENXIO; /* no data from off to the end */
	return (uint64_t)d >= off + len;
}

static void *backup_worker(void *arg)
{
	struct job *j = arg;
	uint32_t cs = j->m->chunk_size;
	struct ds_chunk c[IMAGE_BATCH];
	uint64_t slot[IMAGE_BATCH];
	uint8_t *buf = malloc((size_t)cs * IMAGE_BATCH);
	uint64_t nbatches = j->m->count / IMAGE_BATCH + (j->m->count % IMAGE_BATCH != 0);

	if (!buf) {
		atomic_store(&j->err, -ENOMEM);
		return NULL;
	}
	while (atomic_load(&j->err) == 0) {
		uint64_t b = atomic_fetch_add(&j->next_batch, 1), first = b * IMAGE_BATCH, bytes = 0;
		size_t n = 0;
		int r = 0;

		if (b >= nbatches)
			break;
		for (uint64_t i = first; i < MIN(first + IMAGE_BATCH, j->m->count) && r == 0; i++) {
			uint64_t len = chunk_len(j->m, i), off = i * cs;

			bytes += len;
			if (j->seek_data && range_is_hole(j->fd, off, len))
				continue; /* stays the zero id */
			c[n].data = buf + n * (size_t)cs;
			c[n].len = (uint32_t)len;
			r = pread_full(j->fd, c[n].data, len, off);
			if (r == -ENODATA)
				r = -EIO; /* the image shrank under the copy */
			slot[n++] = i;
		}
		if (r == 0 && n > 0)
			r = ds_store_put(j->s, c, n);
		if (r < 0) {
			int zero = 0;
			atomic_compare_exchange_strong(&j->err, &zero, r);
			break;
		}
		for (size_t k = 0; k < n; k++)
			j->m->ids[slot[k]] = c[k].id;
		job_progress(j, bytes);
	}
	free(buf);
	return NULL;
}

static void *restore_worker(void *arg)
{
	struct job *j = arg;
	uint32_t cs = j->m->chunk_size;
	struct ds_chunk c[IMAGE_BATCH];
	uint64_t slot[IMAGE_BATCH];
	uint8_t *buf = malloc((size_t)cs * IMAGE_BATCH);
	uint64_t nbatches = j->m->count / IMAGE_BATCH + (j->m->count % IMAGE_BATCH != 0);

	if (!buf) {
		atomic_store(&j->err, -ENOMEM);
		return NULL;
	}
	while (atomic_load(&j->err) == 0) {
		uint64_t b = atomic_fetch_add(&j->next_batch, 1), first = b * IMAGE_BATCH, bytes = 0;
		size_t n = 0;
		int r = 0;

		if (b >= nbatches)
			break;
		for (uint64_t i = first; i < MIN(first + IMAGE_BATCH, j->m->count); i++) {
			bytes += chunk_len(j->m, i);
			if (j->is_file && ds_chunk_id_is_zero(&j->m->ids[i]))
				continue; /* a hole in the sized file */
			c[n].id = j->m->ids[i];
			c[n].data = buf + n * (size_t)cs;
			slot[n++] = i;
		}
		if (n > 0)
			r = ds_store_get(j->s, c, n);
		for (size_t k = 0; k < n && r == 0; k++) {
			uint64_t len = chunk_len(j->m, slot[k]);
			if (c[k].len < len)
				r = -EBADMSG; /* a chunk shorter than its place */
			else
				r = pwrite_full(j->fd, c[k].data, len, slot[k] * cs);
		}
		if (r < 0) {
			int zero = 0;
			atomic_compare_exchange_strong(&j->err, &zero, r);
			break;
		}
		job_progress(j, bytes);
	}
	free(buf);
	return NULL;
}

static int run_workers(struct job *j, void *(*fn)(void *))
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int n = (int)MAX(1, MIN(ncpu, IMAGE_MAX_WORKERS));
	pthread_t t[IMAGE_MAX_WORKERS];
	int started = 0;

	pthread_mutex_init(&j->progress_lock, NULL);
	for (int i = 0; i < n; i++) {
		if (pthread_create(&t[i], NULL, fn, j) != 0)
			break;
		started++;
	}
	if (started == 0)
		fn(j);
	for (int i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	pthread_mutex_destroy(&j->progress_lock);
	return atomic_load(&j->err);
}

int ds_image_backup(struct ds_store *s, int fd, uint64_t size, ds_chunk_id *root,
		    ds_progress_fn progress, void *opaque)
{
	struct job j = {.s = s, .fd = fd, .progress = progress, .opaque = opaque};
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	j.m = ds_manifest_new(ds_store_chunk_size(s), size);
	if (!j.m)
		return -ENOMEM;
	j.seek_data = S_ISREG(st.st_mode) && lseek(fd, 0, SEEK_DATA) >= 0;
	if (S_ISREG(st.st_mode) && !j.seek_data && errno == ENXIO)
		j.seek_data = true; /* an image with no data at all */
	r = run_workers(&j, backup_worker);
	if (r == 0)
		r = ds_manifest_save(s, j.m, root);
	ds_manifest_free(j.m);
	return r;
}

int ds_image_restore(struct ds_store *s, const ds_chunk_id *root, int fd,
		     ds_progress_fn progress, void *opaque)
{
	struct job j = {.s = s, .fd = fd, .progress = progress, .opaque = opaque};
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
		j.is_file = true;
	} else if (S_ISBLK(st.st_mode)) {
		uint64_t dev_size;
		if (ioctl(fd, BLKGETSIZE64, &dev_size) < 0)
			r = -errno;
		else if (dev_size < j.m->disk_size)
			r = -ENOSPC;
	} else {
		r = -EINVAL;
	}
	if (r == 0)
		r = run_workers(&j, restore_worker);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	ds_manifest_free(j.m);
	return r;
}
