/*
 * The copy-on-write tracker (DESIGN.md decision 1: redirect on write).
 *
 * Notes on the design
 *
 * Words. The base is the disk's backing (image file or block device).
 * The overlay is a sparse file in the state folder, the size of the disk,
 * holding redirected blocks at their own offsets. Blocks are 4 KiB; chunks
 * are the store's (the copier reads whole chunks).
 *
 * State, per block: redirected (its newest data is in the overlay) and
 * dirty (written in the overlay since its last merge); per chunk: copied
 * (the copier has read it from the base) and changed (written since the
 * last accomplished snapshot: changed-block tracking). Per tracker:
 * active (a snapshot's copy runs), busy (active, or redirected blocks
 * remain), failed (the overlay could not grow).
 *
 * Where I/O goes, while busy:
 *  - a read of a redirected block goes to the overlay, any other to the
 *    base (a block not redirected holds the same data there as at the
 *    point in time, or newer data written after its chunk was copied);
 *  - a write to a redirected block, or to any block of a chunk not yet
 *    copied while active, goes to the overlay; others go to the base.
 *    The block becomes redirected (and dirty) when that write completes,
 *    so a read racing the first write sees old or new data, never the
 *    overlay's hole. A write smaller than a block into a block not yet
 *    redirected first fills it from the base (cow_pwrite, under fill_mu:
 *    two sub-block writes to one block are read-modify-writes and must not
 *    lose each other; every partial-block write takes that path while
 *    busy, so none slips past one that is filling).
 *  Not busy, everything goes to the base and only the changed bits move.
 *
 * Why no write reaches a base block the copier has not read:
 *  - copied is set for a chunk only after the copier's read of it has
 *    completed (cow_copied, called when a slab's reads are reaped), so a
 *    write routed to the base by "copied" can only land after that read;
 *  - writes in flight when the point in time is fixed: cow_start closes
 *    the gate and waits until no I/O is in flight, then clears copied and
 *    sets active; every write routed before that has completed, every
 *    write after it sees active. The same gate serves the punch below;
 *  - the merger writes the base only in regions whose chunks are all
 *    copied; discards are routed like writes (cow_fallocate).
 *
 * The gate is a counter of requests in flight and a flag: cow_enter
 * counts the request, then looks at the flag (both sequentially
 * consistent), so a closer that sets the flag and then sees the counter
 * at zero knows that every later request will see the flag and wait.
 *
 * Merging, at idle I/O priority: dirty blocks are merged (dirty cleared,
 * then overlay read, then base written: a write that completes after the
 * clear marks the block dirty again) in passes until few remain; then,
 * under the gate: the rest are merged, the base is fdatasynced, the range
 * punched in the overlay, the overlay fsynced, and the range's bits
 * cleared. Only then may writes to those blocks go to the base again.
 * That is done once for the whole disk after the copy: the gate's pause
 * (an fdatasync under load) is what the disk's users feel, so it is paid
 * once. While the overlay holds more than 1 GiB during a copy, regions
 * of 64 MiB whose chunks are all copied are settled behind the copier,
 * to give space back.
 *
 * Invariant: a block's newest data is in the overlay exactly when the
 * overlay has it allocated. It holds because a block is written to the
 * base only when it is not redirected, and stops being redirected only
 * once its overlay space is punched durably with the base already holding
 * its data durably. So after a crash the overlay's allocated extents
 * (SEEK_DATA) are the redirect map: cow_open merges them into the base
 * before the disk is served again. A write that had not completed may be
 * merged or not, as on any disk after a power cut.
 *
 * Flush/fsync: the frontend fdatasyncs the base and cow_sync_overlay the
 * overlay (fdatasync also makes the allocation of new blocks durable).
 *
 * ENOSPC: when the overlay cannot grow, the snapshot fails (failed; every
 * chunk counts as copied, so writes to blocks not redirected go to the
 * base again) and the write is retried: it succeeds, nothing is lost.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include "cow/cow.h"
#include "util/util.h"

#define BLK COW_BLOCK
#define REGION_BYTES (64ull << 20)
#define MERGE_IO (1u << 20)
#define MERGE_PASSES 8
#define MERGE_LEFT 256 /* dirty blocks left to merge under the gate */
#define MERGE_EARLY_BYTES (1ull << 30) /* overlay size past which regions settle during the copy */
#define START_WAIT_S 30 /* cow_start waits this long for an earlier merge */


typedef _Atomic uint64_t bits_t;

struct cow {
	uint64_t size, nblocks, nchunks;
	uint32_t chunk_size, chunk_blocks;
	int base_direct, base_buf, ov_direct, ov_buf;
	bits_t *redir, *dirty, *copied, *changed;
	atomic_bool active, busy, failed;
	atomic_bool merging; /* the merger thread runs */
	atomic_int gate;
	atomic_long inflight;
	atomic_uint_fast64_t requests; /* entered, ever: the foreground's pace */
	pthread_mutex_t mu; /* gate waits, merger waits */
	pthread_cond_t cv;
	pthread_mutex_t close_mu; /* one gate closer at a time */
	pthread_mutex_t fill_mu;  /* partial-block writes while busy */
	pthread_mutex_t start_mu; /* cow_start against itself and close */
	void (*wake)(void *);
	void *wake_arg;
	pthread_t merger;
	bool merger_started;
	atomic_uint_fast64_t ov_blocks, ov_peak, merged;
	atomic_uint_fast64_t started_gen, merged_gen; /* snapshots started, merges ended */
	pthread_mutex_t since_mu;
	char since[COW_SINCE_MAX];
};

/* ---- bits --------------------------------------------------------------------- */

static bool bit_get(bits_t *w, uint64_t i)
{
	return (atomic_load_explicit(&w[i / 64], memory_order_acquire) >> (i % 64)) & 1;
}

/* Sets (or clears) bits [a, b); returns how many changed. */
static uint64_t bits_change(bits_t *w, uint64_t a, uint64_t b, bool set)
{
	uint64_t changed = 0;

	while (a < b) {
		uint64_t word = a / 64, lo = a % 64, hi = MIN((uint64_t)64, lo + (b - a));
		uint64_t mask = (hi == 64 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1);
		uint64_t old = set ? atomic_fetch_or_explicit(&w[word], mask, memory_order_acq_rel)
				   : atomic_fetch_and_explicit(&w[word], ~mask, memory_order_acq_rel);
		changed += (uint64_t)__builtin_popcountll(set ? mask & ~old : mask & old);
		a += hi - lo;
	}
	return changed;
}

static bool bits_all(bits_t *w, uint64_t a, uint64_t b)
{
	for (uint64_t i = a; i < b; i++)
		if (!bit_get(w, i))
			return false;
	return true;
}

static bool bits_any(bits_t *w, uint64_t a, uint64_t b)
{
	for (uint64_t i = a; i < b; i++) {
		if (i % 64 == 0 && i + 64 <= b) {
			if (atomic_load_explicit(&w[i / 64], memory_order_acquire))
				return true;
			i += 63;
		} else if (bit_get(w, i)) {
			return true;
		}
	}
	return false;
}

static size_t words(uint64_t nbits)
{
	return (size_t)((nbits + 63) / 64);
}

/* ---- small helpers ---------------------------------------------------------------- */

/* The calling thread's I/O priority (DS_IOPRIO_*). */
static void set_ioprio(int value)
{
	syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, value);
}

static uint64_t block_end(const struct cow *c, uint64_t b)
{
	return MIN((b + 1) * BLK, c->size);
}

/* pread/pwrite the whole range, O_DIRECT when aligned. */
static ssize_t io_full(int fd_direct, int fd_buf, bool write, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		uint8_t *p = (uint8_t *)buf + done;
		bool aligned = ((off + done) | (len - done) | (uintptr_t)p) % 512 == 0;
		int fd = aligned && fd_direct >= 0 ? fd_direct : fd_buf;
		ssize_t n = write ? pwrite(fd, p, len - done, (off_t)(off + done))
				  : pread(fd, p, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static ssize_t io_at(struct cow *c, enum cow_where where, bool write, void *buf, size_t len,
		     uint64_t off)
{
	return where == COW_OVERLAY ? io_full(c->ov_direct, c->ov_buf, write, buf, len, off)
				    : io_full(c->base_direct, c->base_buf, write, buf, len, off);
}

/* ---- the gate --------------------------------------------------------------------- */

/* Wakes whoever waits on cv (gate closers and openers, the merger, merge
 * waiters); the state they wait for is atomic and set before. */
static void wake_waiters(struct cow *c)
{
	pthread_mutex_lock(&c->mu);
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

uint64_t cow_requests(struct cow *c)
{
	return atomic_load_explicit(&c->requests, memory_order_relaxed);
}

bool cow_enter(struct cow *c)
{
	atomic_fetch_add_explicit(&c->requests, 1, memory_order_relaxed);
	atomic_fetch_add(&c->inflight, 1);
	if (!atomic_load(&c->gate))
		return true;
	cow_leave(c);
	return false;
}

void cow_leave(struct cow *c)
{
	if (atomic_fetch_sub(&c->inflight, 1) == 1 && atomic_load(&c->gate)) {
		wake_waiters(c);
	}
}

void cow_wait_open(struct cow *c)
{
	pthread_mutex_lock(&c->mu);
	while (atomic_load(&c->gate))
		pthread_cond_wait(&c->cv, &c->mu);
	pthread_mutex_unlock(&c->mu);
}

void cow_set_wake(struct cow *c, void (*wake)(void *), void *arg)
{
	pthread_mutex_lock(&c->close_mu); /* gate_open calls it under close_mu */
	c->wake = wake;
	c->wake_arg = arg;
	pthread_mutex_unlock(&c->close_mu);
}

static void timed_wait(struct cow *c, long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_cond_timedwait(&c->cv, &c->mu, &ts);
}

/* Holds new I/O and waits until none is in flight. */
static void gate_close(struct cow *c)
{
	pthread_mutex_lock(&c->close_mu);
	atomic_store(&c->gate, 1);
	pthread_mutex_lock(&c->mu);
	while (atomic_load(&c->inflight) > 0)
		timed_wait(c, 1);
	pthread_mutex_unlock(&c->mu);
}

static void gate_open(struct cow *c)
{
	atomic_store(&c->gate, 0);
	wake_waiters(c);
	if (c->wake)
		c->wake(c->wake_arg);
	pthread_mutex_unlock(&c->close_mu);
}

/* ---- routing ------------------------------------------------------------------------ */

static enum cow_where where_block(struct cow *c, bool write, uint64_t b)
{
	if (bit_get(c->redir, b))
		return COW_OVERLAY;
	if (write && atomic_load(&c->active) && !bit_get(c->copied, b / c->chunk_blocks))
		return COW_OVERLAY;
	return COW_BASE;
}

enum cow_where cow_route(struct cow *c, bool write, uint64_t off, uint32_t len, uint32_t *run)
{
	uint64_t b, last, e;
	enum cow_where where;

	*run = len;
	if (len == 0 || !atomic_load(&c->busy) || off >= c->size)
		return COW_BASE;
	b = off / BLK;
	last = (MIN(off + len, c->size) - 1) / BLK;
	where = where_block(c, write, b);
	for (e = b + 1; e <= last && where_block(c, write, e) == where; e++)
		;
	if (e <= last)
		*run = (uint32_t)(e * BLK - off);
	return where;
}

bool cow_write_needs_fill(struct cow *c, uint64_t off, uint32_t len)
{
	uint64_t end = off + len;

	return atomic_load(&c->busy) && len > 0 && (off % BLK || (end % BLK && end < c->size));
}

void cow_written(struct cow *c, enum cow_where where, uint64_t off, uint32_t len)
{
	uint64_t end = MIN(off + len, c->size);

	if (len == 0 || off >= c->size)
		return;
	bits_change(c->changed, off / c->chunk_size, (end - 1) / c->chunk_size + 1, true);
	if (where == COW_OVERLAY) {
		uint64_t a = off / BLK, b = (end - 1) / BLK + 1;
		uint64_t now, peak, added = bits_change(c->redir, a, b, true);
		bits_change(c->dirty, a, b, true);
		now = atomic_fetch_add(&c->ov_blocks, added) + added;
		peak = atomic_load(&c->ov_peak);
		while (now > peak && !atomic_compare_exchange_weak(&c->ov_peak, &peak, now))
			;
	}
}

/* The overlay is full: the snapshot fails, its point in time is let go. */
static void fail_snapshot(struct cow *c, int err)
{
	if (atomic_exchange(&c->failed, true))
		return;
	log_warn("cow: the overlay cannot grow (%s): the snapshot fails, writes go to the disk",
		 strerror(-err));
	bits_change(c->copied, 0, c->nchunks, true);
	atomic_store(&c->active, false);
	wake_waiters(c);
}

void cow_overlay_abort(struct cow *c, uint64_t off, uint32_t len)
{
	uint64_t end = MIN(off + len, c->size);

	if (len == 0 || off >= c->size)
		return;
	/* Blocks the failed write may have allocated but that are not
	 * redirected: their space goes, so that allocated still means
	 * redirected. Redirected blocks keep theirs. */
	for (uint64_t b = off / BLK, last = (end - 1) / BLK; b <= last;) {
		uint64_t e = b;
		while (e <= last && !bit_get(c->redir, e))
			e++;
		if (e > b && fallocate(c->ov_buf, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       (off_t)(b * BLK), (off_t)((e - b) * BLK)) < 0)
			log_error("cow: cannot give back overlay space at %llu after a failed write: %s",
				  (unsigned long long)(b * BLK), strerror(errno));
		b = e + 1;
	}
}

bool cow_overlay_error(struct cow *c, int err)
{
	if (err != -ENOSPC && err != -EDQUOT && err != -EFBIG)
		return false;
	fail_snapshot(c, err);
	return true;
}

/* ---- synchronous I/O -------------------------------------------------------------- */

ssize_t cow_pread(struct cow *c, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	if (off >= c->size)
		return 0;
	len = MIN(len, c->size - off);
	while (done < len) {
		uint32_t run;
		size_t n = MIN(len - done, (size_t)UINT32_MAX & ~(size_t)(BLK - 1));
		enum cow_where w = cow_route(c, false, off + done, (uint32_t)n, &run);
		ssize_t r = io_at(c, w, false, (uint8_t *)buf + done, run, off + done);
		if (r < 0)
			return r;
		done += (size_t)r;
		if ((size_t)r < run)
			break;
	}
	return (ssize_t)done;
}

/* Writes n bytes at off, inside block b, into the overlay: the rest of the
 * block comes from where its newest data is. Caller holds fill_mu. */
static int fill_block(struct cow *c, uint64_t b, const uint8_t *data, uint32_t n, uint64_t off)
{
	_Alignas(4096) uint8_t blk[BLK];
	uint64_t start = b * BLK;
	uint32_t blen = (uint32_t)(block_end(c, b) - start);
	ssize_t r;

	memset(blk, 0, sizeof(blk));
	r = io_at(c, where_block(c, false, b), false, blk, blen, start);
	if (r < 0)
		return (int)r;
	memcpy(blk + (off - start), data, n);
	r = io_at(c, COW_OVERLAY, true, blk, blen, start);
	if (r >= 0 && (uint32_t)r < blen)
		r = -EIO;
	if (r < 0)
		return (int)r; /* the caller gives back the block's overlay space */
	cow_written(c, COW_OVERLAY, start, blen);
	return 0;
}

/* One piece of a write that stays inside one block or is block aligned. */
static ssize_t write_piece(struct cow *c, const uint8_t *buf, uint32_t len, uint64_t off)
{
	for (int tries = 0;; tries++) {
		uint32_t run;
		enum cow_where w = cow_route(c, true, off, len, &run);
		bool partial = off % BLK || (len < BLK && off + len < block_end(c, off / BLK));
		ssize_t r;

		if (w == COW_OVERLAY && partial && !bit_get(c->redir, off / BLK)) {
			int e = fill_block(c, off / BLK, buf, len, off);
			r = e < 0 ? e : (ssize_t)len;
			run = len;
		} else {
			r = io_at(c, w, true, (void *)buf, run, off);
			if (r >= 0 && (uint32_t)r < run)
				r = -EIO; /* the end of a block device: nothing more fits */
			if (r > 0)
				cow_written(c, w, off, (uint32_t)r);
		}
		if (r < 0 && w == COW_OVERLAY) {
			cow_overlay_abort(c, off, run);
			if (tries == 0 && cow_overlay_error(c, (int)r))
				continue;
		}
		return r;
	}
}

ssize_t cow_pwrite(struct cow *c, const void *buf, size_t len, uint64_t off)
{
	bool locked = cow_write_needs_fill(c, off, (uint32_t)MIN(len, (size_t)UINT32_MAX));
	size_t done = 0;
	ssize_t r = 0;

	if (off >= c->size || len > c->size - off)
		return -ENOSPC;
	if (locked)
		pthread_mutex_lock(&c->fill_mu);
	while (done < len) {
		uint64_t pos = off + done;
		/* a partial head block, then whole blocks, then a partial tail */
		size_t n = pos % BLK ? MIN(len - done, BLK - pos % BLK)
				     : len - done >= BLK ? (len - done) / BLK * BLK : len - done;
		n = MIN(n, (size_t)(64u << 20));
		r = write_piece(c, (const uint8_t *)buf + done, (uint32_t)n, pos);
		if (r <= 0)
			break;
		done += (size_t)r;
	}
	if (locked)
		pthread_mutex_unlock(&c->fill_mu);
	return r < 0 && done == 0 ? r : (ssize_t)done;
}

int cow_fallocate(struct cow *c, int mode, uint64_t off, uint64_t len)
{
	static const uint8_t zeros[MERGE_IO] __attribute__((aligned(4096)));
	uint64_t done = 0;

	if (off > c->size || len > c->size - off)
		return -EINVAL;
	if (len == 0)
		return 0;
	bits_change(c->changed, off / c->chunk_size, (off + len - 1) / c->chunk_size + 1, true);
	if (!atomic_load(&c->busy))
		return fallocate(c->base_buf, mode, (off_t)off, (off_t)len) < 0 ? -errno : 0;
	/* Only discards and zeroing change data; the rest is refused while busy. */
	if (!(mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)))
		return -EOPNOTSUPP;
	/* While busy, a discard or zeroing of blocks kept for the snapshot (or
	 * redirected) is written as zeros through the tracker; the rest is
	 * punched in the base. */
	while (done < len) {
		uint32_t run, n = (uint32_t)MIN(len - done, (uint64_t)MERGE_IO);
		enum cow_where w = cow_route(c, true, off + done, n, &run);
		if (w == COW_BASE) {
			if (fallocate(c->base_buf, mode, (off_t)(off + done), (off_t)run) < 0)
				return -errno;
		} else {
			ssize_t r = cow_pwrite(c, zeros, run, off + done);
			if (r < 0)
				return (int)r;
			run = (uint32_t)r;
		}
		done += run;
	}
	return 0;
}

int cow_sync_overlay(struct cow *c)
{
	if (!atomic_load(&c->busy))
		return 0;
	return fdatasync(c->ov_buf) < 0 ? -errno : 0;
}

/* ---- merging ----------------------------------------------------------------------- */

/* Merges the dirty blocks of [b0, b1) into the base; returns how many, or
 * -errno (the blocks that failed stay dirty). */
static int64_t merge_dirty(struct cow *c, uint8_t *buf, uint64_t b0, uint64_t b1)
{
	int64_t merged = 0;

	for (uint64_t b = b0; b < b1;) {
		uint64_t e;
		ssize_t r;
		if (!bit_get(c->dirty, b)) {
			b++;
			continue;
		}
		for (e = b + 1; e < b1 && e - b < MERGE_IO / BLK && bit_get(c->dirty, e); e++)
			;
		bits_change(c->dirty, b, e, false);
		r = io_at(c, COW_OVERLAY, false, buf, block_end(c, e - 1) - b * BLK, b * BLK);
		if (r >= 0)
			r = io_at(c, COW_BASE, true, buf, (size_t)r, b * BLK);
		if (r < 0) {
			bits_change(c->dirty, b, e, true);
			log_error("cow: merging blocks at %llu failed: %s", (unsigned long long)(b * BLK),
				  strerror((int)-r));
			return r;
		}
		atomic_fetch_add(&c->merged, (uint64_t)r);
		merged += (int64_t)(e - b);
		b = e;
	}
	return merged;
}

/* Under the gate: merges what is left of [b0, b1), makes the base durable
 * and frees the overlay's blocks there. */
static int settle(struct cow *c, uint8_t *buf, uint64_t b0, uint64_t b1)
{
	uint64_t off = b0 * BLK, len = block_end(c, b1 - 1) - off;
	int64_t m = merge_dirty(c, buf, b0, b1);

	if (m < 0)
		return (int)m;
	if (fdatasync(c->base_buf) < 0)
		return -errno;
	/* The overlay is a whole number of blocks: the last one is punched
	 * whole even when the disk ends inside it. */
	len = (len + BLK - 1) / BLK * BLK;
	if (fallocate(c->ov_buf, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len) < 0)
		return -errno;
	/* The base holds every block durably: they stop being redirected
	 * even if the punch cannot be made durable (then a crash would merge
	 * them again, with what the base already holds, unless written since). */
	atomic_fetch_sub(&c->ov_blocks, bits_change(c->redir, b0, b1, false));
	if (fsync(c->ov_buf) < 0)
		log_error("cow: cannot make the overlay's punch durable: %s", strerror(errno));
	return 0;
}

static void *merger_thread(void *arg)
{
	struct cow *c = arg;
	uint64_t region_chunks = REGION_BYTES / c->chunk_size;
	uint8_t *buf = NULL;
	bool left = false;

	if (posix_memalign((void **)&buf, 4096, MERGE_IO)) {
		log_error("cow: no memory to merge; blocks stay redirected until restart");
		atomic_store(&c->merging, false);
		wake_waiters(c);
		return NULL;
	}
	set_ioprio(DS_IOPRIO_IDLE);
	for (uint64_t c0 = 0; c0 < c->nchunks; c0 += region_chunks) {
		uint64_t c1 = MIN(c->nchunks, c0 + region_chunks);
		uint64_t b0 = c0 * c->chunk_blocks, b1 = MIN(c->nblocks, c1 * c->chunk_blocks);
		int r = 0;

		pthread_mutex_lock(&c->mu);
		while (atomic_load(&c->active) && !bits_all(c->copied, c0, c1))
			timed_wait(c, 50);
		pthread_mutex_unlock(&c->mu);
		/* Each region's settle holds I/O for a moment (an fdatasync of
		 * the base under load): measured, settling region by region
		 * behind the copier cost random writes p99 x14. So during the
		 * copy only while the overlay is large; after it, at once. */
		if (!atomic_load(&c->active))
			break;
		if (atomic_load(&c->ov_blocks) * BLK < MERGE_EARLY_BYTES ||
		    !bits_any(c->redir, b0, b1))
			continue;
		for (int pass = 0; pass < MERGE_PASSES; pass++) {
			int64_t m = merge_dirty(c, buf, b0, b1);
			if (m < MERGE_LEFT)
				break;
		}
		gate_close(c);
		set_ioprio(DS_IOPRIO_BE);
		r = settle(c, buf, b0, b1);
		set_ioprio(DS_IOPRIO_IDLE);
		gate_open(c);
		if (r < 0) {
			log_error("cow: cannot settle the overlay at %llu MiB: %s",
				  (unsigned long long)(b0 * BLK >> 20), strerror(-r));
			left = true;
		}
	}
	pthread_mutex_lock(&c->mu);
	while (atomic_load(&c->active))
		timed_wait(c, 50);
	pthread_mutex_unlock(&c->mu);
	for (int pass = 0; pass < 4 * MERGE_PASSES; pass++)
		if (merge_dirty(c, buf, 0, c->nblocks) < MERGE_LEFT)
			break;
	gate_close(c);
	/* Everything still redirected, once: the regions not settled during
	 * the copy, and writes that were in flight to a region when it was
	 * looked at. */
	if (bits_any(c->redir, 0, c->nblocks)) {
		set_ioprio(DS_IOPRIO_BE);
		left = settle(c, buf, 0, c->nblocks) < 0;
		if (left)
			log_error("cow: blocks stay redirected in the overlay; they are merged at "
				  "the next start");
	}
	if (!left)
		atomic_store(&c->busy, false);
	atomic_store(&c->merged_gen, atomic_load(&c->started_gen));
	gate_open(c);
	free(buf);
	atomic_store(&c->merging, false);
	wake_waiters(c);
	return NULL;
}

/* ---- snapshots ---------------------------------------------------------------------- */

int cow_start(struct cow *c, uint64_t *changed_out, char since_out[COW_SINCE_MAX],
	      uint64_t *gen_out)
{
	struct timespec t0, t;

	pthread_mutex_lock(&c->start_mu);
	/* The last snapshot's merge ends first (seconds, usually). */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_mutex_lock(&c->mu);
	while (atomic_load(&c->merging) && clock_gettime(CLOCK_MONOTONIC, &t) == 0 &&
	       t.tv_sec - t0.tv_sec < START_WAIT_S)
		timed_wait(c, 20);
	pthread_mutex_unlock(&c->mu);
	if (atomic_load(&c->busy)) {
		pthread_mutex_unlock(&c->start_mu);
		return -EBUSY;
	}
	if (c->merger_started) {
		pthread_join(c->merger, NULL);
		c->merger_started = false;
	}
	gate_close(c);
	for (size_t i = 0; i < words(c->nchunks); i++)
		atomic_store(&c->copied[i], 0);
	if (changed_out) {
		for (size_t i = 0; i < words(c->nchunks); i++)
			changed_out[i] = atomic_exchange(&c->changed[i], 0);
	}
	atomic_store(&c->failed, false);
	atomic_store(&c->merged, 0);
	atomic_store(&c->ov_peak, atomic_load(&c->ov_blocks));
	atomic_store(&c->active, true);
	atomic_store(&c->busy, true);
	atomic_store(&c->merging, true);
	if (pthread_create(&c->merger, NULL, merger_thread, c) != 0) {
		/* No merger, no snapshot: nothing was redirected yet. */
		atomic_store(&c->merging, false);
		atomic_store(&c->active, false);
		atomic_store(&c->busy, bits_any(c->redir, 0, c->nblocks));
		if (changed_out)
			for (size_t i = 0; i < words(c->nchunks); i++)
				atomic_fetch_or(&c->changed[i], changed_out[i]);
		gate_open(c);
		pthread_mutex_unlock(&c->start_mu);
		return -EAGAIN;
	}
	c->merger_started = true;
	if (since_out)
		cow_since(c, since_out, NULL);
	if (gen_out)
		*gen_out = atomic_fetch_add(&c->started_gen, 1) + 1;
	else
		atomic_fetch_add(&c->started_gen, 1);
	gate_open(c);
	pthread_mutex_unlock(&c->start_mu);
	return 0;
}

void cow_copied(struct cow *c, uint64_t first, uint64_t n)
{
	bits_change(c->copied, first, MIN(first + n, c->nchunks), true);
	wake_waiters(c);
}

void cow_copy_end(struct cow *c, bool ok, const uint64_t *changed_taken, const char *new_since)
{
	if (ok && new_since)
		cow_since(c, NULL, new_since);
	if (!ok && changed_taken)
		for (size_t i = 0; i < words(c->nchunks); i++)
			atomic_fetch_or(&c->changed[i], changed_taken[i]);
	bits_change(c->copied, 0, c->nchunks, true);
	atomic_store(&c->active, false);
	wake_waiters(c);
}

bool cow_failed(struct cow *c)
{
	return atomic_load(&c->failed);
}

bool cow_chunk_copied(struct cow *c, uint64_t i)
{
	return bit_get(c->copied, i);
}

void cow_wait_merged(struct cow *c, uint64_t gen)
{
	pthread_mutex_lock(&c->mu);
	while (atomic_load(&c->merging) && (!gen || atomic_load(&c->merged_gen) < gen))
		timed_wait(c, 50);
	pthread_mutex_unlock(&c->mu);
}

void cow_since(struct cow *c, char out[COW_SINCE_MAX], const char *set)
{
	pthread_mutex_lock(&c->since_mu);
	if (set)
		snprintf(c->since, sizeof(c->since), "%s", set);
	if (out)
		snprintf(out, COW_SINCE_MAX, "%s", c->since);
	pthread_mutex_unlock(&c->since_mu);
}

void cow_get_stats(struct cow *c, struct cow_stats *st)
{
	st->overlay_bytes = atomic_load(&c->ov_blocks) * BLK;
	st->overlay_peak = atomic_load(&c->ov_peak) * BLK;
	st->merged_bytes = atomic_load(&c->merged);
	st->active = atomic_load(&c->active);
	st->busy = atomic_load(&c->busy);
	st->failed = atomic_load(&c->failed);
}

/* ---- changed-block tracking ------------------------------------------------------- */

uint64_t cow_nchunks(const struct cow *c)
{
	return c->nchunks;
}

void cow_distrust(struct cow *c)
{
	bits_change(c->changed, 0, c->nchunks, true);
}

void cow_bitmap_get(struct cow *c, uint64_t *bits)
{
	for (size_t i = 0; i < words(c->nchunks); i++)
		bits[i] = atomic_load(&c->changed[i]);
}

void cow_bitmap_set(struct cow *c, const uint64_t *bits)
{
	for (size_t i = 0; i < words(c->nchunks); i++)
		atomic_store(&c->changed[i], bits[i]);
}

/* ---- open / close -------------------------------------------------------------------- */

uint64_t cow_size(const struct cow *c)
{
	return c->size;
}

int cow_base_fd(const struct cow *c, bool direct)
{
	return direct ? c->base_direct : c->base_buf;
}

int cow_overlay_fd(const struct cow *c, bool direct)
{
	return direct ? c->ov_direct : c->ov_buf;
}

/* Crash recovery: the overlay's allocated extents are the newest data of
 * their blocks; they go to the base, then the overlay is emptied. */
static int recover(struct cow *c, uint64_t *recovered)
{
	uint8_t *buf = NULL;
	off_t pos = 0, d;
	uint64_t total = 0;
	int r = 0;

	if (posix_memalign((void **)&buf, 4096, MERGE_IO))
		return -ENOMEM;
	while (r == 0 && (d = lseek(c->ov_buf, pos, SEEK_DATA)) >= 0 && (uint64_t)d < c->size) {
		off_t h = lseek(c->ov_buf, d, SEEK_HOLE);
		uint64_t end = MIN((uint64_t)(h < 0 ? (off_t)c->size : h), c->size);
		for (uint64_t off = (uint64_t)d; off < end && r == 0;) {
			size_t n = (size_t)MIN(end - off, (uint64_t)MERGE_IO);
			ssize_t k = io_full(-1, c->ov_buf, false, buf, n, off);
			if (k > 0)
				k = io_full(-1, c->base_buf, true, buf, (size_t)k, off);
			if (k <= 0)
				r = k < 0 ? (int)k : -EIO;
			off += n;
			total += n;
		}
		pos = (off_t)end;
	}
	free(buf);
	if (r == 0 && total > 0 && fdatasync(c->base_buf) < 0)
		r = -errno;
	if (r == 0 && (ftruncate(c->ov_buf, 0) < 0 ||
		       ftruncate(c->ov_buf, (off_t)(c->nblocks * BLK)) < 0 || fsync(c->ov_buf) < 0))
		r = -errno;
	if (r == 0 && total > 0)
		log_warn("cow: merged %llu bytes left in the overlay by a crash into the disk",
			 (unsigned long long)total);
	*recovered = total;
	return r;
}

/* Closes the fds and frees the bitmaps and c. */
static void release(struct cow *c)
{
	int fds[] = {c->base_buf, c->base_direct, c->ov_buf, c->ov_direct};

	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(c->redir);
	free(c->dirty);
	free(c->copied);
	free(c->changed);
	free(c);
}

int cow_open(const char *base_path, const char *overlay_path, uint32_t chunk_size,
	     struct cow **out, uint64_t *recovered)
{
	struct cow *c = calloc(1, sizeof(*c));
	struct stat st;
	uint64_t dummy;
	int r = 0;

	if (!c)
		return -ENOMEM;
	if (!recovered)
		recovered = &dummy;
	*recovered = 0;
	c->base_buf = c->base_direct = c->ov_buf = c->ov_direct = -1;
	c->base_buf = open(base_path, O_RDWR | O_CLOEXEC);
	if (c->base_buf < 0 || fstat(c->base_buf, &st) < 0) {
		r = -errno;
		goto err;
	}
	if (S_ISBLK(st.st_mode))
		r = ioctl(c->base_buf, BLKGETSIZE64, &c->size) < 0 ? -errno : 0;
	else if (S_ISREG(st.st_mode))
		c->size = (uint64_t)st.st_size;
	else
		r = -ENOTSUP;
	if (r < 0)
		goto err;
	c->base_direct = open(base_path, O_RDWR | O_DIRECT | O_CLOEXEC); /* tmpfs: none */
	c->ov_buf = open(overlay_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (c->ov_buf < 0) {
		r = -errno;
		goto err;
	}
	c->ov_direct = open(overlay_path, O_RDWR | O_DIRECT | O_CLOEXEC);
	c->chunk_size = chunk_size;
	c->chunk_blocks = chunk_size / BLK;
	c->nblocks = (c->size + BLK - 1) / BLK;
	c->nchunks = (c->size + chunk_size - 1) / chunk_size;
	c->redir = calloc(words(c->nblocks) + 1, sizeof(bits_t));
	c->dirty = calloc(words(c->nblocks) + 1, sizeof(bits_t));
	c->copied = calloc(words(c->nchunks) + 1, sizeof(bits_t));
	c->changed = calloc(words(c->nchunks) + 1, sizeof(bits_t));
	if (!c->redir || !c->dirty || !c->copied || !c->changed) {
		r = -ENOMEM;
		goto err;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	pthread_mutex_init(&c->close_mu, NULL);
	pthread_mutex_init(&c->fill_mu, NULL);
	pthread_mutex_init(&c->start_mu, NULL);
	pthread_mutex_init(&c->since_mu, NULL);
	r = recover(c, recovered);
	if (r < 0) {
		cow_close(c);
		return r;
	}
	*out = c;
	return 0;
err:
	release(c);
	return r;
}

void cow_close(struct cow *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->start_mu);
	bits_change(c->copied, 0, c->nchunks, true);
	atomic_store(&c->active, false);
	cow_wait_merged(c, 0);
	if (c->merger_started)
		pthread_join(c->merger, NULL);
	pthread_mutex_unlock(&c->start_mu);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->close_mu);
	pthread_mutex_destroy(&c->fill_mu);
	pthread_mutex_destroy(&c->start_mu);
	pthread_mutex_destroy(&c->since_mu);
	release(c);
}
