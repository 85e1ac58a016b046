/*
 * Views: a snapshot read as an image, also while its copy runs.
 *
 * Notes on the design
 *
 * A snapshot is Available as soon as its point in time is fixed (instant
 * access). While the copy runs, chunk i of the point in time is in one of
 * two places:
 *   - not yet copied: in the copy's source. For a live disk that is the
 *     base, which the tracker keeps unchanged for chunks it does not count
 *     copied (cow.c); for a disk not attached, the clone, the O_EXCL
 *     device or the leased file the copier reads.
 *   - copied: in the store, under m->ids[i]. The copier counts a chunk
 *     copied only after storing it (copier.c), and the tracker's bit is set
 *     with release order, so a reader that sees the bit sees the id.
 *
 * Reading chunk i while COPYING (read_chunk):
 *   1. copied(i): the id is final; read it from the store. A chunk added
 *      since the store's last flush is not readable yet (ds_store_add): on
 *      -ENOENT the store is flushed once and the read retried.
 *   2. else: enter the base section (base_readers++), check the state is
 *      still COPYING, pread the source, then check again that i is still
 *      not copied and the snapshot has not failed (a lease unbroken for a
 *      disk not attached). If so, the bytes are the point in time: every
 *      write that reaches the base for chunk i is routed after copied(i) is
 *      set, which is after this check, which is after the pread returned.
 *      If not, the bytes are dropped and the chunk is read again (from the
 *      store, or it fails).
 * A failed snapshot (overlay full, lease broken, copy error) marks every
 * chunk copied, ids or not: the state, and cow_failed, are checked after
 * the bit, so a failed snapshot never serves a zero id as data.
 *
 * view_end runs before the copy's source goes (cow_copy_end marks every
 * chunk copied and starts the merge into the base; disk_pit_release closes
 * the fd): it sets DONE or FAILED and waits until no reader is inside a
 * base section. Readers that come later see the state first.
 *
 * The view owns the manifest; the job, each attachment and each export
 * hold a reference.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshot/view.h"
#include "util/util.h"

enum { VIEW_COPYING, VIEW_DONE, VIEW_FAILED, VIEW_CLOSED };

struct view {
	atomic_int refs;
	atomic_int state;
	struct ds_store *store;
	struct ds_manifest *m;
	struct cow *cow;             /* while COPYING: a live disk's tracker, or NULL */
	const struct disk_pit *pit;  /* while COPYING: the copy's source */
	atomic_long base_readers;    /* reads inside a base section */
	atomic_long readers;         /* reads in flight (view_close waits) */
	atomic_bool incremental;     /* the copy takes unchanged chunks from prev */
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

static struct view *view_alloc(struct ds_store *s, struct ds_manifest *m, int state)
{
	struct view *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	atomic_init(&v->refs, 1);
	atomic_init(&v->state, state);
	v->store = s;
	v->m = m;
	pthread_mutex_init(&v->mu, NULL);
	pthread_cond_init(&v->cv, NULL);
	return v;
}

struct view *view_new(struct ds_store *s, struct ds_manifest *m, struct cow *cow,
		      const struct disk_pit *pit)
{
	struct view *v = view_alloc(s, m, VIEW_COPYING);

	if (v) {
		v->cow = cow;
		v->pit = pit;
	}
	return v;
}

struct view *view_new_done(struct ds_store *s, struct ds_manifest *m)
{
	return view_alloc(s, m, VIEW_DONE);
}

void view_ref(struct view *v)
{
	atomic_fetch_add(&v->refs, 1);
}

void view_unref(struct view *v)
{
	if (!v || atomic_fetch_sub(&v->refs, 1) != 1)
		return;
	ds_manifest_free(v->m);
	pthread_mutex_destroy(&v->mu);
	pthread_cond_destroy(&v->cv);
	free(v);
}

/* Waits until *counter is 0 (the readers signal when they leave). */
static void drain(struct view *v, atomic_long *counter)
{
	pthread_mutex_lock(&v->mu);
	while (atomic_load(counter) > 0)
		pthread_cond_wait(&v->cv, &v->mu);
	pthread_mutex_unlock(&v->mu);
}

static void leave(struct view *v, atomic_long *counter)
{
	if (atomic_fetch_sub(counter, 1) == 1 && atomic_load(&v->state) != VIEW_COPYING) {
		pthread_mutex_lock(&v->mu);
		pthread_cond_broadcast(&v->cv);
		pthread_mutex_unlock(&v->mu);
	}
}

void view_end(struct view *v, bool ok)
{
	atomic_store(&v->state, ok ? VIEW_DONE : VIEW_FAILED);
	pthread_mutex_lock(&v->mu);
	pthread_cond_broadcast(&v->cv); /* exports waiting for the end */
	pthread_mutex_unlock(&v->mu);
	/* cow and pit are only used inside a base section, entered while
	 * COPYING: after this drain no reader touches them. */
	drain(v, &v->base_readers);
}

void view_set_incremental(struct view *v)
{
	atomic_store(&v->incremental, true);
}

bool view_failed(struct view *v)
{
	return atomic_load(&v->state) == VIEW_FAILED;
}

void view_close(struct view *v)
{
	atomic_store(&v->state, VIEW_CLOSED);
	drain(v, &v->base_readers);
	drain(v, &v->readers);
}

uint64_t view_size(const struct view *v)
{
	return v->m->disk_size;
}

static uint32_t chunk_bytes(const struct view *v, uint64_t i)
{
	return (uint32_t)MIN((uint64_t)v->m->chunk_size, v->m->disk_size - i * v->m->chunk_size);
}

/* Chunk i from the store into buf (chunk_size bytes). */
static int store_read(struct view *v, uint64_t i, void *buf)
{
	struct ds_chunk c = {.id = v->m->ids[i], .data = buf};
	/* A chunk the copy added since the store's last flush reads too
	 * (ds_store_add): no reader forces a flush (a device cache flush). */
	int r = ds_store_get(v->store, &c, 1);

	if (r == 0 && c.len < chunk_bytes(v, i))
		r = -EBADMSG;
	return r;
}

/* pread of chunk i of the copy's source (O_DIRECT: whole 4 KiB blocks;
 * the disk may end inside the last one, which then reads short). */
static int base_read(struct view *v, uint64_t i, uint8_t *buf)
{
	uint32_t len = chunk_bytes(v, i);
	size_t head = len & ~(size_t)4095, tail = len - head;
	uint64_t off = i * v->m->chunk_size;
	int r = head ? pread_full(v->pit->fd, buf, head, off) : 0;

	if (r == 0 && tail) {
		ssize_t n = pread(v->pit->fd, buf + head, 4096, (off_t)(off + head));
		if (n < 0)
			r = -errno;
		else if ((size_t)n < tail)
			r = -EIO; /* the disk shrank */
	}
	return r;
}

/* Chunk i of the point in time into buf (chunk_size bytes, 4 KiB aligned). */
static int read_chunk(struct view *v, uint64_t i, uint8_t *buf)
{
	for (;;) {
		int st = atomic_load(&v->state), r;
		bool ok, copied;

		if (st == VIEW_DONE)
			return store_read(v, i, buf);
		if (st != VIEW_COPYING)
			return -EIO;
		/* The source and the tracker are used inside the section only:
		 * view_end waits for it before either goes. */
		atomic_fetch_add(&v->base_readers, 1);
		if (atomic_load(&v->state) != VIEW_COPYING) {
			leave(v, &v->base_readers);
			continue;
		}
		copied = v->cow && cow_chunk_copied(v->cow, i);
		if (copied) {
			bool failed = atomic_load(&v->state) == VIEW_FAILED || cow_failed(v->cow);
			leave(v, &v->base_readers);
			return failed ? -EIO : store_read(v, i, buf); /* its id is final */
		}
		r = base_read(v, i, buf);
		ok = v->cow ? !cow_chunk_copied(v->cow, i) && !cow_failed(v->cow)
			    : disk_pit_intact(v->pit);
		copied = v->cow && !cow_failed(v->cow);
		leave(v, &v->base_readers);
		if (r < 0)
			return r;
		if (ok)
			return 0;
		if (!copied)
			return -EIO; /* the lease was broken, or the overlay filled */
		/* copied while it was read: read it again, from the store */
	}
}

/* A chunk-sized buffer for the calling thread's partial-chunk reads, kept
 * from one read to the next (a read of 4 KiB allocated 256 KiB, through
 * mmap, each time); freed when the thread exits. */
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

struct bounce {
	size_t len;
	uint8_t *p;
};

static void bounce_free(void *arg)
{
	struct bounce *b = arg;

	free(b->p);
	free(b);
}

static void bounce_init(void)
{
	if (pthread_key_create(&bounce_key, bounce_free) != 0)
		abort(); /* out of keys at start: cannot go on */
}

static uint8_t *bounce_get(size_t len)
{
	struct bounce *b;

	pthread_once(&bounce_once, bounce_init);
	b = pthread_getspecific(bounce_key);
	if (!b) {
		if (!(b = calloc(1, sizeof(*b))))
			return NULL;
		if (pthread_setspecific(bounce_key, b) != 0) {
			free(b);
			return NULL;
		}
	}
	if (b->len < len) {
		free(b->p);
		b->p = NULL;
		b->len = 0;
		if (posix_memalign((void **)&b->p, 4096, len))
			return NULL;
		b->len = len;
	}
	return b->p;
}

ssize_t view_read(void *view, void *buf, size_t len, uint64_t off)
{
	struct view *v = view;
	uint32_t cs = v->m->chunk_size;
	uint8_t *bounce = NULL;
	size_t done = 0;
	int r = 0;

	if (off >= v->m->disk_size)
		return 0;
	len = (size_t)MIN((uint64_t)len, v->m->disk_size - off);
	atomic_fetch_add(&v->readers, 1);
	while (r == 0 && done < len) {
		uint64_t pos = off + done, i = pos / cs;
		size_t in = (size_t)(pos - i * cs), n = MIN((size_t)cs - in, len - done);
		uint8_t *to = (uint8_t *)buf + done;
		if (in == 0 && n == cs && cs % 4096 == 0 && (uintptr_t)to % 4096 == 0) {
			r = read_chunk(v, i, to); /* a whole chunk: in place */
		} else if (bounce || (bounce = bounce_get(((size_t)cs + 4095) & ~(size_t)4095))) {
			r = read_chunk(v, i, bounce);
			if (r == 0)
				memcpy(to, bounce + in, n);
		} else {
			r = -ENOMEM;
		}
		done += n;
	}
	leave(v, &v->readers);
	return r < 0 ? r : (ssize_t)len;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/*
 * Where the zeros from chunk i on end (i when chunk i may hold data): a
 * zero id in the manifest once the copy is done, or, while a disk that is
 * not attached is copied, a hole of its held source (SEEK_DATA; the lease
 * checked after, as for a read). A live disk's base is read chunk by chunk.
 */
static uint64_t skip_hole(struct view *v, uint64_t i)
{
	static const ds_chunk_id zero;
	uint64_t cs = v->m->chunk_size, next = i;
	int st = atomic_load(&v->state);

	if (st == VIEW_DONE) {
		while (next < v->m->count && memcmp(&v->m->ids[next], &zero, sizeof(zero)) == 0)
			next++;
		return next;
	}
	if (st != VIEW_COPYING || v->cow)
		return i;
	atomic_fetch_add(&v->base_readers, 1);
	if (atomic_load(&v->state) == VIEW_COPYING) {
		off_t data = lseek(v->pit->fd, (off_t)(i * cs), SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			next = v->m->count;
		else if (data >= 0)
			next = MIN((uint64_t)data / cs, v->m->count);
		if (!disk_pit_intact(v->pit))
			next = i; /* read, and fail */
	}
	leave(v, &v->base_readers);
	return next;
}

int view_export(struct view *v, int fd)
{
	uint32_t cs = v->m->chunk_size;
	uint8_t *buf = NULL;
	int r = 0;

	if (ftruncate(fd, (off_t)v->m->disk_size) < 0)
		return -errno;
	if (posix_memalign((void **)&buf, 4096, ((size_t)cs + 4095) & ~(size_t)4095))
		return -ENOMEM;
	for (uint64_t i = 0; r == 0 && i < v->m->count; i++) {
		uint32_t len = chunk_bytes(v, i);
		uint64_t next = skip_hole(v, i);
		if (next > i) {
			i = next - 1; /* zeros: the new file is sparse there */
			continue;
		}
		ssize_t n = view_read(v, buf, len, i * cs), w;
		if (n < 0) {
			r = (int)n;
		} else if (!all_zero(buf, len)) {
			w = pwrite(fd, buf, len, (off_t)(i * cs));
			r = w == (ssize_t)len ? 0 : w < 0 ? -errno : -EIO;
		}
	}
	free(buf);
	/* Chunks an incremental copy takes from the previous snapshot are
	 * trusted only once its audit passed: an export made during such a
	 * copy ends with it, and fails with it. */
	pthread_mutex_lock(&v->mu);
	while (r == 0 && atomic_load(&v->incremental) && atomic_load(&v->state) == VIEW_COPYING)
		pthread_cond_wait(&v->cv, &v->mu);
	pthread_mutex_unlock(&v->mu);
	if (r == 0 && atomic_load(&v->incremental) && atomic_load(&v->state) != VIEW_DONE)
		r = -EIO;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	return r;
}
