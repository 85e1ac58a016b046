/*
 * 1 GiB round trip through the chunk store, bit-exact.
 *
 * 16384 chunks of 64 KiB are put in batches of 64: runs of random, zero,
 * text-like and sparse chunks, and chunks that repeat an earlier one. The
 * bytes are never kept: each chunk is made again from its seed when read
 * back after a reopen. Two threads put and two read, as a copier would.
 *
 * Skipped (77) when DSNAP_SANITIZED=1: the sanitizer build runs the same
 * code paths in test_store at a size it can afford. DSNAP_BIG_MIB=n runs a
 * smaller or larger amount.
 */
#include "testutil.h"

#include <limits.h>
#include <pthread.h>
#include <time.h>

#include <dsnap/store.h>

#define CHUNK (64u * 1024)
#define BATCH 64
#define THREADS 2

struct plan {
	uint64_t seed;
	uint32_t len;
	uint8_t kind;
};

struct big {
	char tmp[PATH_MAX];
	char dir[PATH_MAX];
	struct ds_store *s;
	size_t n;          /* chunks */
	struct plan *plan; /* what chunk i holds */
	ds_chunk_id *ids;
	size_t next;       /* next batch to take, under lock */
	pthread_mutex_t lock;
	int err;
	uint64_t mismatches;
	uint64_t stored;
};

static int setup(void **state)
{
	struct big *g = calloc(1, sizeof(*g));

	if (!g || tmpdir_make(g->tmp, sizeof(g->tmp)) < 0) {
		free(g);
		return -1;
	}
	path_cat(g->dir, sizeof(g->dir), g->tmp, "store");
	pthread_mutex_init(&g->lock, NULL);
	test_log_capture();
	*state = g;
	return 0;
}

static int teardown(void **state)
{
	struct big *g = *state;

	ds_store_close(g->s);
	rm_rf(g->tmp);
	free(g->plan);
	free(g->ids);
	pthread_mutex_destroy(&g->lock);
	free(g);
	return 0;
}

/* Runs of 1..32 chunks of one kind; one chunk in 16 repeats an earlier
 * one; the disk ends in a short chunk. */
static void make_plan(struct big *g, size_t n)
{
	/* 40% random, 20% zero, 20% text, 20% sparse */
	static const uint8_t kinds[10] = {
		GEN_RANDOM, GEN_RANDOM, GEN_RANDOM, GEN_RANDOM, GEN_ZERO,
		GEN_ZERO,   GEN_TEXT,   GEN_TEXT,   GEN_SPARSE, GEN_SPARSE,
	};
	uint64_t x = 20240601;
	size_t i = 0;

	g->n = n + 1;
	g->plan = calloc(g->n, sizeof(*g->plan));
	g->ids = calloc(g->n, sizeof(*g->ids));
	assert_non_null(g->plan);
	assert_non_null(g->ids);
	while (i < n) {
		uint64_t r = splitmix64(&x);
		size_t run = 1 + (r & 31);
		uint8_t kind = kinds[(r >> 8) % 10];

		for (size_t j = 0; j < run && i < n; j++, i++) {
			uint64_t d = splitmix64(&x);
			if (i > 0 && d % 16 == 0) {
				g->plan[i] = g->plan[d / 16 % i];
				g->plan[i].len = CHUNK;
			} else {
				g->plan[i] = (struct plan){.seed = d, .len = CHUNK, .kind = kind};
			}
		}
	}
	g->plan[n] = (struct plan){.seed = 7, .len = 12345, .kind = GEN_TEXT};
}

/* Takes the next batch; false when none is left. */
static bool take_batch(struct big *g, size_t *first, size_t *count)
{
	bool ok;

	pthread_mutex_lock(&g->lock);
	ok = g->next < g->n && !g->err;
	if (ok) {
		*first = g->next;
		*count = g->n - g->next < BATCH ? g->n - g->next : BATCH;
		g->next += *count;
	}
	pthread_mutex_unlock(&g->lock);
	return ok;
}

static void set_err(struct big *g, int err)
{
	pthread_mutex_lock(&g->lock);
	if (!g->err)
		g->err = err;
	pthread_mutex_unlock(&g->lock);
}

static void *putter(void *arg)
{
	struct big *g = arg;
	uint8_t *buf = malloc((size_t)BATCH * CHUNK);
	struct ds_chunk c[BATCH];
	size_t first, count;
	uint64_t stored = 0;

	if (!buf) {
		set_err(g, -ENOMEM);
		return NULL;
	}
	while (take_batch(g, &first, &count)) {
		memset(c, 0, sizeof(c));
		for (size_t j = 0; j < count; j++) {
			const struct plan *p = &g->plan[first + j];
			c[j].data = buf + j * CHUNK;
			c[j].len = p->len;
			gen_fill(c[j].data, p->len, p->seed, p->kind);
		}
		int r = ds_store_put(g->s, c, count);
		if (r < 0) {
			set_err(g, r);
			break;
		}
		for (size_t j = 0; j < count; j++) {
			g->ids[first + j] = c[j].id;
			stored += c[j].stored;
		}
	}
	pthread_mutex_lock(&g->lock);
	g->stored += stored;
	pthread_mutex_unlock(&g->lock);
	free(buf);
	return NULL;
}

static void *getter(void *arg)
{
	struct big *g = arg;
	uint8_t *buf = malloc((size_t)BATCH * CHUNK), *want = malloc(CHUNK);
	struct ds_chunk c[BATCH];
	size_t first, count;
	uint64_t bad = 0;

	if (!buf || !want) {
		set_err(g, -ENOMEM);
		free(buf);
		free(want);
		return NULL;
	}
	while (take_batch(g, &first, &count)) {
		memset(c, 0, sizeof(c));
		for (size_t j = 0; j < count; j++) {
			c[j].id = g->ids[first + j];
			c[j].data = buf + j * CHUNK;
		}
		int r = ds_store_get(g->s, c, count);
		if (r < 0) {
			set_err(g, r);
			break;
		}
		for (size_t j = 0; j < count; j++) {
			const struct plan *p = &g->plan[first + j];
			if (p->kind == GEN_ZERO) {
				bad += c[j].len != CHUNK || !ds_is_zero(c[j].data, CHUNK);
				continue;
			}
			gen_fill(want, p->len, p->seed, p->kind);
			bad += c[j].len != p->len || memcmp(c[j].data, want, p->len) != 0;
		}
	}
	pthread_mutex_lock(&g->lock);
	g->mismatches += bad;
	pthread_mutex_unlock(&g->lock);
	free(buf);
	free(want);
	return NULL;
}

static void run_threads(struct big *g, void *(*fn)(void *))
{
	pthread_t th[THREADS];

	g->next = 0;
	for (int t = 0; t < THREADS; t++)
		assert_int_equal(pthread_create(&th[t], NULL, fn, g), 0);
	for (int t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_id(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(ds_chunk_id));
}

static void test_round_trip_1gib(void **state)
{
	struct big *g = *state;
	struct ds_store_options o = {.chunk_size = CHUNK};
	const char *env = getenv("DSNAP_BIG_MIB");
	size_t mib = env ? strtoul(env, NULL, 10) : 1024;
	struct ds_store_stats st;
	uint64_t raw = 0, distinct = 0;
	ds_chunk_id *sorted;
	double t0, t1, t2;

	assert_true(mib > 0);
	make_plan(g, mib * 1024 * 1024 / CHUNK);
	assert_int_equal(ds_store_create(g->dir, &o), 0);
	assert_int_equal(ds_store_open(g->dir, &g->s), 0);

	t0 = now();
	run_threads(g, putter);
	assert_int_equal(g->err, 0);
	t1 = now();

	/* Expected contents of the index: distinct non-zero chunks. */
	sorted = malloc(g->n * sizeof(*sorted));
	assert_non_null(sorted);
	memcpy(sorted, g->ids, g->n * sizeof(*sorted));
	qsort(sorted, g->n, sizeof(*sorted), cmp_id);
	for (size_t i = 0; i < g->n; i++) {
		if (ds_chunk_id_is_zero(&sorted[i]) ||
		    (i > 0 && memcmp(&sorted[i], &sorted[i - 1], sizeof(sorted[i])) == 0))
			continue;
		distinct++;
	}
	free(sorted);
	for (size_t i = 0; i < g->n; i++)
		if (g->plan[i].kind != GEN_ZERO)
			raw += g->plan[i].len;
	assert_int_equal(ds_store_stats(g->s, &st), 0);
	assert_int_equal(st.chunks, distinct);
	assert_int_equal(g->stored, distinct);
	assert_true(st.raw_bytes <= raw);
	assert_true(st.stored_bytes < st.raw_bytes);

	/* Read everything back from a reopened store. */
	ds_store_close(g->s);
	g->s = NULL;
	assert_int_equal(ds_store_open(g->dir, &g->s), 0);
	t2 = now();
	run_threads(g, getter);
	assert_int_equal(g->err, 0);
	assert_int_equal(g->mismatches, 0);
	print_message("%zu MiB in %zu chunks (%llu stored, %llu MiB in packs): "
		      "put %.1f s, get %.1f s\n",
		      mib, g->n, (unsigned long long)distinct,
		      (unsigned long long)(st.pack_bytes >> 20), t1 - t0, now() - t2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip_1gib, setup, teardown),
	};
	const char *san = getenv("DSNAP_SANITIZED");

	if (san && strcmp(san, "1") == 0) {
		printf("skipped: the 1 GiB round trip does not run under the sanitizers\n");
		return TEST_SKIP;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
