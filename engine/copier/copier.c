/*
 * The copier.
 *
 * Notes on the design
 *
 * The image is cut into slabs of SLAB_BYTES (whole chunks). Workers (one
 * per CPU unless the job says, as an incremental does: its reads are few
 * and scattered, so it is bound by their latency, not the CPUs) claim
 * slabs in order from an atomic counter. Each worker owns an io_uring and
 * two slab buffers (registered for long copies), and double-buffers: while
 * it hashes, compresses and stores one slab (backup) or writes one (restore),
 * the other slab's I/O is in flight on its ring. So the disk is read with
 * a bounded depth (two slabs per worker) and the CPUs are busy at once.
 *
 * A slab's I/O is one SQE per run of consecutive chunks that need it, cut
 * at OP_MAX bytes (OP_PACED under a rate limit), with the chunks packed in
 * the slab's buffer (the n-th chunk that needs I/O at n chunks, wherever
 * it is in the slab): chunks in holes (backup, SEEK_DATA) are not read
 * and keep the zero id; zero chunks are not written (restore into a new
 * file), punched, or written as zeros (a device). Short transfers and
 * -EAGAIN are resubmitted for the remainder; a read that meets end of file
 * means the disk shrank under the copy and fails it with -EIO.
 *
 * Under a rate limit (max_rate: a live disk's copy while its users are
 * busy), each read waits for its share of time before it is submitted,
 * and reads are cut at OP_PACED: the disk sees a small read every few
 * milliseconds, not a slab's reads at once four times a second, which
 * queued the users' I/O behind megabytes at a time (their p99 latency).
 *
 * The first error stops every worker at its next slab; a worker always
 * waits for its in-flight SQEs before it frees their buffers.
 *
 * A worker's ring and buffers (its kit) are pooled across copies, and a
 * copy with one worker runs it in the caller's thread: for small disks,
 * setting these up was most of a copy's cost (see kit_get).
 */
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <liburing.h>

#include "copier/copier.h"
#include "util/util.h"

#define SLAB_BYTES (4u << 20)
#define OP_MAX (1u << 20)
#define OP_PACED (128u << 10) /* reads under a rate limit */
#define RING_ENTRIES 64
#define MAX_WORKERS 16
#define REGISTER_MIN_SLABS 8 /* 32 MiB and more: buffers are registered */

struct op {
	struct slab *sl;
	uint64_t off;     /* file offset */
	uint32_t buf_off; /* offset in the slab buffer */
	uint32_t len;
	bool write;
};

struct slab {
	uint8_t *buf;
	int buf_index; /* registered buffer index, -1 when not registered */
	uint64_t first, n; /* chunks [first, first + n) */
	unsigned pending;  /* ops in flight */
	int err;
	struct op *ops;
	unsigned nops;
	/* want[i - first]: chunk i is read (backup) or written (restore);
	 * WANT_AUDIT: read to check that it still matches the previous
	 * snapshot's id */
	uint8_t *want;
	int ioprio;
};

enum { WANT_NO = 0, WANT_YES = 1, WANT_AUDIT = 2 };

struct copier {
	struct copier_job *j;
	uint32_t cs;
	uint64_t slab_chunks, nslabs;
	atomic_uint_fast64_t next_slab;
	atomic_int err;
	pthread_mutex_t progress_lock;
	double next_free; /* pace: when the next slab may start (CLOCK_MONOTONIC s) */
};

/* A worker's ring and its two slab buffers. */
struct kit {
	struct io_uring ring;
	uint8_t *buf[2];
	size_t bytes;    /* of each buffer */
	bool registered; /* buffers registered with the ring */
};

struct worker {
	struct copier *c;
	struct kit *kit;
	struct io_uring *ring;
	struct slab sl[2];
};

static uint64_t chunk_len(const struct ds_manifest *m, uint64_t i)
{
	return MIN((uint64_t)m->chunk_size, m->disk_size - i * m->chunk_size);
}

static void set_err(struct copier *c, int err)
{
	int zero = 0;

	atomic_compare_exchange_strong(&c->err, &zero, err);
}

static bool stopping(struct copier *c)
{
	if (atomic_load(&c->err))
		return true;
	if (c->j->cancel && atomic_load(c->j->cancel)) {
		set_err(c, -ECANCELED);
		return true;
	}
	return false;
}

static bool claim(struct copier *c, struct slab *sl)
{
	uint64_t k;

	if (stopping(c))
		return false;
	k = atomic_fetch_add(&c->next_slab, 1);
	if (k >= c->nslabs)
		return false;
	sl->first = k * c->slab_chunks;
	sl->n = MIN(c->slab_chunks, c->j->m->count - sl->first);
	sl->pending = 0;
	sl->err = 0;
	sl->nops = 0;
	sl->ioprio = c->j->ioprio ? atomic_load(c->j->ioprio) : 0;
	return true;
}

static void progress(struct copier *c, const struct slab *sl)
{
	struct copier_job *j = c->j;
	uint64_t bytes = 0, done;

	for (uint64_t i = sl->first; i < sl->first + sl->n; i++)
		bytes += chunk_len(j->m, i);
	done = atomic_fetch_add(&j->bytes_done, bytes) + bytes;
	if (!j->progress)
		return;
	pthread_mutex_lock(&c->progress_lock);
	j->progress(done, j->m->disk_size, j->opaque);
	pthread_mutex_unlock(&c->progress_lock);
}

/* With a rate limit, each read takes its share of time: a worker sleeps
 * until the copy's next free moment (no catching up after a slow spell). */
static void pace(struct copier *c, uint64_t rate, uint64_t bytes)
{
	struct timespec now, ts;
	double start, until;

	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&c->progress_lock);
	start = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
	if (c->next_free < start)
		c->next_free = start;
	c->next_free += (double)bytes / (double)rate;
	until = c->next_free;
	pthread_mutex_unlock(&c->progress_lock);
	if (until - start <= 0)
		return;
	ts.tv_sec = (time_t)(until - start);
	ts.tv_nsec = (long)((until - start - (double)ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL);
}

static int submit_op(struct worker *w, struct op *op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(w->ring);
	struct slab *sl = op->sl;
	uint8_t *p = sl->buf + op->buf_off;
	int fd = w->c->j->fd;

	if (!sqe) {
		int r = io_uring_submit(w->ring);
		if (r < 0)
			return r;
		sqe = io_uring_get_sqe(w->ring);
		if (!sqe)
			return -EBUSY;
	}
	if (op->write && sl->buf_index >= 0)
		io_uring_prep_write_fixed(sqe, fd, p, op->len, op->off, sl->buf_index);
	else if (op->write)
		io_uring_prep_write(sqe, fd, p, op->len, op->off);
	else if (sl->buf_index >= 0)
		io_uring_prep_read_fixed(sqe, fd, p, op->len, op->off, sl->buf_index);
	else
		io_uring_prep_read(sqe, fd, p, op->len, op->off);
	sqe->ioprio = (uint16_t)sl->ioprio;
	io_uring_sqe_set_data(sqe, op);
	return 0;
}

/* Queues one op per run of chunks [a, b) of the slab, cut at OP_MAX; the
 * run's data is at slot (in chunks) of the slab's buffer. */
static int queue_run(struct worker *w, struct slab *sl, uint64_t a, uint64_t b, uint64_t slot,
		     bool write)
{
	const struct ds_manifest *m = w->c->j->m;
	uint64_t start = a * m->chunk_size;
	uint64_t end = MIN(b * (uint64_t)m->chunk_size, m->disk_size);
	uint64_t rate = write ? 0 : atomic_load(&w->c->j->max_rate);

	while (start < end) {
		struct op *op = &sl->ops[sl->nops++];
		int r;

		op->sl = sl;
		op->off = start;
		op->buf_off = (uint32_t)(slot * m->chunk_size + (start - a * m->chunk_size));
		op->len = (uint32_t)MIN((uint64_t)(rate ? OP_PACED : OP_MAX), end - start);
		op->write = write;
		if (rate)
			pace(w->c, rate, op->len);
		r = submit_op(w, op);
		if (r < 0) {
			sl->nops--;
			return r;
		}
		sl->pending++;
		start += op->len;
		/* queued ops count as pending: reap submits them again */
		if (rate && io_uring_submit(w->ring) < 0)
			return -EIO;
	}
	return 0;
}

/* Reaps completions until sl has nothing in flight. Short transfers and
 * -EAGAIN are resubmitted; completions of the other slab are handled too. */
static void reap(struct worker *w, struct slab *sl)
{
	while (sl->pending > 0) {
		struct io_uring_cqe *cqe;
		struct op *op;
		int res, r;

		io_uring_submit(w->ring);
		r = io_uring_wait_cqe(w->ring, &cqe);
		if (r == -EINTR)
			continue;
		if (r < 0) {
			/* The ring itself failed: nothing more will complete. */
			set_err(w->c, r);
			w->sl[0].pending = w->sl[1].pending = 0;
			return;
		}
		op = io_uring_cqe_get_data(cqe);
		res = cqe->res;
		io_uring_cqe_seen(w->ring, cqe);
		if (res == -EAGAIN || res == -EINTR) {
			r = submit_op(w, op);
		} else if (res < 0) {
			r = res;
		} else if (res == 0) {
			r = -EIO; /* end of file or device inside the image: it shrank */
		} else if ((uint32_t)res < op->len) {
			op->off += (uint32_t)res;
			op->buf_off += (uint32_t)res;
			op->len -= (uint32_t)res;
			r = submit_op(w, op);
		} else {
			op->sl->pending--;
			continue;
		}
		if (r < 0) {
			if (!op->sl->err)
				op->sl->err = r;
			op->sl->pending--;
		}
	}
}

static bool range_is_hole(int fd, uint64_t off, uint64_t len)
{
	off_t d = lseek(fd, (off_t)off, SEEK_DATA);
	struct stat st;

	if (d >= 0)
		return (uint64_t)d >= off + len;
	/* ENXIO: no data from off to the end of the file, or off is past the
	 * end. A range past the end is read, and the read fails the copy (the
	 * file shrank), rather than passing for zeros. */
	return errno == ENXIO && fstat(fd, &st) == 0 && (uint64_t)st.st_size >= off + len;
}

/* ---- backup --------------------------------------------------------------- */

/* Queues reads (or writes) for the runs of the slab's wanted chunks. The
 * wanted chunks sit packed in the buffer, in order: the n-th at n chunks
 * (so a sparse incremental touches few pages of it). */
static int queue_wanted(struct worker *w, struct slab *sl, bool write)
{
	uint64_t run = UINT64_MAX, slot = 0;
	int r = 0;

	for (uint64_t k = 0; k <= sl->n && r == 0; k++) {
		bool want = k < sl->n && sl->want[k];
		if (want && run == UINT64_MAX)
			run = k;
		if (!want && run != UINT64_MAX) {
			r = queue_run(w, sl, sl->first + run, sl->first + k, slot, write);
			slot += k - run;
			run = UINT64_MAX;
		}
	}
	if (r == 0 && sl->nops > 0 && io_uring_submit(w->ring) < 0)
		r = -EIO;
	return r;
}

static bool unchanged(const struct copier_job *j, uint64_t i)
{
	return j->prev && j->changed && !((j->changed[i / 64] >> (i % 64)) & 1);
}

static int backup_submit(struct worker *w, struct slab *sl)
{
	struct copier_job *j = w->c->j;

	for (uint64_t k = 0; k < sl->n; k++) {
		uint64_t i = sl->first + k;
		if (unchanged(j, i)) {
			/* The previous snapshot's chunk; now and then read anyway. */
			j->m->ids[i] = j->prev->ids[i];
			sl->want[k] = j->audit_every && (i + j->audit_seed) % j->audit_every == 0
					      ? WANT_AUDIT : WANT_NO;
			continue;
		}
		sl->want[k] = !(j->seek_holes &&
				range_is_hole(j->fd, i * j->m->chunk_size, chunk_len(j->m, i)));
		if (!sl->want[k])
			memset(&j->m->ids[i], 0, sizeof(j->m->ids[i]));
	}
	return queue_wanted(w, sl, false);
}

/* An audited chunk: does what was read still match the previous id? */
static void audit(struct copier_job *j, uint64_t i, const ds_chunk_id *id)
{
	atomic_fetch_add(&j->audited, 1);
	if (memcmp(id, &j->prev->ids[i], sizeof(*id)) != 0)
		atomic_fetch_add(&j->audit_mismatch, 1);
}

/* Hashes, compresses and stores the chunks a slab read. */
static int backup_store(struct worker *w, struct slab *sl, struct ds_chunk *batch)
{
	struct copier_job *j = w->c->j;
	uint32_t cs = j->m->chunk_size;
	uint64_t read = 0, stored = 0;
	size_t n = 0;
	int r;

	for (uint64_t k = 0; k < sl->n; k++) {
		if (!sl->want[k])
			continue;
		batch[n].data = sl->buf + n * cs; /* packed (queue_wanted) */
		batch[n].len = (uint32_t)chunk_len(j->m, sl->first + k);
		n++;
	}
	if (n == 0)
		return 0;
	/* Durable at the end (the manifest's put flushes), not per slab:
	 * the worker goes on compressing while earlier slabs reach disk. */
	r = ds_store_add(j->s, batch, n);
	if (r < 0)
		return r;
	n = 0;
	for (uint64_t k = 0; k < sl->n; k++) {
		if (!sl->want[k])
			continue;
		if (sl->want[k] == WANT_AUDIT)
			audit(j, sl->first + k, &batch[n].id);
		j->m->ids[sl->first + k] = batch[n].id;
		read += batch[n].len;
		stored += batch[n].stored_len;
		n++;
	}
	atomic_fetch_add(&j->bytes_read, read);
	atomic_fetch_add(&j->bytes_stored, stored);
	return 0;
}

/* ---- restore -------------------------------------------------------------- */

/* Reads (and verifies) the slab's chunks from the store into its buffer;
 * punches zero runs when asked. */
static int restore_fill(struct worker *w, struct slab *sl, struct ds_chunk *batch)
{
	struct copier_job *j = w->c->j;
	uint32_t cs = j->m->chunk_size;
	size_t n = 0;
	int r = 0;

	for (uint64_t k = 0; k < sl->n; k++) {
		uint64_t i = sl->first + k;
		bool zero = ds_chunk_id_is_zero(&j->m->ids[i]);

		sl->want[k] = !zero || j->zeros == ZERO_WRITE;
		if (zero && j->zeros == ZERO_PUNCH &&
		    fallocate(j->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)(i * cs), (off_t)chunk_len(j->m, i)) < 0)
			sl->want[k] = true; /* no hole punching here: write zeros */
		if (!sl->want[k])
			continue;
		batch[n].id = j->m->ids[i];
		batch[n].data = sl->buf + n * cs; /* packed (queue_wanted) */
		n++;
	}
	if (n > 0)
		r = ds_store_get(j->s, batch, n);
	n = 0;
	for (uint64_t k = 0; k < sl->n && r == 0; k++) {
		if (!sl->want[k])
			continue;
		if (batch[n].len < chunk_len(j->m, sl->first + k))
			r = -EBADMSG; /* a chunk shorter than its place in the image */
		n++;
	}
	return r;
}

/* ---- workers -------------------------------------------------------------- */

/*
 * Kits outlive a copy. A fresh slab buffer is faulted in page by page at
 * its first read and unmapped with a TLB shootdown when freed; on a VM
 * that cost more than reading, hashing and storing a small disk (7 ms of
 * CPU for a 1 MiB copy, most of it there). Up to KIT_POOL kits of
 * SLAB_BYTES buffers are kept, so an idle dsnapd holds at most
 * KIT_POOL x 8 MiB for them, and only the pages a copy touched.
 */
#define KIT_POOL 4
static pthread_mutex_t kit_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kit *kit_pool[KIT_POOL];
static unsigned kit_count;

static void kit_free(struct kit *k)
{
	if (!k)
		return;
	io_uring_queue_exit(&k->ring);
	free(k->buf[0]);
	free(k->buf[1]);
	free(k);
}

static struct kit *kit_get(size_t bytes)
{
	struct kit *k = NULL;

	if (bytes <= SLAB_BYTES) {
		pthread_mutex_lock(&kit_lock);
		if (kit_count > 0)
			k = kit_pool[--kit_count];
		pthread_mutex_unlock(&kit_lock);
		if (k)
			return k;
		bytes = SLAB_BYTES;
	}
	k = calloc(1, sizeof(*k));
	if (!k)
		return NULL;
	k->bytes = bytes;
	if (io_uring_queue_init(RING_ENTRIES, &k->ring, 0) < 0) {
		free(k);
		return NULL;
	}
	if (posix_memalign((void **)&k->buf[0], 4096, bytes) ||
	    posix_memalign((void **)&k->buf[1], 4096, bytes)) {
		kit_free(k);
		return NULL;
	}
	return k;
}

/* Back to the pool when idle (nothing in flight) and of the pooled size. */
static void kit_put(struct kit *k, bool idle)
{
	pthread_mutex_lock(&kit_lock);
	if (k && idle && k->bytes == SLAB_BYTES && kit_count < KIT_POOL) {
		kit_pool[kit_count++] = k;
		k = NULL;
	}
	pthread_mutex_unlock(&kit_lock);
	kit_free(k);
}

static int worker_init(struct worker *w, struct copier *c)
{
	size_t bytes = (size_t)c->slab_chunks * c->cs;

	memset(w, 0, sizeof(*w));
	w->c = c;
	w->kit = kit_get(bytes);
	if (!w->kit)
		return -ENOMEM;
	w->ring = &w->kit->ring;
	/* Registered buffers save pinning pages on every I/O; without them
	 * (RLIMIT_MEMLOCK) plain reads and writes work the same. Registering
	 * pins both buffers at once (1-5 ms on a VM): a copy of a few slabs
	 * does not repay it, a kit that has them keeps them. Nor does an
	 * incremental (changed set), whose reads are few: registering would
	 * pin all of every worker's buffers where it touches a few chunks. */
	if (!w->kit->registered && c->nslabs >= REGISTER_MIN_SLABS && !c->j->changed) {
		struct iovec iov[2] = {{w->kit->buf[0], w->kit->bytes}, {w->kit->buf[1], w->kit->bytes}};
		w->kit->registered = io_uring_register_buffers(w->ring, iov, 2) == 0;
	}
	for (int i = 0; i < 2; i++) {
		struct slab *sl = &w->sl[i];
		sl->buf = w->kit->buf[i];
		sl->buf_index = w->kit->registered ? i : -1;
		sl->ops = calloc(c->slab_chunks + bytes / OP_PACED + 2, sizeof(*sl->ops));
		sl->want = calloc(c->slab_chunks, sizeof(*sl->want));
		if (!sl->ops || !sl->want)
			return -ENOMEM;
	}
	return 0;
}

/* idle: the worker ran to its end, so nothing of its ring is in flight. */
static void worker_release(struct worker *w, bool idle)
{
	kit_put(w->kit, idle);
	for (int i = 0; i < 2; i++) {
		free(w->sl[i].ops);
		free(w->sl[i].want);
	}
}

static void *backup_worker(void *arg)
{
	struct worker *w = arg;
	struct copier *c = w->c;
	struct ds_chunk *batch = calloc(c->slab_chunks, sizeof(*batch));
	struct slab *cur = &w->sl[0], *next = &w->sl[1];
	bool have_cur, have_next;
	int r = batch ? 0 : -ENOMEM;

	if (c->j->idle_cpu) {
		struct sched_param sp = {0};
		pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	}
	have_cur = r == 0 && claim(c, cur);
	if (have_cur && (r = backup_submit(w, cur)) < 0)
		cur->err = r;
	while (have_cur) {
		have_next = claim(c, next);
		if (have_next && (r = backup_submit(w, next)) < 0)
			next->err = r;
		reap(w, cur);
		r = cur->err;
		if (r == 0)
			r = backup_store(w, cur, batch);
		/* After the store: once a live disk's tracker counts a chunk
		 * copied, its id is final (instant access reads it from the
		 * store from then on). */
		if (r == 0 && c->j->read_done)
			c->j->read_done(c->j->opaque, cur->first, cur->n);
		if (r == 0 && c->j->still_valid && !c->j->still_valid(c->j->opaque))
			r = -ESTALE;
		if (r < 0)
			set_err(c, r);
		else
			progress(c, cur);
		if (r < 0 && have_next) {
			reap(w, next); /* its buffer must be idle before it is freed */
			have_next = false;
		}
		struct slab *t = cur;
		cur = next;
		next = t;
		have_cur = have_next;
	}
	if (!batch)
		set_err(c, -ENOMEM);
	free(batch);
	return NULL;
}

static void *restore_worker(void *arg)
{
	struct worker *w = arg;
	struct copier *c = w->c;
	struct ds_chunk *batch = calloc(c->slab_chunks, sizeof(*batch));
	struct slab *cur = &w->sl[0], *next = &w->sl[1];
	bool have_cur, have_next;
	int r = batch ? 0 : -ENOMEM;

	have_cur = r == 0 && claim(c, cur);
	if (have_cur) {
		r = restore_fill(w, cur, batch);
		if (r == 0)
			r = queue_wanted(w, cur, true);
		if (r < 0)
			cur->err = r;
	}
	while (have_cur) {
		/* Decode the next slab while this one's writes are in flight. */
		have_next = claim(c, next);
		if (have_next && (r = restore_fill(w, next, batch)) < 0)
			next->err = r;
		reap(w, cur);
		r = cur->err;
		if (r < 0) {
			set_err(c, r);
			break; /* next has nothing in flight: it was filled, not queued */
		}
		progress(c, cur);
		if (have_next && next->err == 0 && (r = queue_wanted(w, next, true)) < 0)
			next->err = r;
		if (have_next && next->err < 0) {
			reap(w, next);
			set_err(c, next->err);
			have_next = false;
		}
		struct slab *t = cur;
		cur = next;
		next = t;
		have_cur = have_next;
	}
	if (!batch)
		set_err(c, -ENOMEM);
	free(batch);
	return NULL;
}

static int run(struct copier_job *j, void *(*fn)(void *))
{
	struct copier c = {.j = j};
	struct worker *w;
	pthread_t t[MAX_WORKERS];
	unsigned n = j->workers;
	unsigned started = 0;
	int r = 0;

	c.cs = j->m->chunk_size;
	/* A small disk gets slabs of its own size, not 4 MiB buffers. */
	c.slab_chunks = MIN((uint64_t)MAX(1u, SLAB_BYTES / c.cs), MAX((uint64_t)1, j->m->count));
	c.nslabs = j->m->count / c.slab_chunks + (j->m->count % c.slab_chunks != 0);
	if (c.nslabs == 0)
		return 0;
	if (n == 0)
		n = (unsigned)MAX(1L, sysconf(_SC_NPROCESSORS_ONLN));
	n = (unsigned)MIN((uint64_t)MIN(n, MAX_WORKERS), c.nslabs);
	w = calloc(n, sizeof(*w));
	if (!w)
		return -ENOMEM;
	pthread_mutex_init(&c.progress_lock, NULL);
	/* One worker (a small disk) runs in the caller's thread, unless it
	 * changes its scheduling class (idle_cpu). */
	bool inline_one = n == 1 && !j->idle_cpu;
	for (unsigned i = 0; i < n && r == 0; i++) {
		r = worker_init(&w[i], &c);
		if (r == 0 && inline_one)
			fn(&w[0]);
		else if (r == 0 && pthread_create(&t[i], NULL, fn, &w[i]) != 0)
			r = -EAGAIN;
		if (r == 0 && !inline_one)
			started++;
	}
	if (r < 0)
		set_err(&c, r);
	for (unsigned i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	r = atomic_load(&c.err);
	/* After an error a ring may hold SQEs never submitted: not reused. */
	for (unsigned i = 0; i < n; i++)
		worker_release(&w[i], r == 0 && w[i].ring && io_uring_sq_ready(w[i].ring) == 0);
	free(w);
	pthread_mutex_destroy(&c.progress_lock);
	return r;
}

int copier_backup(struct copier_job *j)
{
	return run(j, backup_worker);
}

int copier_restore(struct copier_job *j)
{
	return run(j, restore_worker);
}
