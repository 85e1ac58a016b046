/*
 * The copy-on-write tracker (DESIGN.md decision 1: redirect on write).
 *
 * Notes on the design
 *
 * Words. The base is the disk's backing (image file or block device).
 * The overlay is a log in the state folder: a file of 4 KiB slots, each
 * holding the newest data of one redirected block, with a map from slot
 * to block. Blocks are 4 KiB; chunks are the store's (the copier reads
 * whole chunks).
 *
 * Why a log. The first layout was a sparse file the size of the disk,
 * each block at its own offset. Every first write into one of its holes
 * made the file system allocate (and journal) a block, and ext4 hands such
 * O_DIRECT writes to io_uring's workers: random writes during a snapshot
 * ran at 0.42 of their rate before it with the copier all but stopped.
 * Slots are written with zeros in advance (by the prewriter, while no
 * snapshot runs, as much as cow_open is asked: dsnapd's overlay_prewrite), so a
 * redirected write overwrites blocks the file already has: 0.76 in the
 * same measurement. A log needs its own map, which a sparse file had
 * for free (its allocated extents); that map is below.
 *
 * State, per block: redirected (its newest data is in the overlay, in the
 * slot slot_of says) and dirty (written in the overlay since its last
 * merge); per chunk: copied (the copier has read it from the base) and
 * changed (written since the last accomplished snapshot: changed-block
 * tracking). Per tracker: active (a snapshot's copy runs), busy (active,
 * or redirected blocks remain), failed (the overlay could not grow).
 *
 * Where I/O goes, while busy:
 *  - a read of a redirected block goes to its slot, any other to the base
 *    (a block not redirected holds the same data there as at the point in
 *    time, or newer data written after its chunk was copied);
 *  - a write to a redirected block goes to its slot; a write to a block of
 *    a chunk not yet copied while active gets new slots (consecutive for a
 *    run of such blocks, from a counter that only grows while busy); others
 *    go to the base. The block becomes redirected (and dirty) when that
 *    write completes, so a read racing the first write sees old or new
 *    data, never an unwritten slot. Two first writes racing for one block
 *    each get a slot; the first to complete claims the block (a
 *    compare-and-swap), the other's data stays unused: of two concurrent
 *    writes either may win (if one is smaller than a block, the block may
 *    keep old bytes around it: overlapping writes in flight together have
 *    no defined result). A write smaller than a block
 *    into a block not yet redirected first fills the slot from the base
 *    (cow_pwrite, under fill_mu: two sub-block writes to one block are
 *    read-modify-writes and must not lose each other; every partial-block
 *    write takes that path while busy, so none slips past one that is
 *    filling).
 *  Not busy, everything goes to the base and only the changed bits move.
 *
 * Why no write reaches a base block the copier has not read:
 *  - copied is set for a chunk only after the copier's read of it has
 *    completed (cow_copied, called when a slab's reads are reaped), so a
 *    write routed to the base by "copied" can only land after that read;
 *  - writes in flight when the point in time is fixed: cow_start closes
 *    the gate and waits until no I/O is in flight, then clears copied and
 *    sets active; every write routed before that has completed, every
 *    write after it sees active. The same gate serves the settle below;
 *  - the merger writes the base only after the copy has ended; discards
 *    are routed like writes (cow_fallocate).
 *
 * The gate is a counter of requests in flight and a flag: cow_enter
 * counts the request, then looks at the flag (both sequentially
 * consistent), so a closer that sets the flag and then sees the counter
 * at zero knows that every later request will see the flag and wait.
 *
 * Merging, after the copy, at idle I/O priority: dirty blocks are merged
 * (dirty cleared, then the slot read, then the base written: a write that
 * completes after the clear marks the block dirty again) in passes, in
 * slot order, many writes in flight (see the merger). Every 128 MiB of
 * slots the base is fdatasynced and, under the gate, the blocks merged
 * and not dirty stop being redirected (their map entries cleared first):
 * the users' later writes to them go to the base, so a pass leaves only
 * what was rewritten while it ran, and the passes converge however fast
 * the users write. The merge keeps 16 I/Os in flight while the users keep
 * the disk busy, 64 otherwise or while a snapshot waits (merger_pace). Then, once, under the gate: the rest are merged, the
 * base is fdatasynced, the map is emptied (durably), and every block
 * stops being redirected; the slots are free for the next snapshot. A
 * flush copies map pages into the durable map only after syncing the base
 * (sync_all in fuse.c), and a cleared entry's data was synced before it
 * was cleared, so the durable map never loses an entry whose data the
 * base does not hold durably. The log keeps its size: its written slots
 * are what makes the next snapshot's writes cheap.
 *
 * The map, and crashes. A block's newest data is in the overlay exactly
 * when the map names a slot for it. The map is kept twice, slot -> block + 1
 * (0: free), after a page of header:
 *  - STATE/overlay/d-....map, mapped shared: an entry is stored when the
 *    first write to its slot completes, before the write is answered. It
 *    lives in the page cache, so it outlives a crash of dsnapd (kill -9)
 *    but not of the machine; its header names the boot it was written in
 *    (/proc/sys/kernel/random/boot_id) and a later boot ignores it;
 *  - STATE/overlay/d-....dmap, durable: a flush (cow_sync_overlay) copies
 *    the pages of the map that changed, fdatasyncs the log, then writes the
 *    copies and fdatasyncs them. An entry is durable only once its slot's
 *    data is, so after a power cut it never names a slot holding anything
 *    but its block's data.
 * cow_open merges the entries of the map of the same boot, or else of the
 * durable one, into the base before the disk is served again. A write that
 * was not flushed may be merged or not after a power cut, as on any disk;
 * after a crash of dsnapd alone, every completed write is. The map is
 * emptied only after the base holds every merged block durably, and writes
 * to those blocks reach the base only after that (the gate), so merging a
 * map twice writes the same data twice.
 *
 * ENOSPC: when the overlay cannot grow (the log, or its maps), the
 * snapshot fails (failed; every chunk counts as copied, so writes to
 * blocks not redirected go to the base again) and the write is retried:
 * it succeeds, nothing is lost.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include <liburing.h>

#include "cow/cow.h"
#include "util/util.h"

#define BLK COW_BLOCK
#define MERGE_IO (1u << 20)
#define MERGE_PASSES 8
#define MERGE_LEFT 256 /* dirty blocks left to merge under the gate */
#define START_WAIT_S 120 /* cow_start waits this long for an earlier merge */
#define MAP_HEADER 4096u
#define MAP_PAGE_SLOTS (4096u / 8)
#define MAP_STEP (1u << 20) /* the maps' files are allocated this much at a time */
#define SLOT_DIR_SHIFT 14  /* slot_of is allocated 16384 blocks at a time */
#define MAP_MAGIC "DSNAPMAP"
#define BOOT_ID_MAX 40

typedef _Atomic uint64_t bits_t;

struct map_header {
	char magic[8];
	uint32_t version, block_size;
	char boot_id[BOOT_ID_MAX];
	uint64_t nslots;
};

struct cow {
	uint64_t size, nblocks, nchunks;
	uint32_t chunk_size, chunk_blocks;
	int base_direct, base_buf, ov_direct, ov_buf;
	bits_t *redir, *dirty, *copied, *changed;
	atomic_bool active, busy, failed;
	atomic_bool merging; /* the merger thread runs */
	atomic_bool hurry;   /* a snapshot waits for the merge */
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
	/* the log: slots handed out, slot of each redirected block (+ 1) */
	uint64_t nslots; /* the most slots the log may have */
	atomic_uint_fast64_t next_slot;
	_Atomic(_Atomic uint32_t *) *slot_dir;
	/* the maps: slot -> block + 1, after MAP_HEADER bytes */
	int map_fd, dmap_fd;
	_Atomic uint64_t *map;  /* map_fd, mapped shared */
	size_t map_len;
	bits_t *map_dirty;        /* pages of map not yet in dmap */
	atomic_uint_fast64_t map_ready; /* bytes of both files allocated */
	pthread_mutex_t map_mu;   /* growing the maps' files */
	pthread_mutex_t sync_mu;  /* writing dmap */
	/* the prewriter: writes the log's slots once, while not busy */
	pthread_t prewriter;
	bool prewriter_started;
	atomic_bool prewrite_stop;
	uint64_t prewrite_target;
	atomic_uint_fast64_t log_written; /* bytes of the log written */
	atomic_uint_fast64_t pw_lo, pw_hi; /* slots the prewriter is writing now */
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

/* ---- the log and its map ---------------------------------------------------------- */

/* Block b's entry in the slot table (its piece allocated), or NULL. */
static _Atomic uint32_t *slot_entry(struct cow *c, uint64_t b)
{
	_Atomic uint32_t *d = atomic_load_explicit(&c->slot_dir[b >> SLOT_DIR_SHIFT],
						   memory_order_acquire);

	return d ? &d[b & ((1u << SLOT_DIR_SHIFT) - 1)] : NULL;
}

/* The slot of block b, plus one; 0: none. */
static uint32_t slot_get(struct cow *c, uint64_t b)
{
	_Atomic uint32_t *e = slot_entry(c, b);

	return e ? atomic_load_explicit(e, memory_order_acquire) : 0;
}

static size_t slot_dir_len(const struct cow *c)
{
	return (size_t)((c->nblocks + (1u << SLOT_DIR_SHIFT) - 1) >> SLOT_DIR_SHIFT);
}

/* The table has room for blocks [b, e): false when out of memory. */
static bool slot_table_reserve(struct cow *c, uint64_t b, uint64_t e)
{
	for (uint64_t i = b >> SLOT_DIR_SHIFT; i <= (e - 1) >> SLOT_DIR_SHIFT; i++) {
		_Atomic uint32_t *d = atomic_load_explicit(&c->slot_dir[i], memory_order_acquire);
		_Atomic uint32_t *fresh;
		if (d)
			continue;
		fresh = calloc(1u << SLOT_DIR_SHIFT, sizeof(*fresh));
		if (!fresh)
			return false;
		if (!atomic_compare_exchange_strong(&c->slot_dir[i], &d, fresh))
			free(fresh);
	}
	return true;
}

/* Gives block b slot s if it has none (its table is reserved); false if
 * it has one. */
static bool slot_claim(struct cow *c, uint64_t b, uint64_t s)
{
	uint32_t none = 0;

	return atomic_compare_exchange_strong(slot_entry(c, b), &none, (uint32_t)(s + 1));
}

/* Under the gate, once the map is empty: no block has a slot. */
static void slot_table_clear(struct cow *c)
{
	for (uint64_t i = 0; i < slot_dir_len(c); i++)
		free(atomic_exchange(&c->slot_dir[i], NULL));
}

static void map_set(struct cow *c, uint64_t s, uint64_t v)
{
	atomic_store_explicit(&c->map[MAP_HEADER / 8 + s], v, memory_order_relaxed);
	bits_change(c->map_dirty, (MAP_HEADER / 8 + s) / MAP_PAGE_SLOTS,
		    (MAP_HEADER / 8 + s) / MAP_PAGE_SLOTS + 1, true);
}

/* Both maps' files hold the entries of slots [0, n) on disk: a store into
 * the shared mapping cannot fault for want of space. */
static int map_reserve(struct cow *c, uint64_t n)
{
	uint64_t need = MAP_HEADER + n * 8;
	int r = 0;

	if (need <= atomic_load(&c->map_ready))
		return 0;
	pthread_mutex_lock(&c->map_mu);
	if (need > atomic_load(&c->map_ready)) {
		uint64_t to = MIN((need + MAP_STEP - 1) / MAP_STEP * MAP_STEP, (uint64_t)c->map_len);
		if (fallocate(c->map_fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)to) < 0 ||
		    fallocate(c->dmap_fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)to) < 0)
			r = errno == EOPNOTSUPP ? 0 : -errno; /* then no reserve: best effort */
		if (r == 0)
			atomic_store(&c->map_ready, to);
	}
	pthread_mutex_unlock(&c->map_mu);
	return r;
}

/* n consecutive slots: the first in *first; -ENOSPC when the log is full.
 * Never slots the prewriter is writing (a write it began before the
 * snapshot started). */
static int alloc_slots(struct cow *c, uint64_t n, uint64_t *first)
{
	uint64_t s = atomic_load(&c->next_slot), t;

	do {
		uint64_t lo = atomic_load(&c->pw_lo), hi = atomic_load(&c->pw_hi);
		t = s < hi && s + n > lo ? hi : s;
	} while (!atomic_compare_exchange_weak(&c->next_slot, &s, t + n));
	s = t;

	if (s + n > c->nslots)
		return -ENOSPC;
	*first = s;
	return map_reserve(c, s + n);
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

/* cow_route; alloc false only asks where (no slots for new blocks). */
static enum cow_where route(struct cow *c, bool write, uint64_t off, uint32_t len, uint32_t *run,
			    uint64_t *at, bool alloc)
{
	uint64_t b, last, e, s;
	enum cow_where where;

again:
	*run = len;
	*at = off;
	if (len == 0 || !atomic_load(&c->busy) || off >= c->size)
		return COW_BASE;
	b = off / BLK;
	last = (MIN(off + len, c->size) - 1) / BLK;
	where = where_block(c, write, b);
	if (where == COW_BASE || !alloc) {
		for (e = b + 1; e <= last && where_block(c, write, e) == where; e++)
			;
	} else if (bit_get(c->redir, b)) {
		/* redirected: as far as its slots run on */
		s = slot_get(c, b) - 1;
		for (e = b + 1; e <= last && bit_get(c->redir, e) && slot_get(c, e) == s + (e - b) + 1;
		     e++)
			;
		*at = s * BLK + off % BLK;
	} else {
		/* first writes: consecutive new slots for the run of them */
		int r;
		for (e = b + 1; e <= last && !bit_get(c->redir, e) &&
				where_block(c, write, e) == COW_OVERLAY;
		     e++)
			;
		r = slot_table_reserve(c, b, e) ? alloc_slots(c, e - b, &s) : -ENOMEM;
		if (r < 0) {
			fail_snapshot(c, r);
			goto again;
		}
		*at = s * BLK + off % BLK;
	}
	if (e <= last)
		*run = (uint32_t)(e * BLK - off);
	return where;
}

enum cow_where cow_route(struct cow *c, bool write, uint64_t off, uint32_t len, uint32_t *run,
			 uint64_t *at)
{
	return route(c, write, off, len, run, at, true);
}

bool cow_write_needs_fill(struct cow *c, uint64_t off, uint32_t len)
{
	uint64_t end = off + len;

	return atomic_load(&c->busy) && len > 0 && (off % BLK || (end % BLK && end < c->size));
}

void cow_written(struct cow *c, enum cow_where where, uint64_t off, uint32_t len, uint64_t at)
{
	uint64_t end = MIN(off + len, c->size);

	if (len == 0 || off >= c->size)
		return;
	bits_change(c->changed, off / c->chunk_size, (end - 1) / c->chunk_size + 1, true);
	if (where == COW_OVERLAY) {
		uint64_t a = off / BLK, b = (end - 1) / BLK + 1, s0 = at / BLK, added = 0;
		uint64_t now, peak;
		/* The map first (what a crash finds), then redirected. A block
		 * that has a slot keeps it: this write went there, or lost a
		 * race of first writes (see the design note). The entry is
		 * stored before the claim, so that whoever sees the claim (a
		 * loser of the race, which then sets redirected) knows the map
		 * has it; a loser takes its entry back. A crash in between may
		 * merge both slots of the block: either write, as after any
		 * crash during two concurrent writes. */
		for (uint64_t i = a; i < b; i++) {
			uint64_t s = s0 + (i - a);
			if (slot_get(c, i))
				continue; /* its own slot, or it lost (the map has the winner's) */
			map_set(c, s, i + 1);
			if (slot_claim(c, i, s))
				added++;
			else
				map_set(c, s, 0);
		}
		bits_change(c->redir, a, b, true);
		bits_change(c->dirty, a, b, true);
		now = atomic_fetch_add(&c->ov_blocks, added) + added;
		peak = atomic_load(&c->ov_peak);
		while (now > peak && !atomic_compare_exchange_weak(&c->ov_peak, &peak, now))
			;
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
		uint64_t at;
		size_t n = MIN(len - done, (size_t)UINT32_MAX & ~(size_t)(BLK - 1));
		enum cow_where w = cow_route(c, false, off + done, (uint32_t)n, &run, &at);
		ssize_t r = io_at(c, w, false, (uint8_t *)buf + done, run, at);
		if (r < 0)
			return r;
		done += (size_t)r;
		if ((size_t)r < run)
			break;
	}
	return (ssize_t)done;
}

/* Writes n bytes at off, inside block b (not redirected), into the
 * overlay's slot at (bytes): the rest of the block comes from the base.
 * Caller holds fill_mu. */
static int fill_block(struct cow *c, uint64_t b, const uint8_t *data, uint32_t n, uint64_t off,
		      uint64_t at)
{
	_Alignas(4096) uint8_t blk[BLK];
	uint64_t start = b * BLK;
	uint32_t blen = (uint32_t)(block_end(c, b) - start);
	ssize_t r;

	memset(blk, 0, sizeof(blk));
	r = io_at(c, COW_BASE, false, blk, blen, start);
	if (r < 0)
		return (int)r;
	memcpy(blk + (off - start), data, n);
	r = io_at(c, COW_OVERLAY, true, blk, blen, at);
	if (r >= 0 && (uint32_t)r < blen)
		r = -EIO;
	if (r < 0)
		return (int)r;
	cow_written(c, COW_OVERLAY, start, blen, at);
	return 0;
}

/* One piece of a write that stays inside one block or is block aligned. */
static ssize_t write_piece(struct cow *c, const uint8_t *buf, uint32_t len, uint64_t off)
{
	for (int tries = 0;; tries++) {
		uint32_t run;
		uint64_t at;
		enum cow_where w = cow_route(c, true, off, len, &run, &at);
		bool partial = off % BLK || (len < BLK && off + len < block_end(c, off / BLK));
		ssize_t r;

		if (w == COW_OVERLAY && partial && !bit_get(c->redir, off / BLK)) {
			int e = fill_block(c, off / BLK, buf, len, off, at - off % BLK);
			r = e < 0 ? e : (ssize_t)len;
			run = len;
		} else {
			r = io_at(c, w, true, (void *)buf, run, at);
			if (r >= 0 && (uint32_t)r < run)
				r = -EIO; /* the end of a block device: nothing more fits */
			if (r > 0)
				cow_written(c, w, off, (uint32_t)r, at);
		}
		if (r < 0 && w == COW_OVERLAY && tries == 0 && cow_overlay_error(c, (int)r))
			continue;
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
		uint64_t at;
		enum cow_where w = route(c, true, off + done, n, &run, &at, false);
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

/*
 * The durable map catches up: the pages of the map that changed are
 * copied, the log is made durable, then the copies. An entry stored after
 * the copy waits for the next flush; one stored before it names a slot
 * whose write had completed, which the log's fdatasync covers.
 */
int cow_sync_overlay(struct cow *c)
{
	size_t npages = c->map_len / 4096, ndirty = 0, k = 0;
	uint8_t *copy = NULL;
	uint64_t *pages = NULL;
	int r = 0;

	if (!atomic_load(&c->busy))
		return 0;
	pthread_mutex_lock(&c->sync_mu);
	for (size_t w = 0; w < words(npages); w++)
		ndirty += (size_t)__builtin_popcountll(atomic_load(&c->map_dirty[w]));
	if (ndirty && (!(copy = malloc(ndirty * 4096)) || !(pages = malloc(ndirty * sizeof(*pages))))) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t w = 0; w < words(npages) && k < ndirty; w++) {
		uint64_t bits = atomic_exchange(&c->map_dirty[w], 0);
		for (; bits && k < ndirty; bits &= bits - 1) {
			uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(bits);
			memcpy(copy + k * 4096, (const uint8_t *)c->map + p * 4096, 4096);
			pages[k++] = p;
		}
		if (bits) /* more than counted: the rest waits for the next flush */
			atomic_fetch_or(&c->map_dirty[w], bits);
	}
	if (fdatasync(c->ov_buf) < 0) {
		r = -errno;
		goto out;
	}
	for (size_t i = 0; i < k && r == 0; i++)
		if (pwrite(c->dmap_fd, copy + i * 4096, 4096, (off_t)(pages[i] * 4096)) != 4096)
			r = errno ? -errno : -EIO;
	if (r == 0 && k && fdatasync(c->dmap_fd) < 0)
		r = -errno;
out:
	if (r < 0) /* written again next time */
		for (size_t i = 0; i < k; i++)
			bits_change(c->map_dirty, pages[i], pages[i] + 1, true);
	pthread_mutex_unlock(&c->sync_mu);
	free(copy);
	free(pages);
	return r;
}

/* ---- merging ----------------------------------------------------------------------- */

/*
 * The merger reads the log in slot order, a window of slots at a time, and
 * writes each block to the base, MERGE_DEPTH writes in flight through an
 * io_uring. After random writes every block has a slot of its own and the
 * base's writes are 4 KiB each, scattered: one at a time, read and written
 * synchronously, a gigabyte took minutes. In slot order the log's reads are
 * few and sequential (a window of slots written by one burst is one read),
 * and the device sorts the writes. Blocks whose slots follow each other go
 * in one write.
 */
#define MERGE_WINDOW 1024u /* slots per window: 4 MiB of buffer */
#define MERGE_RELEASE (32u * MERGE_WINDOW) /* slots per sync and unredirect */
#define MERGE_DEPTH 64u     /* I/Os in flight: the disk idle, or a snapshot waiting */
#define MERGE_DEPTH_BUSY 16u /* while the disk's users keep it busy */
#define MERGE_BUSY_RATE 1000 /* requests per second that make the disk busy */
#define MERGE_PACE_NS 200000000ull
#define MERGE_GAP 8u       /* wanted slots this close are read in one piece */

struct merge_op {
	uint8_t *p;
	uint64_t off;
	uint32_t len, first, count; /* the window's entries [first, first + count) */
	int fd_direct, fd_buf, res;
	bool write;
};

struct merger {
	struct cow *c;
	struct io_uring ring;
	bool ring_init; /* queue_init succeeded: queue_exit at the end */
	bool ring_ok;   /* and it still works */
	uint8_t *lost_buf; /* ops lost in a broken ring may still use it: never freed */
	uint16_t prio; /* sqe->ioprio: 0, the thread's */
	uint32_t depth; /* I/Os in flight at most */
	uint64_t pace_ns, pace_requests; /* the users' requests, last looked at */
	uint8_t *buf;  /* MERGE_WINDOW slots */
	int sync_fd;   /* the base, opened again: its own writeback errors */
	bool unsafe;   /* a sync failed: nothing more stops being redirected */
	uint32_t n;    /* entries of this window: slot (from the window's first) and block */
	uint32_t slot[MERGE_WINDOW];
	uint64_t block[MERGE_WINDOW];
	int bad[MERGE_WINDOW]; /* 0, or why the entry failed */
	struct merge_op ops[MERGE_WINDOW];
};

static struct merger *merger_new(struct cow *c, uint16_t prio)
{
	struct merger *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	if (posix_memalign((void **)&m->buf, 4096, (size_t)MERGE_WINDOW * BLK)) {
		free(m);
		return NULL;
	}
	m->c = c;
	m->prio = prio;
	m->depth = MERGE_DEPTH;
	{
		/* A file description of its own, so that its syncs do not take
		 * a writeback error from the users' flushes (errseq per open). */
		char p[64];
		snprintf(p, sizeof(p), "/proc/self/fd/%d", c->base_buf);
		m->sync_fd = open(p, O_RDONLY | O_CLOEXEC);
	}
	/* Without a ring (a kernel that refuses it) the same ops run one at a time. */
	m->ring_init = m->ring_ok = io_uring_queue_init(MERGE_DEPTH, &m->ring, 0) == 0;
	return m;
}

static void merger_free(struct merger *m)
{
	if (!m)
		return;
	if (m->ring_init)
		io_uring_queue_exit(&m->ring); /* the kernel ends its ops on its own time */
	if (m->sync_fd >= 0)
		close(m->sync_fd);
	free(m->buf);
	free(m);
}

/* The rest of an op the ring did not do (all of it, without a ring). */
static void op_finish(struct merge_op *op, int res)
{
	ssize_t r;

	if (res < 0) {
		op->res = res;
		return;
	}
	r = io_full(res == 0 ? op->fd_direct : -1, op->fd_buf, op->write, op->p + res,
		    op->len - (uint32_t)res, op->off + (uint64_t)res);
	op->res = r < 0 ? (int)r : r + res < (ssize_t)op->len ? -EIO : 0;
}

/* Runs ops [0, nops): MERGE_DEPTH in flight; each ends with res 0 or -errno. */
static void merger_run(struct merger *m, uint32_t nops)
{
	uint32_t next = 0, inflight = 0;

	while (next < nops || inflight > 0) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int r;
		for (; next < nops && !m->ring_ok; next++)
			op_finish(&m->ops[next], 0);
		while (next < nops && inflight < m->depth) {
			struct merge_op *op = &m->ops[next];
			struct io_uring_sqe *sqe = io_uring_get_sqe(&m->ring);
			int fd = op->fd_direct >= 0 && ((op->off | op->len) % 512) == 0
					 ? op->fd_direct
					 : op->fd_buf;
			if (!sqe)
				break;
			if (op->write)
				io_uring_prep_write(sqe, fd, op->p, op->len, op->off);
			else
				io_uring_prep_read(sqe, fd, op->p, op->len, op->off);
			sqe->ioprio = m->prio;
			io_uring_sqe_set_data64(sqe, next);
			next++;
			inflight++;
		}
		if (inflight == 0)
			continue;
		r = io_uring_submit_and_wait(&m->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
			/* The ring is broken: what it took completes, the rest
			 * (never seen by the kernel) runs without it. If the
			 * end of some cannot be waited for, they keep res -EIO
			 * (op_add); their buffer is set aside for good, since a
			 * lost read may still land in it, and the merge is
			 * unsafe: a lost write of old data may land after a
			 * newer one, so nothing more is released and the map
			 * keeps every slot for the next start. */
			uint32_t queued = io_uring_sq_ready(&m->ring), tries = 0;
			log_warn("cow: merging without io_uring: %s", strerror(-r));
			for (uint32_t k = inflight - queued; k > 0;) {
				r = io_uring_wait_cqe(&m->ring, &cqe);
				if ((r == -EINTR || r == -EAGAIN || r == -EBUSY) && ++tries < 1000)
					continue;
				if (r < 0) {
					log_error("cow: %u merge I/Os lost in a broken io_uring: %s", k,
						  strerror(-r));
					m->lost_buf = m->buf;
					m->buf = NULL;
					m->unsafe = true;
					break;
				}
				op_finish(&m->ops[io_uring_cqe_get_data64(cqe)], cqe->res);
				io_uring_cqe_seen(&m->ring, cqe);
				k--;
			}
			m->ring_ok = false;
			next -= queued;
			inflight = 0;
			continue;
		}
		io_uring_for_each_cqe(&m->ring, head, cqe) {
			struct merge_op *op = &m->ops[io_uring_cqe_get_data64(cqe)];
			if (cqe->res == (int)op->len)
				op->res = 0;
			else
				op_finish(op, cqe->res == 0 ? -EIO : cqe->res);
			seen++;
		}
		io_uring_cq_advance(&m->ring, seen);
		inflight -= seen;
	}
}

/* Adds an op on entries [first, first + count) of the window. */
static void op_add(struct merger *m, uint32_t *nops, bool write, uint8_t *p, uint64_t off,
		   uint64_t len, uint32_t first, uint32_t count)
{
	struct cow *c = m->c;

	m->ops[(*nops)++] = (struct merge_op){
		.p = p,
		.off = off,
		.len = (uint32_t)len,
		.first = first,
		.count = count,
		.fd_direct = write ? c->base_direct : c->ov_direct,
		.fd_buf = write ? c->base_buf : c->ov_buf,
		.res = -EIO,
		.write = write,
	};
}

/* Merges the window's entries (slots from s0 + m->slot[i] to blocks
 * m->block[i], in slot order) into the base: returns the blocks merged, or
 * the first error (every entry is tried; those that failed are in m->bad). */
static int64_t merge_window(struct merger *m, uint64_t s0)
{
	struct cow *c = m->c;
	uint32_t nops = 0, n = m->n;
	int64_t merged = 0;
	int err = 0;

	memset(m->bad, 0, n * sizeof(m->bad[0]));
	if (!m->buf && posix_memalign((void **)&m->buf, 4096, (size_t)MERGE_WINDOW * BLK)) {
		m->buf = NULL; /* the old one was lost in a broken ring */
		err = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0, j; i < n; i = j) {
		for (j = i + 1; j < n && m->slot[j] - m->slot[j - 1] <= MERGE_GAP; j++)
			;
		op_add(m, &nops, false, m->buf + (size_t)m->slot[i] * BLK, (s0 + m->slot[i]) * BLK,
		       (uint64_t)(m->slot[j - 1] - m->slot[i] + 1) * BLK, i, j - i);
	}
	merger_run(m, nops);
	if (!m->buf) { /* lost with reads in it */
		err = -EIO;
		goto fail;
	}
	for (uint32_t k = 0; k < nops; k++)
		for (uint32_t i = 0; m->ops[k].res < 0 && i < m->ops[k].count; i++)
			m->bad[m->ops[k].first + i] = m->ops[k].res;
	nops = 0;
	for (uint32_t i = 0, j; i < n; i = j) {
		for (j = i + 1; j < n && !m->bad[i] && !m->bad[j] && m->block[j] == m->block[j - 1] + 1 &&
				m->slot[j] == m->slot[j - 1] + 1;
		     j++)
			;
		if (!m->bad[i])
			op_add(m, &nops, true, m->buf + (size_t)m->slot[i] * BLK, m->block[i] * BLK,
			       block_end(c, m->block[j - 1]) - m->block[i] * BLK, i, j - i);
	}
	merger_run(m, nops);
	for (uint32_t k = 0; k < nops; k++) {
		struct merge_op *op = &m->ops[k];
		if (op->res < 0) {
			for (uint32_t i = 0; i < op->count; i++)
				m->bad[op->first + i] = op->res;
			continue;
		}
		atomic_fetch_add(&c->merged, op->len);
		merged += op->count;
	}
	for (uint32_t i = 0; i < n && !err; i++)
		err = m->bad[i];
	goto out;
fail: /* none merged: every entry failed (and stays dirty) */
	for (uint32_t i = 0; i < n; i++)
		m->bad[i] = err;
out:
	if (err)
		log_error("cow: merging blocks into the disk failed: %s", strerror(-err));
	return err ? err : merged;
}

/*
 * How hard the merge presses. It costs the users what its I/O takes from
 * them: after a 2 GiB copy under random writes (1.2 GiB redirected),
 * 64 in flight merged in 32-37 s with the users at 0.64-0.68 of their
 * IOPS, 16 in flight in about 210-230 s at 0.96 (bench/RESULTS.md). So
 * it is gentle while the users are busy, and presses when they are not,
 * or when a snapshot of the disk waits for the merge (cow_start).
 */
static void merger_pace(struct merger *m)
{
	struct cow *c = m->c;
	struct timespec t;
	uint64_t now, reqs = atomic_load(&c->requests);

	clock_gettime(CLOCK_MONOTONIC, &t);
	now = (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
	if (m->pace_ns && now - m->pace_ns < MERGE_PACE_NS && !atomic_load(&c->hurry))
		return;
	m->depth = atomic_load(&c->hurry) ||
			   (m->pace_ns && (reqs - m->pace_requests) * 1000000000ull <
						  (uint64_t)MERGE_BUSY_RATE * (now - m->pace_ns))
		   ? MERGE_DEPTH
		   : MERGE_DEPTH_BUSY;
	m->pace_ns = now;
	m->pace_requests = reqs;
}

/* Slots that may have a map entry: handed out, and with map space. */
static uint64_t slots_mapped(struct cow *c)
{
	uint64_t ready = atomic_load(&c->map_ready);

	return MIN(MIN(atomic_load(&c->next_slot), c->nslots),
		   ready > MAP_HEADER ? (ready - MAP_HEADER) / 8 : 0);
}

/*
 * Blocks of slots [lo, hi) that are merged and were not written since
 * (not dirty), their merge durable in the base, stop being redirected:
 * under the gate, so that no write to them is in flight; the map's entry
 * goes first (a crash merges no stale slot over the base's newer data).
 * Later writes to them go to the base, so the merge is not a chase of
 * users who rewrite redirected blocks as fast as they are merged. Returns
 * how many.
 */
static uint64_t unredirect(struct cow *c, uint64_t lo, uint64_t hi)
{
	uint64_t n = 0;

	for (uint64_t s = lo; s < hi; s++) {
		uint64_t v = atomic_load_explicit(&c->map[MAP_HEADER / 8 + s], memory_order_relaxed);
		uint64_t b = v - 1;
		if (!v || b >= c->nblocks || slot_get(c, b) != s + 1 || bit_get(c->dirty, b))
			continue;
		map_set(c, s, 0);
		atomic_store(slot_entry(c, b), 0);
		bits_change(c->redir, b, b + 1, false);
		n++;
	}
	atomic_fetch_sub(&c->ov_blocks, n);
	return n;
}

/* Merges the dirty blocks into the base, once each; returns how many, or
 * -errno (the blocks that failed stay dirty). A block's dirty bit is
 * cleared before its slot is read: a write that completes after that
 * marks it dirty again, for the next pass. With release, every
 * MERGE_RELEASE slots the base is synced and the merged blocks stop being
 * redirected (unredirect). */
static int64_t merge_dirty(struct merger *m, bool release)
{
	struct cow *c = m->c;
	uint64_t used = slots_mapped(c), lo = 0;
	int64_t merged = 0, since = 0, r;
	int err = 0;

	release = release && !m->unsafe;
	for (uint64_t s0 = 0; s0 < used; s0 += MERGE_WINDOW) {
		uint32_t w = (uint32_t)MIN((uint64_t)MERGE_WINDOW, used - s0);
		m->n = 0;
		for (uint32_t i = 0; i < w; i++) {
			uint64_t v = atomic_load_explicit(&c->map[MAP_HEADER / 8 + s0 + i],
							  memory_order_relaxed);
			uint64_t b = v - 1;
			/* A slot whose block lost its race, or was not claimed
			 * yet, is not the block's: its entry is 0 or another's. */
			if (!v || b >= c->nblocks || slot_get(c, b) != s0 + i + 1 ||
			    !bits_change(c->dirty, b, b + 1, false))
				continue;
			m->slot[m->n] = i;
			m->block[m->n++] = b;
		}
		if (release)
			merger_pace(m);
		r = m->n ? merge_window(m, s0) : 0;
		if (r < 0) {
			for (uint32_t i = 0; i < m->n; i++)
				if (m->bad[i])
					bits_change(c->dirty, m->block[i], m->block[i] + 1, true);
			err = err ? err : (int)r;
			release = false; /* the base may not hold them */
			continue;
		}
		merged += r;
		since += r;
		if (release && (s0 + w - lo >= MERGE_RELEASE || s0 + w == used)) {
			/* Nothing merged since the last release: nothing to
			 * release (a block dirty then was merged since). */
			if (since == 0) {
				lo = s0 + w;
				continue;
			}
			/* Durable first: a flush's copy of the map may take the
			 * cleared entries as soon as the gate opens. A failed
			 * sync may have lost merged data the next one would not
			 * report: nothing is released any more and the settle
			 * fails, so the map keeps every slot until the next
			 * start merges them again. */
			if (fdatasync(m->sync_fd >= 0 ? m->sync_fd : c->base_buf) < 0) {
				log_error("cow: cannot sync the disk during the merge: %s",
					  strerror(errno));
				m->unsafe = true;
				release = false;
				continue;
			}
			gate_close(c);
			unredirect(c, lo, s0 + w);
			gate_open(c);
			lo = s0 + w;
			since = 0;
		}
	}
	return err ? err : merged;
}

/* Empties both maps, the durable one first: if that fails, nothing
 * changed in the other, and every page of it is written again at the next
 * flush. Only slots whose map space was reserved can hold an entry (a
 * store into an unreserved page could fault for want of space). */
static int map_clear(struct cow *c)
{
	static const uint8_t zeros[MERGE_IO];
	uint64_t ready = atomic_load(&c->map_ready);
	uint64_t used = MIN(MIN(atomic_load(&c->next_slot), c->nslots),
			    ready > MAP_HEADER ? (ready - MAP_HEADER) / 8 : 0);
	uint64_t end = MAP_HEADER + used * 8;
	size_t npages = c->map_len / 4096;
	int r = 0;

	pthread_mutex_lock(&c->sync_mu);
	for (uint64_t off = MAP_HEADER; off < end && r == 0; off += MERGE_IO) {
		size_t n = (size_t)MIN((uint64_t)MERGE_IO, end - off);
		if (pwrite(c->dmap_fd, zeros, n, (off_t)off) != (ssize_t)n)
			r = errno ? -errno : -EIO;
	}
	if (r == 0 && fdatasync(c->dmap_fd) < 0)
		r = -errno;
	if (r < 0) {
		bits_change(c->map_dirty, 1, npages, true);
	} else {
		for (uint64_t s = 0; s < used; s++)
			if (atomic_load_explicit(&c->map[MAP_HEADER / 8 + s], memory_order_relaxed))
				atomic_store_explicit(&c->map[MAP_HEADER / 8 + s], 0,
						      memory_order_relaxed);
		for (size_t w = 0; w < words(npages); w++)
			atomic_store(&c->map_dirty[w], 0);
	}
	pthread_mutex_unlock(&c->sync_mu);
	return r;
}

/* Under the gate: merges what is left, makes the base durable, empties
 * the map; every block goes to the base again and the slots are free. */
static int settle(struct cow *c, struct merger *m)
{
	int64_t merged = merge_dirty(m, false);
	int r;

	if (merged < 0)
		return (int)merged;
	if (m->unsafe)
		return -EIO; /* see merge_dirty */
	if (fdatasync(c->base_buf) < 0)
		return -errno;
	/* The base holds every block durably: a crash from here on merges
	 * what it already holds, until the map is empty. */
	r = map_clear(c);
	if (r < 0)
		return r;
	bits_change(c->redir, 0, c->nblocks, false);
	bits_change(c->dirty, 0, c->nblocks, false);
	slot_table_clear(c);
	atomic_store(&c->ov_blocks, 0);
	atomic_store(&c->next_slot, 0);
	return 0;
}

/* ---- the prewriter ----------------------------------------------------------------- */

/*
 * Writes the log's slots once with zeros, up to prewrite_target, at idle
 * priority, pausing while a snapshot runs: a redirected write then
 * overwrites space the file already has. Each write's slots are published
 * (pw_lo, pw_hi) before busy is looked at: a snapshot that starts later
 * sees them, and alloc_slots steps over them until the write is done.
 */
static void *prewriter_thread(void *arg)
{
	struct cow *c = arg;
	uint8_t *buf = NULL;
	struct sched_param sp = {0};
	uint64_t pos = atomic_load(&c->log_written);

	if (posix_memalign((void **)&buf, 4096, MERGE_IO))
		return NULL;
	memset(buf, 0, MERGE_IO);
	set_ioprio(DS_IOPRIO_IDLE);
	pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	while (pos < c->prewrite_target && !atomic_load(&c->prewrite_stop)) {
		size_t n = (size_t)MIN((uint64_t)MERGE_IO, c->prewrite_target - pos);
		ssize_t r;
		atomic_store(&c->pw_hi, (pos + n) / BLK);
		atomic_store(&c->pw_lo, pos / BLK);
		if (atomic_load(&c->busy)) {
			atomic_store(&c->pw_lo, 0);
			atomic_store(&c->pw_hi, 0);
			usleep(100000);
			continue;
		}
		r = io_at(c, COW_OVERLAY, true, buf, n, pos);
		atomic_store(&c->pw_lo, 0);
		atomic_store(&c->pw_hi, 0);
		if (r < 0) {
			log_warn("cow: cannot write the overlay ahead (%s); first writes during a "
				 "snapshot will be slower", strerror((int)-r));
			break;
		}
		pos += n;
		atomic_store(&c->log_written, pos);
	}
	free(buf);
	return NULL;
}

/* At open: the log is as long as it may grow, sparse past what was
 * written (a write past its end would extend it: ext4 takes those one at
 * a time); its first hole is where writing goes on. */
static void prewriter_start(struct cow *c)
{
	off_t hole = lseek(c->ov_buf, 0, SEEK_HOLE);

	atomic_store(&c->log_written, hole < 0 ? 0 : (uint64_t)hole);
	if (atomic_load(&c->log_written) >= c->prewrite_target)
		return;
	c->prewriter_started = pthread_create(&c->prewriter, NULL, prewriter_thread, c) == 0;
}

static void prewriter_stop(struct cow *c)
{
	if (!c->prewriter_started)
		return;
	atomic_store(&c->prewrite_stop, true);
	pthread_join(c->prewriter, NULL);
	c->prewriter_started = false;
}

static void *merger_thread(void *arg)
{
	struct cow *c = arg;
	struct merger *m = merger_new(c, DS_IOPRIO_IDLE);
	bool left = false;

	if (!m) {
		log_error("cow: no memory to merge; blocks stay redirected until restart");
		atomic_store(&c->merging, false);
		wake_waiters(c);
		return NULL;
	}
	set_ioprio(DS_IOPRIO_IDLE);
	pthread_mutex_lock(&c->mu);
	while (atomic_load(&c->active))
		timed_wait(c, 50);
	pthread_mutex_unlock(&c->mu);
	for (int pass = 0; pass < 4 * MERGE_PASSES; pass++)
		if (merge_dirty(m, true) < MERGE_LEFT)
			break;
	gate_close(c);
	set_ioprio(DS_IOPRIO_BE);
	m->prio = DS_IOPRIO_BE; /* the users wait */
	m->depth = MERGE_DEPTH;
	left = settle(c, m) < 0;
	if (left)
		log_error("cow: blocks stay redirected in the overlay; they are merged at the next "
			  "start");
	else
		atomic_store(&c->busy, false);
	atomic_store(&c->merged_gen, atomic_load(&c->started_gen));
	gate_open(c);
	merger_free(m);
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
	/* The last snapshot's merge ends first; it presses while we wait. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	atomic_store(&c->hurry, true);
	pthread_mutex_lock(&c->mu);
	while (atomic_load(&c->merging) && clock_gettime(CLOCK_MONOTONIC, &t) == 0 &&
	       t.tv_sec - t0.tv_sec < START_WAIT_S)
		timed_wait(c, 20);
	pthread_mutex_unlock(&c->mu);
	atomic_store(&c->hurry, false);
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
	st->log_ready = atomic_load(&c->log_written);
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

/* This boot's id ("" when it cannot be read: a map is then never trusted
 * across a restart of dsnapd, only the durable one). */
static void boot_id(char out[BOOT_ID_MAX])
{
	FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");

	memset(out, 0, BOOT_ID_MAX);
	if (f) {
		if (!fgets(out, BOOT_ID_MAX, f))
			out[0] = 0;
		out[strcspn(out, "\n")] = 0;
		fclose(f);
	}
}

/* A map's header, when it is one (0: nslots it covers), else -1. */
static int64_t map_header_read(int fd, const char *want_boot)
{
	struct map_header h;

	if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || memcmp(h.magic, MAP_MAGIC, 8) ||
	    h.version != 1 || h.block_size != BLK)
		return -1;
	h.boot_id[BOOT_ID_MAX - 1] = 0;
	if (want_boot && (!want_boot[0] || strcmp(h.boot_id, want_boot)))
		return -1;
	return (int64_t)MIN(h.nslots, (uint64_t)INT64_MAX);
}

/* Merges the entries of the map in fd (nslots of them) into the base. */
static int merge_map(struct merger *m, int fd, uint64_t nslots, uint64_t *total)
{
	struct cow *c = m->c;
	uint64_t ent[MERGE_WINDOW];
	bool warned = false;

	for (uint64_t s0 = 0; s0 < nslots; s0 += MERGE_WINDOW) {
		size_t n = (size_t)MIN((uint64_t)MERGE_WINDOW, nslots - s0);
		ssize_t k = pread(fd, ent, n * 8, (off_t)(MAP_HEADER + s0 * 8));
		uint64_t before = atomic_load(&c->merged);
		int64_t r;
		if (k < 0)
			return -errno;
		memset((uint8_t *)ent + k, 0, n * 8 - (size_t)k); /* past the end: free */
		m->n = 0;
		for (size_t i = 0; i < n; i++) {
			if (!ent[i])
				continue;
			if (ent[i] - 1 >= c->nblocks) {
				if (!warned)
					log_warn("cow: the overlay's map names blocks past the disk's "
						 "end; ignored");
				warned = true;
				continue;
			}
			m->slot[m->n] = (uint32_t)i;
			m->block[m->n++] = ent[i] - 1;
		}
		r = m->n ? merge_window(m, s0) : 0;
		if (r < 0)
			return (int)r;
		*total += atomic_load(&c->merged) - before;
	}
	return 0;
}

/* The overlay as dsnap before the log left it: a sparse file whose
 * allocated extents are their blocks' newest data, at their own offsets. */
static int merge_sparse(struct cow *c, uint8_t *buf, uint64_t *total)
{
	off_t pos = 0, d;

	while ((d = lseek(c->ov_buf, pos, SEEK_DATA)) >= 0 && (uint64_t)d < c->size) {
		off_t h = lseek(c->ov_buf, d, SEEK_HOLE);
		uint64_t end = MIN((uint64_t)(h < 0 ? (off_t)c->size : h), c->size);
		for (uint64_t off = (uint64_t)d; off < end;) {
			size_t n = (size_t)MIN(end - off, (uint64_t)MERGE_IO);
			ssize_t k = io_full(-1, c->ov_buf, false, buf, n, off);
			if (k > 0)
				k = io_full(-1, c->base_buf, true, buf, (size_t)k, off);
			if (k <= 0)
				return k < 0 ? (int)k : -EIO;
			off += n;
			*total += n;
		}
		pos = (off_t)end;
	}
	return 0;
}

/* No map could be read: an overlay as dsnap before the log left it is
 * exactly the disk's blocks long (a log is longer: nslots > nblocks); a
 * log whose maps were being set up again is not. */
static bool legacy_overlay(struct cow *c)
{
	struct stat st;

	return fstat(c->ov_buf, &st) == 0 && (uint64_t)st.st_size == c->nblocks * BLK;
}

/* Both maps empty, with this boot's header. */
static int maps_reset(struct cow *c, const char *boot)
{
	struct map_header h = {.version = 1, .block_size = BLK, .nslots = c->nslots};
	int fds[] = {c->map_fd, c->dmap_fd};

	memcpy(h.magic, MAP_MAGIC, 8);
	snprintf(h.boot_id, sizeof(h.boot_id), "%s", boot);
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		if (ftruncate(fds[i], 0) < 0 || ftruncate(fds[i], (off_t)c->map_len) < 0 ||
		    pwrite(fds[i], &h, sizeof(h), 0) != (ssize_t)sizeof(h) || fsync(fds[i]) < 0)
			return errno ? -errno : -EIO;
	return 0;
}

/* Crash recovery: the map of this boot (a crash of dsnapd), or else the
 * durable one (of the machine), names the blocks whose newest data is in
 * the overlay; they go to the base, then the maps are emptied. Without
 * maps, the overlay may be an older dsnap's sparse one. */
static int recover(struct cow *c, uint64_t *recovered)
{
	char boot[BOOT_ID_MAX];
	struct merger *m = merger_new(c, 0);
	uint64_t total = 0;
	bool legacy = false;
	int64_t n;
	int r = 0;

	boot_id(boot);
	if (!m)
		return -ENOMEM;
	if ((n = map_header_read(c->map_fd, boot)) >= 0)
		r = merge_map(m, c->map_fd, (uint64_t)n, &total);
	else if ((n = map_header_read(c->dmap_fd, NULL)) >= 0)
		r = merge_map(m, c->dmap_fd, (uint64_t)n, &total);
	else if ((legacy = legacy_overlay(c)))
		r = merge_sparse(c, m->buf, &total);
	merger_free(m);
	atomic_store(&c->merged, 0); /* the recovered bytes are told apart */
	if (r == 0 && total > 0 && fdatasync(c->base_buf) < 0)
		r = -errno;
	if (r == 0 && legacy && ftruncate(c->ov_buf, 0) < 0) /* from now on a log */
		r = -errno;
	if (r == 0)
		r = maps_reset(c, boot);
	if (r == 0 && total > 0)
		log_warn("cow: merged %llu bytes left in the overlay by a crash into the disk",
			 (unsigned long long)total);
	*recovered = total;
	return r;
}

/* Closes the fds, unmaps the map and frees the tables and c. */
static void release(struct cow *c)
{
	int fds[] = {c->base_buf, c->base_direct, c->ov_buf, c->ov_direct, c->map_fd, c->dmap_fd};

	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (c->map && c->map != MAP_FAILED)
		munmap((void *)c->map, c->map_len);
	if (c->slot_dir)
		slot_table_clear(c);
	free((void *)c->slot_dir);
	free(c->map_dirty);
	free(c->redir);
	free(c->dirty);
	free(c->copied);
	free(c->changed);
	free(c);
}

static const char *const map_suffix[] = {".map", ".dmap"};

/* path + suffix, opened read-write (created). */
static int open_beside(const char *path, const char *suffix)
{
	char p[4096];
	int fd;

	if ((size_t)snprintf(p, sizeof(p), "%s%s", path, suffix) >= sizeof(p))
		return -ENAMETOOLONG;
	fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	return fd < 0 ? -errno : fd;
}

void cow_remove(const char *overlay_path)
{
	char p[4096];

	unlink(overlay_path);
	for (size_t i = 0; i < ARRAY_SIZE(map_suffix); i++)
		if ((size_t)snprintf(p, sizeof(p), "%s%s", overlay_path, map_suffix[i]) < sizeof(p))
			unlink(p);
}

int cow_open(const char *base_path, const char *overlay_path, uint32_t chunk_size,
	     uint64_t prewrite, struct cow **out, uint64_t *recovered)
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
	c->base_buf = c->base_direct = c->ov_buf = c->ov_direct = c->map_fd = c->dmap_fd = -1;
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
	/* From now on the base is read and written with O_DIRECT. Pages it
	 * has in the page cache (an image just made by cp or dd) would only
	 * make each such write drop them first, which io_uring does by
	 * handing the write to a worker thread: written back and dropped
	 * here, once. */
	if (c->base_direct >= 0 && fdatasync(c->base_buf) == 0)
		posix_fadvise(c->base_buf, 0, 0, POSIX_FADV_DONTNEED);
	c->ov_buf = open(overlay_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (c->ov_buf < 0) {
		r = -errno;
		goto err;
	}
	c->ov_direct = open(overlay_path, O_RDWR | O_DIRECT | O_CLOEXEC);
	if ((c->map_fd = open_beside(overlay_path, map_suffix[0])) < 0 ||
	    (c->dmap_fd = open_beside(overlay_path, map_suffix[1])) < 0) {
		r = c->map_fd < 0 ? c->map_fd : c->dmap_fd;
		goto err;
	}
	c->chunk_size = chunk_size;
	c->chunk_blocks = chunk_size / BLK;
	c->nblocks = (c->size + BLK - 1) / BLK;
	c->nchunks = (c->size + chunk_size - 1) / chunk_size;
	/* every block once, and room for slots lost to failed or racing writes */
	c->nslots = MIN(c->nblocks + c->nblocks / 8 + 1024, (uint64_t)UINT32_MAX - 1);
	c->map_len = (size_t)((MAP_HEADER + c->nslots * 8 + 4095) / 4096 * 4096);
	c->prewrite_target = (MIN(prewrite, c->nblocks * BLK) + MERGE_IO - 1) / MERGE_IO * MERGE_IO;
	c->redir = calloc(words(c->nblocks) + 1, sizeof(bits_t));
	c->dirty = calloc(words(c->nblocks) + 1, sizeof(bits_t));
	c->copied = calloc(words(c->nchunks) + 1, sizeof(bits_t));
	c->changed = calloc(words(c->nchunks) + 1, sizeof(bits_t));
	c->slot_dir = calloc(slot_dir_len(c) + 1, sizeof(*c->slot_dir));
	c->map_dirty = calloc(words(c->map_len / 4096) + 1, sizeof(bits_t));
	if (!c->redir || !c->dirty || !c->copied || !c->changed || !c->slot_dir || !c->map_dirty) {
		r = -ENOMEM;
		goto err;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	pthread_mutex_init(&c->close_mu, NULL);
	pthread_mutex_init(&c->fill_mu, NULL);
	pthread_mutex_init(&c->start_mu, NULL);
	pthread_mutex_init(&c->since_mu, NULL);
	pthread_mutex_init(&c->map_mu, NULL);
	pthread_mutex_init(&c->sync_mu, NULL);
	r = recover(c, recovered);
	if (r == 0 && fstat(c->ov_buf, &st) == 0 && (uint64_t)st.st_size < c->nslots * BLK &&
	    ftruncate(c->ov_buf, (off_t)(c->nslots * BLK)) < 0)
		r = -errno;
	if (r == 0) {
		c->map = mmap(NULL, c->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, c->map_fd, 0);
		if (c->map == MAP_FAILED)
			r = -errno;
	}
	if (r < 0) {
		cow_close(c);
		return r;
	}
	map_reserve(c, c->prewrite_target / BLK); /* or at the first snapshot */
	prewriter_start(c);
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
	prewriter_stop(c);
	pthread_mutex_unlock(&c->start_mu);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->close_mu);
	pthread_mutex_destroy(&c->fill_mu);
	pthread_mutex_destroy(&c->start_mu);
	pthread_mutex_destroy(&c->since_mu);
	pthread_mutex_destroy(&c->map_mu);
	pthread_mutex_destroy(&c->sync_mu);
	release(c);
}
