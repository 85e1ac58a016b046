/*
 * Tests of the copy-on-write tracker (engine/cow) on image files, without
 * FUSE, through its public functions:
 *  - no snapshot running: I/O goes to the base, the overlay stays empty;
 *  - a snapshot running: the base keeps its point in time in every chunk
 *    the copier has not read, reads through the tracker see every write
 *    (whole blocks, sectors, odd bytes), and once the copy ends the merge
 *    leaves the base equal to what was written and the overlay empty;
 *  - an overlay left by a crash is merged into the base at open;
 *  - an overlay that cannot grow fails the snapshot and loses no write;
 *  - the changed-block bitmap: taken by cow_start, given back by a failed
 *    copy, kept across a clean detach, distrusted otherwise;
 *  - discards while a snapshot runs keep the point in time.
 *
 * The I/O helpers bracket every call with cow_enter/cow_leave as the
 * frontend does, and leave the gate before asserting (a test that failed
 * inside it would hang teardown's cow_close). Each test gets a fresh
 * folder under /tmp (setup); teardown closes the tracker, unmounts the
 * tmpfs the ENOSPC test makes, and removes the folder.
 */
#include "testutil.h"

#include <pthread.h>
#include <linux/falloc.h>

#include "cow/cow.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
#define BLK COW_BLOCK
#define REGION (64ull * MiB) /* a disk past one slot table (16384 blocks) */
#define MAXW 8               /* bitmap words: up to 512 chunks */

struct fx {
	char dir[PATH_MAX], base[PATH_MAX], overlay[PATH_MAX], cbt[PATH_MAX];
	struct cow *c;
	struct scratch_devs devs;
	/* pattern A (the base at open), pattern B (new data), what the disk
	 * must read, scratch */
	uint8_t *a, *b, *want, *got;
	uint64_t size;
	bool no_prewrite; /* the overlay log is not written in advance */
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f || tmpdir_make(f->dir, sizeof(f->dir)) < 0) {
		free(f);
		return -1;
	}
	path_cat(f->base, sizeof(f->base), f->dir, "base.img");
	path_cat(f->overlay, sizeof(f->overlay), f->dir, "overlay");
	path_cat(f->cbt, sizeof(f->cbt), f->dir, "cbt");
	test_log_capture();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	cow_close(f->c); /* before the tmpfs under its overlay goes */
	scratch_release(&f->devs);
	rm_rf(f->dir);
	free(f->a);
	free(f->b);
	free(f->want);
	free(f->got);
	free(f);
	return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

static uint8_t *xalloc(size_t len)
{
	void *p = NULL;

	/* Aligned, so that aligned writes take the trackers' O_DIRECT fds. */
	assert_int_equal(posix_memalign(&p, 4096, len ? len : 1), 0);
	return p;
}

/* A base image of size bytes holding pattern A; f->want starts as A. */
static void make_base(struct fx *f, uint64_t size)
{
	f->size = size;
	f->a = xalloc(size);
	f->b = xalloc(size);
	f->want = xalloc(size);
	f->got = xalloc(size);
	fill_random(f->a, size, 0xA);
	fill_random(f->b, size, 0xB);
	memcpy(f->want, f->a, size);
	unlink(f->base);
	assert_int_equal(write_at(f->base, 0, f->a, size), 0);
}

static void open_cow(struct fx *f, uint32_t chunk, uint64_t *recovered)
{
	assert_null(f->c);
	assert_int_equal(cow_open(f->base, f->overlay, chunk, f->no_prewrite ? 0 : 1 * MiB, &f->c,
					     recovered), 0);
	assert_int_equal(cow_size(f->c), f->size);
	assert_int_equal(cow_nchunks(f->c), (f->size + chunk - 1) / chunk);
	assert_true(cow_nchunks(f->c) <= 64 * MAXW);
}

static void open_disk(struct fx *f, uint64_t size, uint32_t chunk)
{
	uint64_t rec = 1;

	make_base(f, size);
	open_cow(f, chunk, &rec);
	assert_int_equal(rec, 0);
}

static void close_cow(struct fx *f)
{
	cow_close(f->c);
	f->c = NULL;
}

static void enter(struct cow *c)
{
	while (!cow_enter(c))
		cow_wait_open(c);
}

/* Writes through the tracker inside the gate; want follows. */
static void cw(struct fx *f, const void *buf, size_t len, uint64_t off)
{
	ssize_t r;

	enter(f->c);
	r = cow_pwrite(f->c, buf, len, off);
	cow_leave(f->c);
	assert_int_equal(r, (ssize_t)len);
	memcpy(f->want + off, buf, len);
}

static void cr(struct fx *f, void *buf, size_t len, uint64_t off)
{
	ssize_t r;

	enter(f->c);
	r = cow_pread(f->c, buf, len, off);
	cow_leave(f->c);
	assert_int_equal(r, (ssize_t)len);
}

/* The whole disk read through the tracker equals want. */
static void assert_disk_reads_want(struct fx *f)
{
	cr(f, f->got, f->size, 0);
	assert_bytes_equal(f->got, f->want, f->size);
}

/* Reads a file directly, not through the tracker. */
static void file_read(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t done = 0;

	assert_true(fd >= 0);
	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	close(fd);
	assert_int_equal(done, len);
}

/* [off, off + len) of the base file equals the same range of ref. */
static void assert_base_is(struct fx *f, const uint8_t *ref, uint64_t off, size_t len)
{
	uint8_t *p = f->got; /* scratch: a failed assertion leaks nothing */

	assert_true(off + len <= f->size && ref != p);
	file_read(f->base, p, len, off);
	if (memcmp(p, ref + off, len) != 0)
		print_error("the base differs from the reference in [%llu, +%zu)\n",
			    (unsigned long long)off, len);
	assert_bytes_equal(p, ref + off, len);
}

/* The overlay's maps (path.map, path.dmap) name no slot. */
static bool map_empty(const char *overlay)
{
	static const char *const suffix[] = {".map", ".dmap"};

	for (size_t i = 0; i < 2; i++) {
		char p[PATH_MAX + 8];
		uint64_t ent[512];
		ssize_t n;
		int fd;
		snprintf(p, sizeof(p), "%s%s", overlay, suffix[i]);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return false;
		for (off_t off = 4096; (n = pread(fd, ent, sizeof(ent), off)) > 0; off += n)
			for (size_t k = 0; k < (size_t)n / 8; k++)
				if (ent[k]) {
					close(fd);
					return false;
				}
		close(fd);
	}
	return true;
}

static struct cow_stats stats(struct cow *c)
{
	struct cow_stats st;

	memset(&st, 0xff, sizeof(st));
	cow_get_stats(c, &st);
	return st;
}

/* cow_route: where, and *at in that file (may be NULL). */
static enum cow_where route_at(struct cow *c, bool write, uint64_t off, uint32_t len,
			       uint32_t *run, uint64_t *at)
{
	uint32_t dummy;
	uint64_t dummy_at;

	return cow_route(c, write, off, len, run ? run : &dummy, at ? at : &dummy_at);
}

static enum cow_where route(struct cow *c, bool write, uint64_t off, uint32_t len, uint32_t *run)
{
	return route_at(c, write, off, len, run, NULL);
}

/* A bitmap of MAXW words with the chunks in list (ended by -1) set. */
static void bits_of(uint64_t *w, const int *list)
{
	memset(w, 0, MAXW * sizeof(*w));
	for (; *list >= 0; list++)
		w[*list / 64] |= 1ull << (*list % 64);
}

static void bits_range(uint64_t *w, uint64_t n)
{
	memset(w, 0, MAXW * sizeof(*w));
	for (uint64_t i = 0; i < n; i++)
		w[i / 64] |= 1ull << (i % 64);
}

static void assert_live_bits(struct cow *c, const uint64_t *want)
{
	uint64_t got[MAXW] = {0};

	cow_bitmap_get(c, got);
	for (int i = 0; i < MAXW; i++)
		if (got[i] != want[i])
			print_error("bitmap word %d: %#llx, want %#llx\n", i,
				    (unsigned long long)got[i], (unsigned long long)want[i]);
	assert_memory_equal(got, want, sizeof(got));
}

/* Polls the tracker's stats until done says so; false after timeout_s. */
static bool wait_stats(struct cow *c, bool (*done)(const struct cow_stats *, uint64_t),
		       uint64_t arg, double timeout_s)
{
	double t0 = now_sec();

	for (;;) {
		struct cow_stats st = stats(c);
		if (done(&st, arg))
			return true;
		if (now_sec() - t0 > timeout_s)
			return false;
		usleep(2000);
	}
}

static bool overlay_drained(const struct cow_stats *st, uint64_t unused)
{
	(void)unused;
	return st->overlay_bytes == 0 && st->merged_bytes > 0;
}

/* ---- 1. no snapshot --------------------------------------------------------------- */

static void test_idle_goes_to_base(void **state)
{
	struct fx *f = *state;
	uint64_t want_bits[MAXW];
	uint32_t run = 0;
	struct cow_stats st;
	uint8_t buf[16];

	open_disk(f, 1 * MiB, 64 * KiB);
	st = stats(f->c);
	assert_false(st.active);
	assert_false(st.busy);
	assert_false(st.failed);
	assert_int_equal(st.overlay_bytes, 0);
	assert_int_equal(route(f->c, true, 0, (uint32_t)f->size, &run), COW_BASE);
	assert_int_equal(run, f->size);
	assert_int_equal(route(f->c, false, 4096 + 512, 512, &run), COW_BASE);
	assert_false(cow_write_needs_fill(f->c, 4096 + 512, 512));

	cw(f, f->b + 128 * KiB, 64 * KiB, 128 * KiB);      /* a chunk, aligned */
	cw(f, f->b + 4096 + 512, 512, 4096 + 512);          /* one sector */
	cw(f, f->b + 300001, 1000, 300001);                 /* odd bytes */
	cw(f, f->b + f->size - BLK, BLK, f->size - BLK);    /* the last block */

	/* Everything reached the base; nothing the overlay. */
	assert_base_is(f, f->want, 0, f->size);
	assert_disk_reads_want(f);
	assert_true(map_empty(f->overlay));
	st = stats(f->c);
	assert_int_equal(st.overlay_bytes, 0);
	assert_int_equal(st.overlay_peak, 0);
	/* Only the changed bits moved. */
	bits_of(want_bits, (const int[]){0, 2, 4, 15, -1});
	assert_live_bits(f->c, want_bits);

	/* A discard punches the base. */
	enter(f->c);
	assert_int_equal(cow_fallocate(f->c, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				       512 * KiB, 64 * KiB), 0);
	cow_leave(f->c);
	memset(f->want + 512 * KiB, 0, 64 * KiB);
	assert_base_is(f, f->want, 0, f->size);
	assert_int_equal(file_size(f->base), f->size);
	assert_true(map_empty(f->overlay));

	/* Nothing past the end: writes refused, reads short. */
	assert_int_equal(cow_pwrite(f->c, f->b, 1, f->size), -ENOSPC);
	assert_int_equal(cow_pwrite(f->c, f->b, 2 * BLK, f->size - BLK), -ENOSPC);
	assert_int_equal(cow_pread(f->c, buf, sizeof(buf), f->size), 0);
	assert_int_equal(cow_pread(f->c, buf, sizeof(buf), f->size - 10), 10);
	assert_memory_equal(buf, f->want + f->size - 10, 10);
	assert_base_is(f, f->want, 0, f->size);
}

/* ---- 2. point in time ----------------------------------------------------------- */

/*
 * Writes B over the two blocks at off in pieces smaller than a block: two
 * sectors of the first block first (the first fills the block from the
 * base, the second goes into the block the overlay now has), odd-sized
 * pieces, and one crossing into the second block.
 */
static void write_in_pieces(struct fx *f, uint64_t off)
{
	static const struct {
		uint32_t at, len;
	} pieces[] = {
		{2560, 512}, {512, 512},   {0, 512},           {1024, 1000},
		{2024, 536}, {3072, 2048}, {4096 + 1024, 3072},
	};
	_Alignas(4096) uint8_t blk[BLK];

	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
		assert_true(cow_write_needs_fill(f->c, off + pieces[i].at, pieces[i].len));
		cw(f, f->b + off + pieces[i].at, pieces[i].len, off + pieces[i].at);
		if (i == 1) {
			/* Both sectors read back, A around them: neither
			 * read-modify-write lost the other. */
			cr(f, blk, BLK, off);
			assert_bytes_equal(blk, f->want + off, BLK);
			assert_bytes_equal(blk + 512, f->b + off + 512, 512);
			assert_bytes_equal(blk + 2560, f->b + off + 2560, 512);
			assert_bytes_equal(blk + 1024, f->a + off + 1024, 1536);
		}
	}
}

static void test_point_in_time(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 256 * KiB;
	uint64_t taken[MAXW], zero[MAXW] = {0}, nchunks, x = 42, off = 0;
	unsigned step = 0;
	struct cow_stats st;

	/* More blocks than one piece of the slot table holds. */
	open_disk(f, REGION + 2 * MiB, cs);
	nchunks = cow_nchunks(f->c);
	memset(taken, 0xff, sizeof(taken));
	assert_int_equal(cow_start(f->c, taken, NULL, NULL), 0);
	assert_memory_equal(taken, zero, (size_t)(nchunks + 63) / 64 * 8);
	st = stats(f->c);
	assert_true(st.active);
	assert_true(st.busy);

	while (off < f->size) {
		if (step++ % 16 == 5 && off + 2 * BLK <= f->size) {
			write_in_pieces(f, off);
			off += 2 * BLK;
		} else {
			size_t len = (size_t)(1 + splitmix64(&x) % 64) * BLK; /* 4..256 KiB */
			if (len > f->size - off)
				len = (size_t)(f->size - off);
			assert_false(cow_write_needs_fill(f->c, off, (uint32_t)len));
			cw(f, f->b + off, len, off);
			off += len;
		}
	}
	assert_memory_equal(f->want, f->b, f->size);
	/* The tracker reads B, the base still holds A, the overlay has it all. */
	assert_disk_reads_want(f);
	assert_base_is(f, f->a, 0, f->size);
	assert_false(map_empty(f->overlay));
	st = stats(f->c);
	assert_int_equal(st.overlay_bytes, f->size);

	for (uint64_t k = 0; k < nchunks; k++) {
		/* The copier has not read chunk k yet: the base holds A there. */
		assert_base_is(f, f->a, k * cs, cs);
		cow_copied(f->c, k, 1);
		if ((k + 1) * cs == REGION) /* merged after the copy, not now */
			assert_disk_reads_want(f);
	}
	cow_copy_end(f->c, true, taken, NULL);
	cow_wait_merged(f->c, 0);

	assert_int_equal(file_size(f->base), f->size);
	assert_base_is(f, f->b, 0, f->size);
	assert_disk_reads_want(f);
	assert_true(map_empty(f->overlay));
	st = stats(f->c);
	assert_false(st.busy);
	assert_false(st.active);
	assert_false(st.failed);
	assert_true(st.overlay_peak > 0);
	assert_int_equal(st.overlay_peak, f->size); /* every block was redirected */
	assert_int_equal(st.overlay_bytes, 0);
	assert_int_equal(st.merged_bytes, f->size); /* each merged once */
	assert_int_equal(route(f->c, true, 0, 64 * KiB, NULL), COW_BASE);
	/* Every chunk was written: the next snapshot reads them all. */
	bits_range(taken, nchunks);
	assert_live_bits(f->c, taken);
}

/*
 * Two threads write different sectors of the same blocks at once, each
 * sector a write of its own: every first write into a block fills it from
 * the base, and neither may lose the other's sectors.
 */
struct sector_writer {
	struct fx *f;
	unsigned first; /* sectors first, first + 2, ... of each block */
	uint64_t nblocks;
	unsigned bad;
};

static void *sector_writer(void *arg)
{
	struct sector_writer *w = arg;
	struct fx *f = w->f;

	for (uint64_t b = 0; b < w->nblocks; b++) {
		for (unsigned s = w->first; s < BLK / 512; s += 2) {
			uint64_t off = b * BLK + s * 512;
			ssize_t r;
			enter(f->c);
			r = cow_pwrite(f->c, f->b + off, 512, off);
			cow_leave(f->c);
			if (r != 512)
				w->bad++;
		}
	}
	return NULL;
}

static void test_concurrent_sector_writes(void **state)
{
	struct fx *f = *state;
	struct sector_writer w[2];
	pthread_t t[2];

	open_disk(f, 4 * MiB, 64 * KiB);
	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct sector_writer){.f = f, .first = (unsigned)i, .nblocks = f->size / BLK};
		assert_int_equal(pthread_create(&t[i], NULL, sector_writer, &w[i]), 0);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(w[0].bad + w[1].bad, 0);
	memcpy(f->want, f->b, f->size);
	assert_disk_reads_want(f);
	assert_base_is(f, f->a, 0, f->size);

	cow_copy_end(f->c, true, NULL, NULL);
	cow_wait_merged(f->c, 0);
	assert_base_is(f, f->want, 0, f->size);
	assert_true(map_empty(f->overlay));
}

/* ---- 3. routing after the copier read a chunk ---------------------------------- */

static void test_route_after_copied(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	const uint64_t x = 1 * BLK, y = 3 * BLK;
	_Alignas(4096) uint8_t p[4][BLK];
	uint8_t blk[BLK];
	uint32_t run = 0;
	uint64_t at = 0;

	for (int i = 0; i < 4; i++)
		fill_random(p[i], BLK, 100 + (uint64_t)i);
	open_disk(f, 1 * MiB, cs);
	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);

	/* Chunk 0 not copied: writes to the overlay, reads from the base. */
	assert_int_equal(route(f->c, true, x, BLK, &run), COW_OVERLAY);
	assert_int_equal(run, BLK);
	assert_int_equal(route(f->c, false, x, BLK, &run), COW_BASE);
	cw(f, p[0], BLK, x);
	assert_int_equal(route(f->c, true, x, BLK, NULL), COW_OVERLAY);
	assert_int_equal(route(f->c, false, x, BLK, NULL), COW_OVERLAY);
	/* A read across block 0 (base) and block 1 (overlay) stops at the seam. */
	assert_int_equal(route(f->c, false, 0, 4 * BLK, &run), COW_BASE);
	assert_int_equal(run, BLK);

	cow_copied(f->c, 0, 1);
	/* Copied, not redirected: the base. */
	assert_int_equal(route(f->c, true, 0, 4 * BLK, &run), COW_BASE);
	assert_int_equal(run, BLK);
	assert_int_equal(route(f->c, true, y, BLK, &run), COW_BASE);
	assert_int_equal(run, BLK);
	cw(f, p[1], BLK, y);
	assert_base_is(f, f->want, y, BLK);
	/* Redirected: still the overlay, the base keeps A. */
	assert_int_equal(route(f->c, true, x, BLK, NULL), COW_OVERLAY);
	cw(f, p[2], BLK, x);
	assert_true(cow_write_needs_fill(f->c, x + 1024, 512));
	cw(f, p[3], 512, x + 1024); /* into the block the overlay has */
	assert_base_is(f, f->a, x, BLK);
	assert_int_equal(route_at(f->c, false, x, BLK, NULL, &at), COW_OVERLAY);
	file_read(f->overlay, blk, BLK, at); /* its slot in the log */
	assert_bytes_equal(blk, f->want + x, BLK);
	assert_disk_reads_want(f);
	/* Chunk 1 not copied. */
	assert_int_equal(route(f->c, true, cs, BLK, NULL), COW_OVERLAY);
	assert_int_equal(route(f->c, false, cs, BLK, NULL), COW_BASE);

	/* Copy the rest: x stays redirected until the merger, which runs
	 * once the copy has ended (the overlay is small), drains the
	 * overlay; after that x goes to the base again. */
	cow_copied(f->c, 1, cow_nchunks(f->c) - 1);
	assert_int_equal(route(f->c, true, x, BLK, NULL), COW_OVERLAY);
	cow_copy_end(f->c, true, NULL, NULL);
	assert_true(wait_stats(f->c, overlay_drained, 0, 30));
	cow_wait_merged(f->c, 0);
	assert_base_is(f, f->want, 0, f->size);
	assert_int_equal(route(f->c, true, x, BLK, NULL), COW_BASE);
	assert_int_equal(route(f->c, false, x, BLK, NULL), COW_BASE);
	cw(f, p[0], BLK, x);
	assert_base_is(f, f->want, x, BLK);
	assert_false(stats(f->c).busy);
	assert_int_equal(route(f->c, true, 0, (uint32_t)f->size, &run), COW_BASE);
	assert_int_equal(run, f->size);
	assert_base_is(f, f->want, 0, f->size);
	assert_disk_reads_want(f);
	assert_true(map_empty(f->overlay));
}

/* ---- 4. crash recovery ------------------------------------------------------------ */

static void test_recover_overlay(void **state)
{
	struct fx *f = *state;
	static const struct {
		uint64_t off, len;
	} ext[] = {
		{0, BLK}, {3 * BLK, 3 * BLK}, {1 * MiB + BLK, 64 * KiB}, {4 * MiB - BLK, BLK},
	};
	uint64_t rec = 0, total = 0;

	if (!fs_keeps_holes(f->dir))
		skip();
	make_base(f, 4 * MiB);
	/* An overlay as a crash leaves it: whole blocks at their own
	 * offsets, holes elsewhere. */
	for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++) {
		assert_int_equal(write_at(f->overlay, ext[i].off, f->b + ext[i].off, ext[i].len), 0);
		memcpy(f->want + ext[i].off, f->b + ext[i].off, ext[i].len);
		total += ext[i].len;
	}
	assert_int_equal(file_truncate(f->overlay, f->size), 0);

	open_cow(f, 64 * KiB, &rec);
	assert_int_equal(rec, total);
	assert_true(test_log_has("by a crash"));
	assert_base_is(f, f->want, 0, f->size);
	assert_true(map_empty(f->overlay));
	assert_false(stats(f->c).busy);
	assert_disk_reads_want(f);

	/* Nothing is left for the next open. */
	close_cow(f);
	rec = 1;
	open_cow(f, 64 * KiB, &rec);
	assert_int_equal(rec, 0);
	assert_base_is(f, f->want, 0, f->size);
}

/* In a child: a snapshot runs, writes w[0..nsync) are made and flushed,
 * then w[nsync..n) are made, and the process is killed. Some are
 * redirected, some (in chunk 3, copied) reach the base. */
static void crash_child(struct fx *f, const uint64_t (*w)[2], size_t n, size_t nsync, uint32_t cs)
{
	struct cow *c = NULL;

	child_default_signals();
	if (cow_open(f->base, f->overlay, cs, 1 * MiB, &c, NULL) < 0 || cow_start(c, NULL, NULL, NULL) < 0)
		_exit(10);
	cow_copied(c, 3, 1);
	for (size_t i = 0; i < n; i++) {
		if (cow_pwrite(c, f->b + w[i][0], w[i][1], w[i][0]) != (ssize_t)w[i][1])
			_exit(11);
		if (i + 1 == nsync && cow_sync_overlay(c) < 0)
			_exit(12);
	}
	raise(SIGKILL);
	_exit(13);
}

static void run_crash_child(struct fx *f, const uint64_t (*w)[2], size_t n, size_t nsync,
			    uint32_t cs)
{
	int st = 0;
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0)
		crash_child(f, w, n, nsync, cs);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (WIFEXITED(st))
		print_error("the child exited with %d\n", WEXITSTATUS(st));
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
}

/* {off, len}: a block, a run across two chunks, one sector, and a block
 * in chunk 3 (copied: the base); then, not flushed, two more blocks. */
static const uint64_t crash_writes[][2] = {
	{2 * BLK, BLK},
	{64 * KiB - 2 * BLK, 128 * KiB},
	{1 * MiB + 1536, 512},
	{3 * 64 * KiB + BLK, BLK},
	{9 * BLK, BLK},
	{2 * MiB, 2 * BLK},
};
#define CRASH_SYNCED 4
#define CRASH_REDIRECTED (BLK + 128 * KiB + BLK) /* of the flushed writes */

/* dsnapd killed: every completed write is found again, flushed or not. */
static void test_recover_after_kill(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	uint64_t rec = 0;

	make_base(f, 4 * MiB);
	run_crash_child(f, crash_writes, (sizeof(crash_writes) / sizeof(crash_writes[0])), CRASH_SYNCED, cs);
	for (size_t i = 0; i < (sizeof(crash_writes) / sizeof(crash_writes[0])); i++)
		memcpy(f->want + crash_writes[i][0], f->b + crash_writes[i][0], crash_writes[i][1]);
	/* The base still holds A where the writes were redirected. */
	assert_base_is(f, f->a, 0, 3 * 64 * KiB);
	assert_base_is(f, f->want, 3 * 64 * KiB + BLK, BLK);
	assert_base_is(f, f->a, 2 * MiB, 2 * BLK);
	assert_false(map_empty(f->overlay));

	open_cow(f, cs, &rec);
	assert_int_equal(rec, CRASH_REDIRECTED + 3 * BLK);
	assert_base_is(f, f->want, 0, f->size);
	assert_true(map_empty(f->overlay));
	assert_disk_reads_want(f);
}

/* The machine went down: the map of another boot is not trusted, the
 * durable one brings back every flushed write (the others may go, as on
 * any disk after a power cut). */
static void test_recover_after_power_cut(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	char map[PATH_MAX + 8];
	uint64_t rec = 0;

	make_base(f, 4 * MiB);
	run_crash_child(f, crash_writes, (sizeof(crash_writes) / sizeof(crash_writes[0])), CRASH_SYNCED, cs);
	/* another boot: the header's boot id (after magic, version, block
	 * size) is not this one's */
	snprintf(map, sizeof(map), "%s.map", f->overlay);
	assert_int_equal(write_at(map, 16, "not-this-boot", 14), 0);
	for (size_t i = 0; i < CRASH_SYNCED; i++)
		memcpy(f->want + crash_writes[i][0], f->b + crash_writes[i][0], crash_writes[i][1]);

	open_cow(f, cs, &rec);
	assert_int_equal(rec, CRASH_REDIRECTED);
	assert_base_is(f, f->want, 0, f->size);
	assert_true(map_empty(f->overlay));
	assert_disk_reads_want(f);
}

/* The blocks of [0, nblocks) in a random order. */
static uint64_t *shuffled_blocks(uint64_t nblocks, uint64_t seed)
{
	uint64_t *o = malloc(nblocks * sizeof(*o));

	assert_non_null(o);
	for (uint64_t i = 0; i < nblocks; i++)
		o[i] = i;
	for (uint64_t i = nblocks - 1; i > 0; i--) {
		uint64_t j = splitmix64(&seed) % (i + 1), t = o[i];
		o[i] = o[j];
		o[j] = t;
	}
	return o;
}

/* A crash after random 4 KiB writes: every block in a slot of its own,
 * slots in no order of blocks, more than one merge window of them. */
static void test_recover_scattered(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	const uint64_t n = 3000;
	uint64_t rec = 0, *o, (*w)[2];

	make_base(f, 16 * MiB);
	o = shuffled_blocks(f->size / BLK, 7);
	w = calloc(n, sizeof(*w));
	assert_non_null(w);
	for (uint64_t i = 0; i < n; i++) {
		w[i][0] = o[i] * BLK;
		w[i][1] = BLK;
	}
	run_crash_child(f, (const uint64_t(*)[2])w, n, n, cs);
	for (uint64_t i = 0; i < n; i++)
		memcpy(f->want + w[i][0], f->b + w[i][0], BLK);
	open_cow(f, cs, &rec);
	/* chunk 3 was copied: its writes went to the base */
	for (uint64_t i = 0; i < n; i++)
		if (w[i][0] / cs != 3)
			rec -= BLK;
	assert_int_equal(rec, 0);
	assert_base_is(f, f->want, 0, f->size);
	assert_true(map_empty(f->overlay));
	assert_disk_reads_want(f);
	free(w);
	free(o);
}

/* ---- 5. the overlay cannot grow --------------------------------------------------- */

/* A tmpfs at dir, listed in f->devs so that teardown unmounts it. */
static int small_tmpfs(struct fx *f, const char *dir, const char *opts)
{
	int slot = -1;

	for (int i = 0; i < SCRATCH_MOUNTS && slot < 0; i++)
		if (!f->devs.mnt[i][0])
			slot = i;
	if (slot < 0)
		return -EMFILE;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (mount("tmpfs", dir, "tmpfs", 0, opts) < 0)
		return -errno;
	snprintf(f->devs.mnt[slot], sizeof(f->devs.mnt[slot]), "%s", dir);
	return 0;
}

static void test_overlay_full(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	uint64_t taken[MAXW], want_bits[MAXW];
	char small[PATH_MAX];
	struct cow_stats st;
	int r;

	if (geteuid() != 0)
		skip();
	path_cat(small, sizeof(small), f->dir, "small");
	r = small_tmpfs(f, small, "size=1m");
	if (r == -EPERM)
		skip();
	assert_int_equal(r, 0);
	path_cat(f->overlay, sizeof(f->overlay), small, "overlay");
	f->no_prewrite = true; /* its slots are allocated as they are used */

	open_disk(f, 8 * MiB, cs);
	cw(f, f->b + 7 * MiB, BLK, 7 * MiB); /* chunk 112, before the snapshot */
	assert_int_equal(cow_start(f->c, taken, NULL, NULL), 0);
	bits_of(want_bits, (const int[]){112, -1});
	assert_memory_equal(taken, want_bits, 2 * sizeof(uint64_t));

	/* 4 MiB of new blocks into a 1 MiB overlay; some start with a sector
	 * (the fill path). Every write succeeds. */
	for (uint64_t off = 0; off < 4 * MiB; off += cs) {
		if (off / cs % 5 == 2)
			cw(f, f->b + off + 1536, 512, off + 1536);
		cw(f, f->b + off, cs, off);
	}
	assert_true(cow_failed(f->c));
	assert_true(test_log_has("the overlay cannot grow"));
	st = stats(f->c);
	assert_true(st.failed);
	assert_false(st.active);
	assert_true(st.overlay_peak > 0);
	/* The point in time is let go (the merger may be done already): new
	 * blocks go to the base ... */
	assert_int_equal(route(f->c, true, 6 * MiB, BLK, NULL), COW_BASE);
	cw(f, f->b + 6 * MiB, BLK, 6 * MiB);
	assert_base_is(f, f->want, 6 * MiB, BLK);
	/* ... and blocks that were redirected can still be rewritten. */
	cw(f, f->a + 5 * MiB, BLK, 0);
	cw(f, f->a + 5 * MiB + 512, 512, 512);
	assert_disk_reads_want(f);

	cow_copy_end(f->c, false, taken, NULL);
	cow_wait_merged(f->c, 0);
	st = stats(f->c);
	assert_false(st.busy);
	assert_int_equal(st.overlay_bytes, 0);
	assert_base_is(f, f->want, 0, f->size);
	assert_disk_reads_want(f);
	assert_true(map_empty(f->overlay));
	/* The failed snapshot's chunks count as changed again. */
	bits_range(want_bits, 64);
	want_bits[96 / 64] |= 1ull << (96 % 64);
	want_bits[112 / 64] |= 1ull << (112 % 64);
	assert_live_bits(f->c, want_bits);

	/* The overlay's space came back: the next snapshot redirects again. */
	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);
	assert_false(cow_failed(f->c));
	cw(f, f->b + 5 * MiB, 64 * KiB, 5 * MiB);
	assert_false(cow_failed(f->c));
	assert_base_is(f, f->a, 5 * MiB, 64 * KiB);
	cow_copy_end(f->c, true, NULL, NULL);
	cow_wait_merged(f->c, 0);
	assert_base_is(f, f->want, 0, f->size);
	assert_true(map_empty(f->overlay));
}

/* cbt_load, then the since it loaded into since (64 bytes). */
static int load_since(struct fx *f, char *since)
{
	int r = cbt_load(f->cbt, f->c, f->base);

	cow_since(f->c, since, NULL);
	return r;
}

static int save_since(struct fx *f, const char *since)
{
	cow_since(f->c, NULL, since);
	return cbt_save(f->cbt, f->c, f->base);
}

/* ---- 6. changed-block bitmap ------------------------------------------------------ */

static void test_changed_bitmap(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	/* 131 chunks, the last one short: three bitmap words. */
	const uint64_t size = 130ull * cs + BLK;
	const uint64_t n = 131;
	uint64_t taken[MAXW], taken2[MAXW], w[MAXW], none[MAXW] = {0};
	const struct timespec old[2] = {{1000000000, 0}, {1000000000, 0}};
	char since[64];

	open_disk(f, size, cs);
	assert_int_equal(cow_nchunks(f->c), n);
	assert_live_bits(f->c, none);
	cw(f, f->b, BLK, 0);
	cw(f, f->b + 5 * cs + 100, 512, 5 * cs + 100);
	cw(f, f->b + 64 * cs - BLK, 2 * BLK, 64 * cs - BLK); /* chunks 63 and 64 */
	cw(f, f->b + 130 * cs, BLK, 130 * cs);
	bits_of(w, (const int[]){0, 5, 63, 64, 130, -1});
	assert_live_bits(f->c, w);

	/* cow_start takes exactly those; the live bitmap starts empty. */
	memset(taken, 0xee, sizeof(taken));
	assert_int_equal(cow_start(f->c, taken, NULL, NULL), 0);
	assert_memory_equal(taken, w, 3 * sizeof(uint64_t));
	assert_live_bits(f->c, none);
	cw(f, f->b + 7 * cs, BLK, 7 * cs); /* redirected, and changed */
	bits_of(w, (const int[]){7, -1});
	assert_live_bits(f->c, w);
	/* A failed copy puts them back. */
	cow_copy_end(f->c, false, taken, NULL);
	cow_wait_merged(f->c, 0);
	bits_of(w, (const int[]){0, 5, 7, 63, 64, 130, -1});
	assert_live_bits(f->c, w);

	/* An accomplished one does not. */
	assert_int_equal(cow_start(f->c, taken2, NULL, NULL), 0);
	assert_memory_equal(taken2, w, 3 * sizeof(uint64_t));
	cow_copied(f->c, 0, n);
	cow_copy_end(f->c, true, taken2, NULL);
	cow_wait_merged(f->c, 0);
	assert_live_bits(f->c, none);
	assert_base_is(f, f->want, 0, f->size);

	/* Saved at a clean detach, loaded by the next tracker. */
	cw(f, f->b + 9 * cs, BLK, 9 * cs);
	cw(f, f->b + 100 * cs + 2 * BLK, BLK, 100 * cs + 2 * BLK);
	bits_of(w, (const int[]){9, 100, -1});
	assert_live_bits(f->c, w);
	assert_int_equal(save_since(f, "snap-0001"), 0);
	close_cow(f);
	open_cow(f, cs, NULL);
	assert_live_bits(f->c, none);
	assert_int_equal(load_since(f, since), 1);
	assert_string_equal(since, "snap-0001");
	assert_live_bits(f->c, w);

	/* The load marked the file dirty: a second load (a crash since) trusts
	 * nothing. */
	assert_int_equal(load_since(f, since), 0);
	assert_string_equal(since, "");
	bits_range(w, n);
	assert_live_bits(f->c, w);

	/* The base touched while detached: not trusted. */
	bits_of(w, (const int[]){9, 100, -1});
	cow_bitmap_set(f->c, w);
	assert_int_equal(save_since(f, "snap-0002"), 0);
	close_cow(f);
	assert_int_equal(utimensat(AT_FDCWD, f->base, old, 0), 0);
	open_cow(f, cs, NULL);
	strcpy(since, "junk");
	assert_int_equal(load_since(f, since), 0);
	assert_string_equal(since, "");
	bits_range(w, n);
	assert_live_bits(f->c, w);

	/* No file at all: not trusted either. */
	close_cow(f);
	unlink(f->cbt);
	open_cow(f, cs, NULL);
	assert_int_equal(load_since(f, since), 0);
	assert_live_bits(f->c, w);
	cow_bitmap_set(f->c, none);
	cow_distrust(f->c);
	assert_live_bits(f->c, w);
}

/* ---- 7. discards while a snapshot runs ---------------------------------------- */

static void test_punch_while_busy(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	/* From inside chunk 3 (copied) over chunks 4..8 (not copied) into chunk 9. */
	const uint64_t p0 = 3 * cs + 8 * KiB, p1 = 9 * cs + 1536;
	int r;

	open_disk(f, 2 * MiB, cs);
	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);
	cw(f, f->b + 6 * cs + BLK, BLK, 6 * cs + BLK); /* redirected, then discarded */
	cow_copied(f->c, 0, 4);

	enter(f->c);
	r = cow_fallocate(f->c, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, p0, p1 - p0);
	cow_leave(f->c);
	assert_int_equal(r, 0);
	memset(f->want + p0, 0, p1 - p0);

	assert_disk_reads_want(f);
	/* Copied chunk 3: punched in the base; chunks not copied: A kept. */
	assert_base_is(f, f->want, 3 * cs, cs);
	assert_base_is(f, f->a, 4 * cs, f->size - 4 * cs);

	cow_copied(f->c, 4, cow_nchunks(f->c) - 4);
	cow_copy_end(f->c, true, NULL, NULL);
	cow_wait_merged(f->c, 0);
	assert_false(stats(f->c).busy);
	assert_int_equal(file_size(f->base), f->size);
	assert_base_is(f, f->want, 0, f->size);
	assert_disk_reads_want(f);
	assert_true(map_empty(f->overlay));
}

/*
 * fallocate with FALLOC_FL_KEEP_SIZE alone only reserves space: the data
 * stays. The frontend passes every KEEP_SIZE mode to cow_fallocate (a
 * fallocate(2) on the FUSE disk file). Not busy, it reaches the base as
 * it is; while a snapshot runs, the data must stay too.
 */
static void test_preallocate_while_busy_keeps_data(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 64 * KiB;
	int r;

	open_disk(f, 1 * MiB, cs);
	enter(f->c);
	r = cow_fallocate(f->c, FALLOC_FL_KEEP_SIZE, 0, 2 * cs);
	cow_leave(f->c);
	assert_int_equal(r, 0);
	assert_disk_reads_want(f);

	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);
	cw(f, f->b + cs + BLK, BLK, cs + BLK); /* a redirected block in the range */
	enter(f->c);
	r = cow_fallocate(f->c, FALLOC_FL_KEEP_SIZE, 0, 2 * cs);
	cow_leave(f->c);
	/* refused while a snapshot is being created: it changes no data */
	assert_true(r == 0 || r == -EOPNOTSUPP);
	assert_disk_reads_want(f);
	cow_copy_end(f->c, true, NULL, NULL);
	cow_wait_merged(f->c, 0);
	assert_base_is(f, f->want, 0, f->size);
}

/* ---- 8. a write in flight while the copy ends ---------------------------------- */

/*
 * The frontend's path for a whole-block write: cow_enter, cow_route, the
 * write on the overlay's fd, cow_written, cow_leave. Here the write is
 * routed to the overlay before its chunk is copied and completes after
 * the copy ended, while the merger waits on the gate for its last step
 * (its passes found nothing redirected). The
 * write was acknowledged: the disk must read it, and the base must hold
 * it once merged.
 */
static void test_write_in_flight_at_copy_end(void **state)
{
	struct fx *f = *state;
	const uint64_t x = 5 * BLK;
	enum cow_where w;
	uint32_t run = 0;
	uint64_t at = 0;
	bool entered, closed = false;
	ssize_t n = -1;
	struct cow_stats st;

	open_disk(f, 1 * MiB, 64 * KiB);
	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);
	entered = cow_enter(f->c);
	assert_true(entered);
	w = cow_route(f->c, true, x, BLK, &run, &at);
	cow_copied(f->c, 0, cow_nchunks(f->c));
	cow_copy_end(f->c, true, NULL, NULL);
	/* The merger closes the gate for its last step. */
	for (double t0 = now_sec(); !closed && now_sec() - t0 < 10;) {
		if (cow_enter(f->c)) {
			cow_leave(f->c);
			usleep(1000);
		} else {
			closed = true;
		}
	}
	n = pwrite(w == COW_OVERLAY ? cow_overlay_fd(f->c, false) : cow_base_fd(f->c, false),
		   f->b + x, BLK, (off_t)at);
	if (n == BLK)
		cow_written(f->c, w, x, BLK, at);
	cow_leave(f->c);
	cow_wait_merged(f->c, 0);

	assert_int_equal(w, COW_OVERLAY);
	assert_int_equal(run, BLK);
	assert_true(closed);
	assert_int_equal(n, BLK);
	memcpy(f->want + x, f->b + x, BLK);
	st = stats(f->c);
	assert_false(st.busy);
	assert_disk_reads_want(f);
	assert_base_is(f, f->want, 0, f->size);
	assert_true(map_empty(f->overlay));
}

/*
 * The merge after random writes: each block in its own slot, slots in no
 * order of blocks, while a writer keeps rewriting redirected blocks (in
 * their slots, marking them dirty again behind the merger).
 */
struct rewriter {
	struct fx *f;
	const uint64_t *blocks;
	uint64_t n;
	unsigned bad;
};

static void *rewriter(void *arg)
{
	struct rewriter *w = arg;
	struct fx *f = w->f;

	for (uint64_t i = 0; i < w->n; i++) {
		uint64_t off = w->blocks[i] * BLK;
		ssize_t r;
		enter(f->c);
		r = cow_pwrite(f->c, f->a + off, BLK, off); /* A again: not B */
		cow_leave(f->c);
		if (r != BLK)
			w->bad++;
		memcpy(f->want + off, f->a + off, BLK);
	}
	return NULL;
}

static void test_merge_scattered(void **state)
{
	struct fx *f = *state;
	const uint32_t cs = 256 * KiB;
	uint64_t *o, nblocks, taken[MAXW];
	struct rewriter w;
	pthread_t t;
	struct cow_stats st;

	open_disk(f, 24 * MiB, cs);
	nblocks = f->size / BLK;
	o = shuffled_blocks(nblocks, 11);
	assert_int_equal(cow_start(f->c, taken, NULL, NULL), 0);
	for (uint64_t i = 0; i < nblocks; i++)
		cw(f, f->b + o[i] * BLK, BLK, o[i] * BLK);
	assert_base_is(f, f->a, 0, f->size);
	assert_int_equal(stats(f->c).overlay_bytes, f->size);

	/* half the blocks again, in another order, during the merge */
	free(o);
	o = shuffled_blocks(nblocks, 12);
	w = (struct rewriter){.f = f, .blocks = o, .n = nblocks / 2};
	cow_copied(f->c, 0, cow_nchunks(f->c));
	cow_copy_end(f->c, true, taken, NULL);
	assert_int_equal(pthread_create(&t, NULL, rewriter, &w), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	cow_wait_merged(f->c, 0);

	assert_int_equal(w.bad, 0);
	st = stats(f->c);
	assert_false(st.busy);
	assert_int_equal(st.overlay_bytes, 0);
	assert_true(st.merged_bytes >= f->size);
	assert_base_is(f, f->want, 0, f->size);
	assert_disk_reads_want(f);
	assert_true(map_empty(f->overlay));
	free(o);
}

/* ---- 9. a disk whose size is not a whole number of blocks ------------------- */

static void test_short_last_block(void **state)
{
	struct fx *f = *state;
	const uint64_t size = 1 * MiB + 1000;
	uint64_t rec;
	uint8_t buf[100];
	bool empty;

	open_disk(f, size, 64 * KiB);
	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);
	/* Across the last whole block into the short one: both filled. */
	cw(f, f->b + 1 * MiB - 512, 1024, 1 * MiB - 512);
	/* Odd bytes into the short block the overlay now has. */
	cw(f, f->b + 1 * MiB + 700, 100, 1 * MiB + 700);
	/* The short block whole, up to the end. */
	assert_false(cow_write_needs_fill(f->c, 1 * MiB, 1000));
	assert_base_is(f, f->a, 0, f->size);
	assert_disk_reads_want(f);
	assert_int_equal(cow_pread(f->c, buf, sizeof(buf), size - 10), 10);
	assert_memory_equal(buf, f->want + size - 10, 10);
	cw(f, f->a + 4096, 1000, 1 * MiB);
	assert_base_is(f, f->a, 1 * MiB, 1000);
	assert_disk_reads_want(f);

	cow_copied(f->c, 0, cow_nchunks(f->c));
	cow_copy_end(f->c, true, NULL, NULL);
	cow_wait_merged(f->c, 0);
	assert_int_equal(file_size(f->base), size);
	assert_base_is(f, f->want, 0, f->size);
	assert_disk_reads_want(f);
	assert_int_equal(stats(f->c).merged_bytes, BLK + 1000);
	empty = map_empty(f->overlay);

	/* The next start must find nothing to recover and change nothing. */
	close_cow(f);
	rec = 1;
	open_cow(f, 64 * KiB, &rec);
	assert_base_is(f, f->want, 0, f->size);
	assert_int_equal(rec, 0);
	assert_true(empty);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_idle_goes_to_base),
		T(test_point_in_time),
		T(test_concurrent_sector_writes),
		T(test_route_after_copied),
		T(test_recover_overlay),
		T(test_recover_after_kill),
		T(test_recover_after_power_cut),
		T(test_recover_scattered),
		T(test_overlay_full),
		T(test_changed_bitmap),
		T(test_punch_while_busy),
		T(test_preallocate_while_busy_keeps_data),
		T(test_write_in_flight_at_copy_end),
		T(test_merge_scattered),
		T(test_short_last_block),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
