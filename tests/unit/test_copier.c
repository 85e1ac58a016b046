/*
 * Tests of the copier (engine/copier) and of ds_image_backup/restore
 * (engine/snapshot/image.c) on top of it: sparse images round trip byte
 * for byte and stay sparse, restores refuse targets they would damage,
 * and read errors, cancellation, a source that stops being a point in
 * time, and a source that shrank all stop the copy with their error and
 * leave the store clean.
 *
 * Chunks are 16 KiB, so a 4 MiB slab holds 256 of them and a few MiB
 * exercise several slabs and workers. Each test gets a fresh folder under
 * /tmp (setup) that teardown removes, with any loop device it attached.
 */
#include "testutil.h"

#include <stdatomic.h>

#include <dsnap/snapshot.h>
#include <dsnap/store.h>

#include "copier/copier.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KiB 1024u
#define MiB (1024u * 1024u)
#define CS (16u * KiB)

struct fx {
	char tmp[PATH_MAX];
	char dir[PATH_MAX];
	struct ds_store *s;
	struct scratch_devs devs;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct ds_store_options o = {.chunk_size = CS};

	if (!f || tmpdir_make(f->tmp, sizeof(f->tmp)) < 0) {
		free(f);
		return -1;
	}
	path_cat(f->dir, sizeof(f->dir), f->tmp, "store");
	test_log_capture();
	*state = f;
	if (ds_store_create(f->dir, &o) < 0 || ds_store_open(f->dir, &f->s) < 0)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	scratch_release(&f->devs);
	ds_store_close(f->s);
	rm_rf(f->tmp);
	free(f);
	return 0;
}

/* ---- images ------------------------------------------------------------------- */

/* Bytes written into an image; everything else is a hole. GEN_ZERO
 * writes real zeros (allocated, not a hole). */
struct extent {
	uint64_t off, len;
	enum gen_kind kind;
};

struct layout {
	const char *name;
	uint64_t size;
	struct extent ext[6];
	bool alternate; /* data in every other chunk, holes between */
};

static void make_image(const char *path, const struct layout *l)
{
	uint8_t *buf = malloc(2 * MiB);

	assert_non_null(buf);
	unlink(path);
	assert_int_equal(file_truncate(path, l->size), 0);
	for (size_t i = 0; i < ARRAY_SIZE(l->ext) && l->ext[i].len; i++) {
		const struct extent *e = &l->ext[i];
		assert_true(e->len <= 2 * MiB && e->off + e->len <= l->size);
		gen_fill(buf, e->len, e->off + 1, e->kind);
		assert_int_equal(write_at(path, e->off, buf, e->len), 0);
	}
	for (uint64_t off = 0; l->alternate && off < l->size; off += 2 * CS) {
		uint64_t len = l->size - off < CS ? l->size - off : CS;
		gen_fill(buf, len, off + 7, (enum gen_kind)(off / (2 * CS) % 2 ? GEN_TEXT : GEN_RANDOM));
		assert_int_equal(write_at(path, off, buf, len), 0);
	}
	free(buf);
}

struct prog {
	uint64_t calls, max_done, total;
	bool total_changed;
	atomic_bool *cancel_at_first; /* set this flag at the first call */
};

static void on_progress(uint64_t done, uint64_t total, void *opaque)
{
	struct prog *p = opaque;

	if (p->calls++ == 0)
		p->total = total;
	else if (p->total != total)
		p->total_changed = true;
	if (done > p->max_done)
		p->max_done = done;
	if (p->cancel_at_first)
		atomic_store(p->cancel_at_first, true);
}

static int backup_path(struct fx *f, const char *path, uint64_t size, ds_chunk_id *root,
		       struct prog *p)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int r;

	assert_true(fd >= 0);
	r = ds_image_backup(f->s, fd, size, root, p ? on_progress : NULL, p);
	close(fd);
	return r;
}

static int restore_path(struct fx *f, const ds_chunk_id *root, const char *path, struct prog *p)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	int r;

	assert_true(fd >= 0);
	r = ds_image_restore(f->s, root, fd, p ? on_progress : NULL, p);
	close(fd);
	return r;
}

/* Every chunk that is all zero in src is a hole in dst; every other one holds data. */
static void assert_sparse_like(const char *src, const char *dst)
{
	size_t len = 0;
	uint8_t *b = file_read_all(src, &len);

	assert_non_null(b);
	for (size_t off = 0; off < len; off += CS) {
		size_t n = len - off < CS ? len - off : CS;
		bool zero = ds_is_zero(b + off, n);
		if (zero != path_range_is_hole(dst, off, n))
			fail_msg("%s: chunk at %zu is %s in the source but %s in the copy", dst,
				 off, zero ? "zero" : "data", zero ? "data" : "a hole");
	}
	free(b);
}

static const struct layout layouts[] = {
	{.name = "empty", .size = 0},
	{.name = "one-byte", .size = 1, .ext = {{0, 1, GEN_RANDOM}}},
	{.name = "one-chunk", .size = CS, .ext = {{0, CS, GEN_TEXT}}},
	{.name = "chunk-plus-one", .size = CS + 1, .ext = {{0, 100, GEN_RANDOM}, {CS, 1, GEN_RANDOM}}},
	{.name = "holes-at-boundaries",
	 .size = 8 * CS,
	 .ext = {{0, CS, GEN_RANDOM}, {2 * CS, CS, GEN_TEXT}, {5 * CS, 2 * CS, GEN_SPARSE}}},
	{.name = "holes-inside-chunks",
	 .size = 6 * CS + 500,
	 .ext = {{100, 4000, GEN_RANDOM},
		 {CS + 8192, CS, GEN_TEXT},
		 {4 * CS + 4096, 4096, GEN_SPARSE},
		 {6 * CS + 499, 1, GEN_RANDOM}}},
	{.name = "data-at-the-end", .size = 10 * CS + 777, .ext = {{10 * CS + 776, 1, GEN_RANDOM}}},
	{.name = "hole-at-the-end", .size = 10 * CS + 777, .ext = {{0, 3 * CS, GEN_RANDOM}}},
	{.name = "written-zeros",
	 .size = 4 * CS,
	 .ext = {{0, 2 * CS, GEN_ZERO}, {3 * CS, CS, GEN_RANDOM}, {2 * CS + 10, 1, GEN_ZERO}}},
	{.name = "all-holes", .size = 5 * MiB + 3},
	{.name = "slabs",
	 .size = 9 * MiB + 123,
	 .ext = {{0, MiB, GEN_TEXT},
		 {3 * MiB + MiB / 2, 2 * MiB, GEN_RANDOM},
		 {5 * MiB + MiB / 2, MiB / 2 + 3, GEN_SPARSE},
		 {8 * MiB + 5, MiB + 118, GEN_SPARSE}}},
	{.name = "fragmented", .size = 8 * MiB + 3 * KiB, .alternate = true},
};

static void round_trip(struct fx *f, const struct layout *l)
{
	char src[PATH_MAX], dst[PATH_MAX];
	struct prog pb = {0}, pr = {0};
	ds_chunk_id root;

	path_cat(src, sizeof(src), f->tmp, "src.img");
	path_cat(dst, sizeof(dst), f->tmp, "dst.img");
	make_image(src, l);
	assert_int_equal(backup_path(f, src, l->size, &root, &pb), 0);
	unlink(dst);
	assert_int_equal(restore_path(f, &root, dst, &pr), 0);
	assert_files_equal(src, dst);
	assert_sparse_like(src, dst);
	if (l->size) {
		/* Progress reaches the total, which is the disk size. */
		assert_int_equal(pb.max_done, l->size);
		assert_int_equal(pb.total, l->size);
		assert_false(pb.total_changed);
		assert_int_equal(pr.max_done, l->size);
		assert_int_equal(pr.total, l->size);
	}
	unlink(src);
	unlink(dst);
}

static void test_round_trips(void **state)
{
	struct fx *f = *state;

	if (!fs_keeps_holes(f->tmp))
		skip();
	for (size_t i = 0; i < ARRAY_SIZE(layouts); i++) {
		test_log.count = 0;
		round_trip(f, &layouts[i]);
	}
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);
}

/* One worker or several, the manifest is the same. */
static void test_workers(void **state)
{
	struct fx *f = *state;
	const struct layout *l = &layouts[ARRAY_SIZE(layouts) - 2];
	struct ds_manifest *ref = NULL;
	char src[PATH_MAX];
	unsigned workers[] = {1, 2, 3, 16, 0};

	path_cat(src, sizeof(src), f->tmp, "src.img");
	make_image(src, l);
	for (size_t i = 0; i < ARRAY_SIZE(workers); i++) {
		struct copier_job j = {.s = f->s, .seek_holes = true, .workers = workers[i]};

		j.fd = open(src, O_RDONLY | O_CLOEXEC);
		assert_true(j.fd >= 0);
		j.m = ds_manifest_new(CS, l->size);
		assert_non_null(j.m);
		assert_int_equal(copier_backup(&j), 0);
		close(j.fd);
		assert_int_equal(atomic_load(&j.bytes_done), l->size);
		if (!ref) {
			ref = j.m;
			continue;
		}
		assert_bytes_equal(ref->ids, j.m->ids, ref->count * DS_CHUNK_ID_SIZE);
		ds_manifest_free(j.m);
	}
	ds_manifest_free(ref);
}

/* ---- restore targets ------------------------------------------------------------ */

static void test_restore_into_nonempty_file(void **state)
{
	struct fx *f = *state;
	char src[PATH_MAX], dst[PATH_MAX];
	ds_chunk_id root;

	path_cat(src, sizeof(src), f->tmp, "src.img");
	path_cat(dst, sizeof(dst), f->tmp, "dst.img");
	make_image(src, &layouts[4]);
	assert_int_equal(backup_path(f, src, layouts[4].size, &root, NULL), 0);
	assert_int_equal(write_at(dst, 0, "keep", 4), 0);
	assert_int_equal(restore_path(f, &root, dst, NULL), -EEXIST);
	assert_int_equal(file_size(dst), 4);
	{
		size_t len;
		uint8_t *b = file_read_all(dst, &len);
		assert_non_null(b);
		assert_memory_equal(b, "keep", 4);
		free(b);
	}
}

static void test_restore_into_pipe(void **state)
{
	struct fx *f = *state;
	char src[PATH_MAX];
	ds_chunk_id root;
	int p[2];

	path_cat(src, sizeof(src), f->tmp, "src.img");
	make_image(src, &layouts[2]);
	assert_int_equal(backup_path(f, src, layouts[2].size, &root, NULL), 0);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(ds_image_restore(f->s, &root, p[1], NULL, NULL), -EINVAL);
	close(p[0]);
	close(p[1]);
}

/* A device smaller than the image is refused; one big enough gets every
 * byte, zeros written over what it held. */
static void test_restore_into_device(void **state)
{
	struct fx *f = *state;
	char src[PATH_MAX], small[PATH_MAX], big[PATH_MAX], dev[32], dev2[32];
	const struct layout *l = &layouts[5]; /* 6 chunks + 500 bytes */
	uint8_t *junk = malloc(MiB), *b;
	ds_chunk_id root;
	size_t len;
	int fd;

	assert_non_null(junk);
	if (!loop_available()) {
		free(junk);
		skip();
	}
	path_cat(src, sizeof(src), f->tmp, "src.img");
	path_cat(small, sizeof(small), f->tmp, "small.img");
	path_cat(big, sizeof(big), f->tmp, "big.img");
	make_image(src, l);
	assert_int_equal(backup_path(f, src, l->size, &root, NULL), 0);

	assert_int_equal(file_truncate(small, 64 * KiB), 0);
	assert_int_equal(loop_attach(&f->devs, small, NULL, dev, sizeof(dev)), 0);
	fd = open(dev, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ds_image_restore(f->s, &root, fd, NULL, NULL), -ENOSPC);
	close(fd);

	fill_random(junk, MiB, 99);
	assert_int_equal(write_at(big, 0, junk, MiB), 0);
	assert_int_equal(loop_attach(&f->devs, big, NULL, dev2, sizeof(dev2)), 0);
	fd = open(dev2, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ds_image_restore(f->s, &root, fd, NULL, NULL), 0);
	close(fd);
	loop_detach(&f->devs, dev2);
	/* The image's bytes, then what the device held past its end. */
	b = file_read_all(big, &len);
	assert_non_null(b);
	assert_int_equal(len, MiB);
	{
		size_t slen = 0;
		uint8_t *s = file_read_all(src, &slen);
		assert_non_null(s);
		assert_bytes_equal(b, s, slen);
		assert_bytes_equal(b + slen, junk + slen, MiB - slen);
		free(s);
	}
	free(b);
	free(junk);
}

/* A chunk the manifest names but the store lacks fails the restore. */
static void test_restore_missing_chunk(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *m = ds_manifest_new(CS, 3 * (uint64_t)CS);
	char dst[PATH_MAX];
	ds_chunk_id root;

	assert_non_null(m);
	memset(&m->ids[1], 0x42, sizeof(m->ids[1]));
	assert_int_equal(ds_manifest_save(f->s, m, &root), 0);
	path_cat(dst, sizeof(dst), f->tmp, "dst.img");
	assert_int_equal(restore_path(f, &root, dst, NULL), -ENOENT);
	/* A chunk shorter than its place in the image (not the last one). */
	{
		struct ds_chunk c = {.data = "short", .len = 5};
		assert_int_equal(ds_store_put(f->s, &c, 1), 0);
		m->ids[1] = c.id;
	}
	assert_int_equal(ds_manifest_save(f->s, m, &root), 0);
	unlink(dst);
	assert_int_equal(restore_path(f, &root, dst, NULL), -EBADMSG);
	ds_manifest_free(m);
	/* A root that is no manifest. */
	unlink(dst);
	memset(&root, 0x43, sizeof(root));
	assert_int_equal(restore_path(f, &root, dst, NULL), -ENOENT);
}

/* ---- errors during a backup --------------------------------------------------- */

/* Reads of /proc/self/mem at unmapped addresses fail with EIO. */
static void test_backup_read_error(void **state)
{
	struct fx *f = *state;
	struct copier_job j = {.s = f->s};
	struct ds_store_stats st;
	char buf[8];

	j.fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	if (j.fd < 0 || pread(j.fd, buf, sizeof(buf), 0) >= 0 || errno != EIO) {
		if (j.fd >= 0)
			close(j.fd);
		skip();
	}
	/* 64 KiB from address 0: below mmap_min_addr, never mapped. */
	j.m = ds_manifest_new(CS, 4 * (uint64_t)CS);
	assert_non_null(j.m);
	assert_int_equal(copier_backup(&j), -EIO);
	close(j.fd);
	ds_manifest_free(j.m);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);
	assert_int_equal(ds_store_stats(f->s, &st), 0);
	assert_int_equal(st.chunks, 0);
}

static int backup_job(struct fx *f, const char *path, uint64_t size, bool seek_holes,
		      struct copier_job *j)
{
	int r;

	j->s = f->s;
	j->seek_holes = seek_holes;
	j->fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(j->fd >= 0);
	j->m = ds_manifest_new(CS, size);
	assert_non_null(j->m);
	r = copier_backup(j);
	close(j->fd);
	return r;
}

static void test_cancel_before(void **state)
{
	struct fx *f = *state;
	const struct layout *l = &layouts[ARRAY_SIZE(layouts) - 2];
	struct copier_job j = {0};
	atomic_bool cancel = true;
	struct prog p = {0};
	char src[PATH_MAX], dst[PATH_MAX];
	ds_chunk_id root;
	int fd;

	path_cat(src, sizeof(src), f->tmp, "src.img");
	path_cat(dst, sizeof(dst), f->tmp, "dst.img");
	make_image(src, l);
	j.cancel = &cancel;
	j.progress = on_progress;
	j.opaque = &p;
	assert_int_equal(backup_job(f, src, l->size, true, &j), -ECANCELED);
	assert_int_equal(p.calls, 0);
	assert_int_equal(atomic_load(&j.bytes_read), 0);
	ds_manifest_free(j.m);

	/* A restore too. */
	assert_int_equal(backup_path(f, src, l->size, &root, NULL), 0);
	memset(&j, 0, sizeof(j));
	j.s = f->s;
	j.cancel = &cancel;
	j.zeros = ZERO_SKIP;
	assert_int_equal(ds_manifest_load(f->s, &root, &j.m), 0);
	fd = open(dst, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)l->size), 0);
	j.fd = fd;
	assert_int_equal(copier_restore(&j), -ECANCELED);
	close(fd);
	ds_manifest_free(j.m);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);
}

/* Cancelled after the first slab: the copy stops before the end. */
static void test_cancel_during(void **state)
{
	struct fx *f = *state;
	struct layout l = {.size = 40 * MiB, .ext = {{0, MiB, GEN_RANDOM}}};
	struct copier_job j = {0};
	atomic_bool cancel = false;
	struct prog p = {0};
	char src[PATH_MAX];

	path_cat(src, sizeof(src), f->tmp, "src.img");
	make_image(src, &l);
	p.cancel_at_first = &cancel;
	j.cancel = &cancel;
	j.progress = on_progress;
	j.opaque = &p;
	j.workers = 1;
	assert_int_equal(backup_job(f, src, l.size, true, &j), -ECANCELED);
	/* The slab already in flight may still be finished. */
	assert_true(p.calls >= 1 && p.calls <= 2);
	assert_true(atomic_load(&j.bytes_done) <= 2 * 4 * MiB);
	ds_manifest_free(j.m);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);
}

struct valid {
	atomic_int calls;
	int ok_calls; /* return true this many times */
};

static bool still_valid(void *opaque)
{
	struct valid *v = opaque;

	return atomic_fetch_add(&v->calls, 1) < v->ok_calls;
}

static void test_still_valid(void **state)
{
	struct fx *f = *state;
	struct layout l = {.size = 20 * MiB, .ext = {{0, MiB, GEN_TEXT}, {9 * MiB, MiB, GEN_RANDOM}}};
	char src[PATH_MAX];

	path_cat(src, sizeof(src), f->tmp, "src.img");
	make_image(src, &l);
	for (int ok = 0; ok <= 2; ok++) {
		struct copier_job j = {0};
		struct valid v = {.ok_calls = ok};

		j.still_valid = still_valid;
		j.opaque = &v;
		j.workers = 1;
		assert_int_equal(backup_job(f, src, l.size, true, &j), -ESTALE);
		assert_int_equal(atomic_load(&v.calls), ok + 1);
		ds_manifest_free(j.m);
	}
	/* Valid throughout: asked once per slab (5 slabs of 4 MiB). */
	{
		struct copier_job j = {0};
		struct valid v = {.ok_calls = 1000};

		j.still_valid = still_valid;
		j.opaque = &v;
		assert_int_equal(backup_job(f, src, l.size, true, &j), 0);
		assert_int_equal(atomic_load(&v.calls), 5);
		ds_manifest_free(j.m);
	}
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);
}

/* A source shorter than the size asked for shrank under the copy: -EIO,
 * never an image padded with zeros. */
static void test_shrunk_source(void **state)
{
	struct fx *f = *state;
	struct layout cut = {.size = 3 * CS + 10, .ext = {{0, 3 * CS + 10, GEN_RANDOM}}};
	struct layout whole = {.size = 3 * CS, .ext = {{0, 3 * CS, GEN_RANDOM}}};
	char a[PATH_MAX], b[PATH_MAX];
	ds_chunk_id root;

	path_cat(a, sizeof(a), f->tmp, "cut.img");
	path_cat(b, sizeof(b), f->tmp, "whole.img");
	make_image(a, &cut);
	make_image(b, &whole);
	for (int seek = 0; seek <= 1; seek++) {
		struct copier_job j = {0};
		int r;

		/* The last chunk straddles the end of the file. */
		assert_int_equal(backup_job(f, a, 4 * CS, seek, &j), -EIO);
		ds_manifest_free(j.m);
		/* Whole chunks past the end of the file. */
		memset(&j, 0, sizeof(j));
		r = backup_job(f, b, 5 * CS, seek, &j);
		ds_manifest_free(j.m);
		if (r != -EIO)
			fail_msg("a file of 3 chunks copied as 5 (seek_holes %d) returned %d: the "
				 "missing tail was taken for a hole", seek, r);
	}
	assert_int_equal(backup_path(f, a, 4 * CS, &root, NULL), -EIO);
	assert_int_equal(backup_path(f, b, 5 * CS, &root, NULL), -EIO);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);
}

/* bytes_read counts what was read: holes are not, written zeros are. */
static void test_bytes_read(void **state)
{
	struct fx *f = *state;
	/* chunk 0 data, 1 hole, 2 written zeros, 3 hole, 4 half data (a hole
	 * in its second half), 5 hole, 6 data cut at 777 bytes */
	struct layout l = {.size = 6 * CS + 777,
			   .ext = {{0, CS, GEN_RANDOM},
				   {2 * CS, CS, GEN_ZERO},
				   {4 * CS, CS / 2, GEN_TEXT},
				   {6 * CS, 777, GEN_RANDOM}}};
	uint64_t want = CS + CS + CS + 777;
	struct copier_job j = {0};
	char src[PATH_MAX];

	path_cat(src, sizeof(src), f->tmp, "src.img");
	if (!fs_keeps_holes(f->tmp))
		skip();
	make_image(src, &l);
	assert_int_equal(backup_job(f, src, l.size, true, &j), 0);
	assert_int_equal(atomic_load(&j.bytes_read), want);
	assert_int_equal(atomic_load(&j.bytes_done), l.size);
	assert_true(atomic_load(&j.bytes_stored) > 0);
	for (int i = 1; i <= 5; i += 1)
		if (i != 4)
			assert_true(ds_chunk_id_is_zero(&j.m->ids[i]));
	assert_false(ds_chunk_id_is_zero(&j.m->ids[0]));
	assert_false(ds_chunk_id_is_zero(&j.m->ids[4]));
	assert_false(ds_chunk_id_is_zero(&j.m->ids[6]));
	ds_manifest_free(j.m);

	/* Again: the same reads, nothing new stored. */
	memset(&j, 0, sizeof(j));
	assert_int_equal(backup_job(f, src, l.size, true, &j), 0);
	assert_int_equal(atomic_load(&j.bytes_read), want);
	assert_int_equal(atomic_load(&j.bytes_stored), 0);
	ds_manifest_free(j.m);

	/* Without hole seeking (a device), every byte is read. */
	memset(&j, 0, sizeof(j));
	assert_int_equal(backup_job(f, src, l.size, false, &j), 0);
	assert_int_equal(atomic_load(&j.bytes_read), l.size);
	assert_int_equal(atomic_load(&j.bytes_stored), 0);
	ds_manifest_free(j.m);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_round_trips),
		T(test_workers),
		T(test_restore_into_nonempty_file),
		T(test_restore_into_pipe),
		T(test_restore_into_device),
		T(test_restore_missing_chunk),
		T(test_backup_read_error),
		T(test_cancel_before),
		T(test_cancel_during),
		T(test_still_valid),
		T(test_shrunk_source),
		T(test_bytes_read),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
