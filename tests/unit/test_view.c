/*
 * Instant access (engine/snapshot/view.c): a snapshot of a live disk read
 * while its copy runs and the disk is written.
 *
 * A 32 MiB base holds pattern A. A snapshot starts (cow_start) and the
 * copier reads it into a store at 8 MiB/s, counting chunks copied as the
 * engine does (read_done -> cow_copied). Meanwhile a writer thread writes
 * pattern B through the tracker at random, and reader threads read the
 * view at random: every byte they get must be A, whether it came from the
 * base (chunks not copied yet) or from the store (chunks copied, some
 * added since the store's last flush). After the copy ends the view reads
 * from the store alone, still A, while the merge puts B into the base.
 * Then: a failed copy gives -EIO, never data, and an export of the view is
 * the point in time.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>

#include <dsnap/snapshot.h>
#include <dsnap/store.h>

#include "copier/copier.h"
#include "util/util.h"
#include "cow/cow.h"
#include "snapshot/view.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
#define SIZE (32ull * MiB)
#define CHUNK (64 * KiB)

struct fx {
	char dir[PATH_MAX], base[PATH_MAX], overlay[PATH_MAX], store_dir[PATH_MAX];
	uint8_t *a, *b;
	struct cow *c;
	struct ds_store *s;
	struct disk_pit pit;
	struct view *v;
	atomic_bool stop;
	atomic_uint_fast64_t reads, bad, errors;
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
	path_cat(f->store_dir, sizeof(f->store_dir), f->dir, "store");
	f->pit.fd = -1;
	test_log_capture();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	view_unref(f->v);
	cow_close(f->c);
	if (f->pit.fd >= 0)
		close(f->pit.fd);
	ds_store_close(f->s);
	rm_rf(f->dir);
	free(f->a);
	free(f->b);
	free(f);
	return 0;
}

static uint8_t *xalloc(size_t len)
{
	void *p = NULL;

	assert_int_equal(posix_memalign(&p, 4096, len), 0);
	return p;
}

/* Base A, tracker, store, a snapshot started and its view. */
static struct ds_manifest *start(struct fx *f)
{
	struct ds_manifest *m;

	f->a = xalloc(SIZE);
	f->b = xalloc(SIZE);
	fill_random(f->a, SIZE, 0xA);
	fill_random(f->b, SIZE, 0xB);
	assert_int_equal(write_at(f->base, 0, f->a, SIZE), 0);
	assert_int_equal(cow_open(f->base, f->overlay, CHUNK, 1u << 20, &f->c, NULL), 0);
	assert_int_equal(ds_store_create(f->store_dir, NULL), 0);
	assert_int_equal(ds_store_open(f->store_dir, &f->s), 0);
	assert_int_equal(cow_start(f->c, NULL, NULL, NULL), 0);
	f->pit.fd = open(f->base, O_RDONLY | O_DIRECT | O_CLOEXEC);
	assert_true(f->pit.fd >= 0);
	f->pit.size = SIZE;
	m = ds_manifest_new(CHUNK, SIZE);
	assert_non_null(m);
	f->v = view_new(f->s, m, f->c, &f->pit);
	assert_non_null(f->v);
	return m;
}

static void copied(void *opaque, uint64_t first, uint64_t n)
{
	cow_copied(opaque, first, n);
}

static void *writer(void *arg)
{
	struct fx *f = arg;
	uint64_t x = 7;

	while (!atomic_load(&f->stop)) {
		uint64_t off = splitmix64(&x) % (SIZE / 4096) * 4096;
		uint64_t want = (1 + splitmix64(&x) % 16) * 4096;
		size_t len = (size_t)MIN(SIZE - off, want);
		while (!cow_enter(f->c))
			cow_wait_open(f->c);
		ssize_t n = cow_pwrite(f->c, f->b + off, len, off);
		if (n != (ssize_t)len && atomic_fetch_add(&f->errors, 1) == 0)
			fprintf(stderr, "cow_pwrite(%zu at %llu) = %zd\n", len, (unsigned long long)off, n);
		cow_leave(f->c);
		usleep(200);
	}
	return NULL;
}

static void *reader(void *arg)
{
	struct fx *f = arg;
	uint8_t *buf = xalloc(256 * KiB);
	uint64_t x = (uint64_t)(uintptr_t)&buf;

	while (!atomic_load(&f->stop)) {
		uint64_t off = splitmix64(&x) % SIZE;
		uint64_t want = 1 + splitmix64(&x) % (256 * KiB); /* MIN evaluates twice */
		size_t len = (size_t)MIN(SIZE - off, want);
		ssize_t n = view_read(f->v, buf, len, off);
		if (n != (ssize_t)len) {
			if (atomic_fetch_add(&f->errors, 1) == 0)
				fprintf(stderr, "view_read(%zu at %llu) = %zd\n", len,
					(unsigned long long)off, n);
		}
		else if (memcmp(buf, f->a + off, len) != 0)
			atomic_fetch_add(&f->bad, 1);
		atomic_fetch_add(&f->reads, 1);
	}
	free(buf);
	return NULL;
}

struct export_arg {
	struct fx *f;
	char path[PATH_MAX];
	atomic_int r;
	atomic_bool done;
};

static void *export_main(void *arg)
{
	struct export_arg *x = arg;
	int fd = open(x->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

	atomic_store(&x->r, fd < 0 ? -errno : view_export(x->f->v, fd));
	if (fd >= 0)
		close(fd);
	atomic_store(&x->done, true);
	return NULL;
}

struct copy_arg {
	struct copier_job *j;
	int r;
};

static void *copy_main(void *arg)
{
	struct copy_arg *c = arg;

	c->r = copier_backup(c->j);
	return NULL;
}

static void test_read_while_copied_and_written(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *m = start(f);
	struct copier_job j = {.s = f->s, .fd = f->pit.fd, .m = m, .workers = 2,
			       .read_done = copied, .opaque = f->c};
	struct copy_arg ca = {&j, 0};
	struct export_arg x = {.f = f};
	pthread_t w, r[3], cp, ex;
	uint64_t during, seed = 3;
	uint8_t *buf = xalloc(CHUNK);

	atomic_store(&j.max_rate, 8ull * MiB); /* about 4 s */
	assert_int_equal(pthread_create(&cp, NULL, copy_main, &ca), 0);
	assert_int_equal(pthread_create(&w, NULL, writer, f), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(pthread_create(&r[i], NULL, reader, f), 0);
	path_cat(x.path, sizeof(x.path), f->dir, "export.img");
	assert_int_equal(pthread_create(&ex, NULL, export_main, &x), 0);
	pthread_join(cp, NULL);
	during = atomic_load(&f->reads);
	/* The copy's end, as copy_run does it. */
	view_end(f->v, ca.r == 0);
	cow_copy_end(f->c, ca.r == 0, NULL, NULL);
	usleep(300 * 1000); /* reads from the store alone, the merge running */
	atomic_store(&f->stop, true);
	pthread_join(w, NULL);
	for (int i = 0; i < 3; i++)
		pthread_join(r[i], NULL);
	cow_wait_merged(f->c, 0);
	pthread_join(ex, NULL);

	assert_int_equal(ca.r, 0);
	assert_int_equal(atomic_load(&x.r), 0);
	{
		size_t len = 0;
		uint8_t *got = file_read_all(x.path, &len);
		assert_int_equal(len, SIZE);
		assert_memory_equal(got, f->a, SIZE);
		free(got);
	}
	assert_int_equal(atomic_load(&f->errors), 0);
	assert_int_equal(atomic_load(&f->bad), 0);
	assert_true(during > 100);
	assert_true(atomic_load(&f->reads) > during);
	/* The disk moved on (the base differs from A), the snapshot did not. */
	{
		size_t len = 0;
		uint8_t *now = file_read_all(f->base, &len);
		assert_int_equal(len, SIZE);
		assert_true(memcmp(now, f->a, SIZE) != 0);
		free(now);
	}
	for (int i = 0; i < 64; i++) {
		uint64_t k = splitmix64(&seed) % (SIZE / CHUNK);
		assert_int_equal(view_read(f->v, buf, CHUNK, k * CHUNK), CHUNK);
		assert_memory_equal(buf, f->a + k * CHUNK, CHUNK);
	}
	free(buf);
}

/* A failed copy: reads fail (never zeros for chunks it did not store). */
static void test_failed_copy_reads_fail(void **state)
{
	struct fx *f = *state;
	uint8_t *buf = xalloc(CHUNK);

	start(f);
	assert_int_equal(view_read(f->v, buf, CHUNK, 0), CHUNK); /* from the base */
	assert_memory_equal(buf, f->a, CHUNK);
	view_end(f->v, false);
	cow_copy_end(f->c, false, NULL, NULL);
	assert_int_equal(view_read(f->v, buf, CHUNK, 0), -EIO);
	assert_int_equal(view_read(f->v, buf, 100, SIZE - 100), -EIO);
	view_close(f->v);
	assert_int_equal(view_read(f->v, buf, CHUNK, 0), -EIO);
	free(buf);
}

/* An export during an incremental copy reads the point in time (here all
 * from the base, overwritten through the tracker first) but ends with the
 * copy: it fails when the copy fails. */
static void test_export_ends_with_the_copy(void **state)
{
	struct fx *f = *state;
	struct export_arg x = {.f = f};
	pthread_t t;

	start(f);
	view_set_incremental(f->v);
	while (!cow_enter(f->c))
		cow_wait_open(f->c);
	assert_int_equal(cow_pwrite(f->c, f->b, SIZE, 0), (ssize_t)SIZE);
	cow_leave(f->c);
	path_cat(x.path, sizeof(x.path), f->dir, "export.img");
	assert_int_equal(pthread_create(&t, NULL, export_main, &x), 0);
	usleep(500 * 1000);
	assert_false(atomic_load(&x.done)); /* read, waiting for the copy's end */
	{
		size_t len = 0;
		uint8_t *got = file_read_all(x.path, &len);
		assert_int_equal(len, SIZE);
		assert_memory_equal(got, f->a, SIZE);
		free(got);
	}
	view_end(f->v, false);
	pthread_join(t, NULL);
	assert_int_equal(atomic_load(&x.r), -EIO);
	cow_copy_end(f->c, false, NULL, NULL);
	cow_wait_merged(f->c, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_read_while_copied_and_written, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_copy_reads_fail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_export_ends_with_the_copy, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
