/*
 * Tests of the chunk store (engine/store): create/open, round trips at every
 * chunk size, zero chunks, dedup, damage detection, recovery at open,
 * locking, threads, pack rotation and garbage collection.
 *
 * Each test gets a fresh folder under /tmp (setup) that teardown removes,
 * also when an assertion fails.
 */
#include "testutil.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <sqlite3.h>

#include <dsnap/store.h>

#include "store/pack.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

struct fx {
	char tmp[PATH_MAX];
	char dir[PATH_MAX]; /* tmp/store */
	struct ds_store *s;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f || tmpdir_make(f->tmp, sizeof(f->tmp)) < 0) {
		free(f);
		return -1;
	}
	path_cat(f->dir, sizeof(f->dir), f->tmp, "store");
	test_log_capture();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	ds_store_close(f->s);
	rm_rf(f->tmp);
	free(f);
	return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

/* What a chunk holds, so it can be made again instead of kept. */
struct spec {
	uint64_t seed;
	uint32_t len;
	enum gen_kind kind;
};

static struct ds_store *store_new(struct fx *f, uint32_t chunk_size, uint64_t pack_size)
{
	struct ds_store_options o = {.chunk_size = chunk_size, .pack_size = pack_size};

	assert_int_equal(ds_store_create(f->dir, &o), 0);
	assert_int_equal(ds_store_open(f->dir, &f->s), 0);
	return f->s;
}

static struct ds_store *store_reopen(struct fx *f)
{
	ds_store_close(f->s);
	f->s = NULL;
	assert_int_equal(ds_store_open(f->dir, &f->s), 0);
	return f->s;
}

static void store_shut(struct fx *f)
{
	ds_store_close(f->s);
	f->s = NULL;
}

static void pack_path(const struct fx *f, uint32_t id, char *out, size_t size)
{
	char name[PACK_NAME_MAX], rel[64];

	pack_name(id, name);
	snprintf(rel, sizeof(rel), "packs/%s", name);
	path_cat(out, size, f->dir, rel);
}

static struct ds_store_stats get_stats(struct ds_store *s)
{
	struct ds_store_stats st;

	assert_int_equal(ds_store_stats(s, &st), 0);
	return st;
}

static void assert_stats_equal(const struct ds_store_stats *a, const struct ds_store_stats *b)
{
	assert_int_equal(a->chunks, b->chunks);
	assert_int_equal(a->raw_bytes, b->raw_bytes);
	assert_int_equal(a->stored_bytes, b->stored_bytes);
	assert_int_equal(a->packs, b->packs);
	assert_int_equal(a->pack_bytes, b->pack_bytes);
}

static int put_specs(struct ds_store *s, const struct spec *sp, size_t n, ds_chunk_id *ids,
		     bool *stored)
{
	struct ds_chunk *c = calloc(n, sizeof(*c));
	int r;

	assert_non_null(c);
	for (size_t i = 0; i < n; i++) {
		c[i].data = malloc(sp[i].len ? sp[i].len : 1);
		assert_non_null(c[i].data);
		gen_fill(c[i].data, sp[i].len, sp[i].seed, sp[i].kind);
		c[i].len = sp[i].len;
		c[i].err = 12345;
	}
	r = ds_store_put(s, c, n);
	for (size_t i = 0; i < n; i++) {
		if (ids)
			ids[i] = c[i].id;
		if (stored)
			stored[i] = c[i].stored;
		free(c[i].data);
	}
	free(c);
	return r;
}

/* Reads every chunk back (in one batch) and compares with its spec. */
static void expect_chunks(struct ds_store *s, const struct spec *sp, const ds_chunk_id *ids,
			  size_t n)
{
	uint32_t cs = ds_store_chunk_size(s);
	struct ds_chunk *c = calloc(n ? n : 1, sizeof(*c));
	uint8_t *want = malloc(cs);

	assert_non_null(c);
	assert_non_null(want);
	for (size_t i = 0; i < n; i++) {
		c[i].id = ids[i];
		c[i].data = malloc(cs);
		assert_non_null(c[i].data);
		memset(c[i].data, 0xa5, cs);
		c[i].err = 12345;
	}
	assert_int_equal(ds_store_get(s, c, n), 0);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(c[i].err, 0);
		if (sp[i].kind == GEN_ZERO) {
			assert_true(ds_chunk_id_is_zero(&ids[i]));
			assert_int_equal(c[i].len, cs);
			assert_true(ds_is_zero(c[i].data, cs));
		} else {
			assert_int_equal(c[i].len, sp[i].len);
			gen_fill(want, sp[i].len, sp[i].seed, sp[i].kind);
			assert_bytes_equal(c[i].data, want, sp[i].len);
		}
		free(c[i].data);
	}
	free(c);
	free(want);
}

/* Gets one chunk; returns ds_store_get()'s result, *err the chunk's. */
static int get_one(struct ds_store *s, const ds_chunk_id *id, int *err, uint32_t *len)
{
	struct ds_chunk c = {.id = *id};
	int r;

	c.data = malloc(ds_store_chunk_size(s));
	assert_non_null(c.data);
	c.err = 12345;
	r = ds_store_get(s, &c, 1);
	free(c.data);
	if (err)
		*err = c.err;
	if (len)
		*len = c.len;
	return r;
}

static bool has_one(struct ds_store *s, const ds_chunk_id *id)
{
	bool present = false;

	assert_int_equal(ds_store_has(s, id, 1, &present), 0);
	return present;
}

struct bad_list {
	ds_chunk_id ids[64];
	int errs[64];
	size_t n;
};

static void bad_collect(const ds_chunk_id *id, int err, void *opaque)
{
	struct bad_list *b = opaque;

	if (b->n < 64) {
		b->ids[b->n] = *id;
		b->errs[b->n] = err;
	}
	b->n++;
}

/* Index in bad of id, or -1. */
static int bad_find(const struct bad_list *b, const ds_chunk_id *id)
{
	for (size_t i = 0; i < b->n && i < 64; i++)
		if (memcmp(&b->ids[i], id, sizeof(*id)) == 0)
			return (int)i;
	return -1;
}

static void assert_verify_clean(struct ds_store *s)
{
	struct bad_list bad = {0};

	assert_int_equal(ds_store_verify(s, bad_collect, &bad), 0);
	assert_int_equal(bad.n, 0);
}

static int count_pack_files(const struct fx *f, uint64_t *total_bytes)
{
	char packs[PATH_MAX], p[PATH_MAX + 300];
	struct dirent *de;
	DIR *d;
	int n = 0;
	uint32_t id;

	path_cat(packs, sizeof(packs), f->dir, "packs");
	d = opendir(packs);
	assert_non_null(d);
	if (total_bytes)
		*total_bytes = 0;
	while ((de = readdir(d))) {
		if (pack_name_parse(de->d_name, &id) < 0)
			continue;
		n++;
		snprintf(p, sizeof(p), "%s/%s", packs, de->d_name);
		if (total_bytes)
			*total_bytes += (uint64_t)file_size(p);
	}
	closedir(d);
	return n;
}

static void flip_byte(const char *path, uint64_t off)
{
	int fd = open(path, O_RDWR);
	uint8_t b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
	b ^= 0x5a;
	assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

static void append_bytes(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_APPEND);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static void write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

/* Random chunks of exactly len bytes: stored raw, so their record is
 * REC_HEADER_SIZE + len bytes and pack offsets can be worked out. */
static void random_specs(struct spec *sp, size_t n, uint64_t seed0, uint32_t len)
{
	for (size_t i = 0; i < n; i++)
		sp[i] = (struct spec){.seed = seed0 + i, .len = len, .kind = GEN_RANDOM};
}

/* Puts sp[0..n) in batches of batch; all must be stored. */
static void put_all(struct ds_store *s, const struct spec *sp, size_t n, size_t batch,
		    ds_chunk_id *ids)
{
	for (size_t i = 0; i < n; i += batch) {
		size_t k = n - i < batch ? n - i : batch;
		assert_int_equal(put_specs(s, sp + i, k, ids + i, NULL), 0);
	}
}

static int sql_exec(const char *dbpath, const char *sql)
{
	sqlite3 *db;
	int rc = sqlite3_open(dbpath, &db);

	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	sqlite3_close(db);
	return rc;
}

/* ---- create / open -------------------------------------------------------------- */

static void test_create_open_close(void **state)
{
	struct fx *f = *state;
	struct ds_store_stats st;
	char p[PATH_MAX];

	assert_int_equal(ds_store_create(f->dir, NULL), 0);
	path_cat(p, sizeof(p), f->dir, "store.db");
	assert_true(file_exists(p));
	path_cat(p, sizeof(p), f->dir, "packs");
	assert_true(file_exists(p));
	path_cat(p, sizeof(p), f->dir, "store.db.new");
	assert_false(file_exists(p));

	assert_int_equal(ds_store_open(f->dir, &f->s), 0);
	assert_non_null(f->s);
	assert_int_equal(ds_store_chunk_size(f->s), DS_CHUNK_SIZE_DEFAULT);
	st = get_stats(f->s);
	assert_int_equal(st.chunks, 0);
	assert_int_equal(st.raw_bytes, 0);
	assert_int_equal(st.stored_bytes, 0);
	assert_int_equal(st.pack_bytes, 0);
	assert_verify_clean(f->s);
	store_shut(f);
	ds_store_close(NULL);

	/* Open and close again; the store is still the same. */
	store_reopen(f);
	assert_int_equal(ds_store_chunk_size(f->s), DS_CHUNK_SIZE_DEFAULT);
}

static void test_create_twice(void **state)
{
	struct fx *f = *state;
	struct ds_store_options o = {.chunk_size = 16 * KiB};
	struct spec sp;
	ds_chunk_id id;

	store_new(f, 32 * KiB, 0);
	random_specs(&sp, 1, 1, 20000);
	assert_int_equal(put_specs(f->s, &sp, 1, &id, NULL), 0);
	store_shut(f);

	assert_int_equal(ds_store_create(f->dir, NULL), -EEXIST);
	assert_int_equal(ds_store_create(f->dir, &o), -EEXIST);

	/* The first store is untouched: same chunk size, same secret, same data. */
	store_reopen(f);
	assert_int_equal(ds_store_chunk_size(f->s), 32 * KiB);
	expect_chunks(f->s, &sp, &id, 1);
}

static void test_open_missing(void **state)
{
	struct fx *f = *state;
	struct ds_store *s = NULL;

	assert_int_equal(ds_store_open(f->dir, &s), -ENOENT);
	assert_int_equal(mkdir(f->dir, 0750), 0);
	assert_int_equal(ds_store_open(f->dir, &s), -ENOENT);
	assert_null(s);
}

/* Opens dir expecting failure; the result must be an error, never a crash. */
static int open_fails(struct fx *f)
{
	struct ds_store *s = NULL;
	int r = ds_store_open(f->dir, &s);

	if (r == 0) {
		ds_store_close(s);
		fail_msg("a damaged store opened");
	}
	return r;
}

static void test_open_garbage(void **state)
{
	struct fx *f = *state;
	char db[PATH_MAX], packs[PATH_MAX];
	uint8_t junk[8192];

	assert_int_equal(mkdir(f->dir, 0750), 0);
	path_cat(db, sizeof(db), f->dir, "store.db");
	path_cat(packs, sizeof(packs), f->dir, "packs");
	assert_int_equal(mkdir(packs, 0750), 0);

	/* Random bytes. */
	fill_random(junk, sizeof(junk), 1);
	write_file(db, junk, sizeof(junk));
	assert_int_equal(open_fails(f), -EBADMSG);

	/* Text. */
	write_file(db, "hello, world\n", 13);
	assert_int_equal(open_fails(f), -EBADMSG);

	/* An SQLite header followed by junk. */
	memcpy(junk, "SQLite format 3", 16);
	write_file(db, junk, sizeof(junk));
	assert_true(open_fails(f) < 0);

	/* Empty: SQLite would take it for a new database. */
	write_file(db, "", 0);
	assert_int_equal(open_fails(f), -EBADMSG);

	/* A valid SQLite database that is not a dsnap index. */
	unlink(db);
	assert_int_equal(sql_exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);"), SQLITE_OK);
	assert_int_equal(open_fails(f), -EBADMSG);
}

static void test_open_bad_meta(void **state)
{
	struct fx *f = *state;
	char db[PATH_MAX], packs[PATH_MAX];
	static const struct {
		const char *sql;
		int err;
	} cases[] = {
		{"UPDATE meta SET value = 2 WHERE key = 'format'", -EPROTONOSUPPORT},
		{"UPDATE meta SET value = 0 WHERE key = 'format'", -EBADMSG},
		{"DELETE FROM meta WHERE key = 'secret'", -EBADMSG},
		{"UPDATE meta SET value = x'0011' WHERE key = 'secret'", -EBADMSG},
		{"DELETE FROM meta WHERE key = 'store_id'", -EBADMSG},
		{"UPDATE meta SET value = 3000 WHERE key = 'chunk_size'", -EBADMSG},
		{"UPDATE meta SET value = 8388608 WHERE key = 'chunk_size'", -EBADMSG},
		{"UPDATE meta SET value = 1000 WHERE key = 'pack_size'", -EBADMSG},
		{"DROP TABLE meta", -EBADMSG},
	};

	path_cat(db, sizeof(db), f->tmp, "store/store.db");
	path_cat(packs, sizeof(packs), f->tmp, "store/packs");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		rm_rf(f->dir);
		assert_int_equal(ds_store_create(f->dir, NULL), 0);
		assert_int_equal(sql_exec(db, cases[i].sql), SQLITE_OK);
		if (open_fails(f) != cases[i].err)
			fail_msg("after \"%s\": wrong error", cases[i].sql);
	}

	/* A store without its packs folder. */
	rm_rf(f->dir);
	assert_int_equal(ds_store_create(f->dir, NULL), 0);
	assert_int_equal(rmdir(packs), 0);
	assert_int_equal(open_fails(f), -EBADMSG);
}

static void test_bad_options(void **state)
{
	struct fx *f = *state;
	static const uint32_t bad[] = {
		1, 4 * KiB, 8 * KiB, 16 * KiB - 1, 16 * KiB + 1, 3 * KiB, 48 * KiB, 96 * KiB,
		3 * MiB, 4 * MiB + 1, 8 * MiB, UINT32_MAX, 1u << 31,
	};
	struct ds_store_options o = {0};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		o.chunk_size = bad[i];
		if (ds_store_create(f->dir, &o) != -EINVAL)
			fail_msg("chunk size %u accepted", bad[i]);
		/* A refused create leaves nothing behind. */
		assert_false(file_exists(f->dir));
	}
	o.chunk_size = 0;
	o.pack_size = 4096;
	assert_int_equal(ds_store_create(f->dir, &o), -EINVAL);
	assert_false(file_exists(f->dir));

	/* 0 means the default. */
	o.pack_size = 0;
	assert_int_equal(ds_store_create(f->dir, &o), 0);
	assert_int_equal(ds_store_open(f->dir, &f->s), 0);
	assert_int_equal(ds_store_chunk_size(f->s), DS_CHUNK_SIZE_DEFAULT);
	store_shut(f);

	/* The limits themselves are fine. */
	rm_rf(f->dir);
	o.chunk_size = DS_CHUNK_SIZE_MIN;
	assert_int_equal(ds_store_create(f->dir, &o), 0);
	rm_rf(f->dir);
	o.chunk_size = DS_CHUNK_SIZE_MAX;
	o.pack_size = MiB;
	assert_int_equal(ds_store_create(f->dir, &o), 0);
	assert_int_equal(ds_store_open(f->dir, &f->s), 0);
	assert_int_equal(ds_store_chunk_size(f->s), DS_CHUNK_SIZE_MAX);
}

/* ---- round trips ------------------------------------------------------------------ */

static void test_round_trip_all_sizes(void **state)
{
	struct fx *f = *state;

	for (uint32_t cs = DS_CHUNK_SIZE_MIN; cs <= DS_CHUNK_SIZE_MAX; cs *= 2) {
		struct spec sp[] = {
			{.seed = cs + 1, .len = cs, .kind = GEN_RANDOM},
			{.seed = cs + 2, .len = cs, .kind = GEN_ZERO},
			{.seed = cs + 3, .len = cs, .kind = GEN_TEXT},
			{.seed = cs + 4, .len = cs, .kind = GEN_SPARSE},
			{.seed = cs + 5, .len = cs, .kind = GEN_RANDOM},
			/* Short last chunks of a disk whose size is not a multiple. */
			{.seed = cs + 6, .len = cs / 3 + 7, .kind = GEN_RANDOM},
			{.seed = cs + 7, .len = cs - 1, .kind = GEN_TEXT},
			{.seed = cs + 8, .len = 1, .kind = GEN_TEXT}, /* never a 0 byte */
			{.seed = cs + 9, .len = 512, .kind = GEN_ZERO},
		};
		const size_t n = sizeof(sp) / sizeof(sp[0]);
		ds_chunk_id ids[sizeof(sp) / sizeof(sp[0])];
		bool stored[sizeof(sp) / sizeof(sp[0])];
		struct ds_store_stats st;
		uint64_t raw = 0;

		rm_rf(f->dir);
		store_new(f, cs, 0);
		assert_int_equal(ds_store_chunk_size(f->s), cs);
		assert_int_equal(put_specs(f->s, sp, n, ids, stored), 0);
		for (size_t i = 0; i < n; i++) {
			ds_chunk_id again;
			uint8_t *buf = malloc(sp[i].len);

			assert_non_null(buf);
			assert_int_equal(stored[i], sp[i].kind != GEN_ZERO);
			assert_int_equal(ds_chunk_id_is_zero(&ids[i]), sp[i].kind == GEN_ZERO);
			if (sp[i].kind != GEN_ZERO)
				raw += sp[i].len;
			/* The put id is the id the store computes for those bytes. */
			gen_fill(buf, sp[i].len, sp[i].seed, sp[i].kind);
			ds_store_chunk_id(f->s, buf, sp[i].len, &again);
			assert_memory_equal(&again, &ids[i], sizeof(again));
			free(buf);
		}
		expect_chunks(f->s, sp, ids, n);
		st = get_stats(f->s);
		assert_int_equal(st.chunks, n - 2);
		assert_int_equal(st.raw_bytes, raw);
		/* Text and sparse chunks shrink; random ones cost a header more. */
		assert_true(st.stored_bytes < raw);
		assert_verify_clean(f->s);

		/* Everything is still there after a reopen. */
		store_reopen(f);
		expect_chunks(f->s, sp, ids, n);
		store_shut(f);
	}
}

/* An incompressible chunk is stored raw: its record is header + bytes. */
static void test_incompressible_stored_raw(void **state)
{
	struct fx *f = *state;
	struct spec sp;
	struct ds_store_stats st;
	ds_chunk_id id;

	store_new(f, 64 * KiB, 0);
	random_specs(&sp, 1, 42, 64 * KiB);
	assert_int_equal(put_specs(f->s, &sp, 1, &id, NULL), 0);
	st = get_stats(f->s);
	assert_int_equal(st.chunks, 1);
	assert_int_equal(st.raw_bytes, 64 * KiB);
	assert_int_equal(st.stored_bytes, REC_HEADER_SIZE + 64 * KiB);
	assert_int_equal(st.pack_bytes, PACK_HEADER_SIZE + REC_HEADER_SIZE + 64 * KiB);
}

/* ---- zero chunks, dedup, has, bad puts ------------------------------------------------ */

static struct spec zero_specs[] = {
	{.len = 16 * KiB, .kind = GEN_ZERO},
	{.len = 1, .kind = GEN_ZERO},
	{.len = 5000, .kind = GEN_ZERO},
	{.len = 16 * KiB, .kind = GEN_ZERO},
};

static void put_zeros_expect_nothing(struct ds_store *s)
{
	struct ds_store_stats before, after;
	ds_chunk_id ids[4];
	bool stored[4];

	before = get_stats(s);
	assert_int_equal(put_specs(s, zero_specs, 4, ids, stored), 0);
	for (int i = 0; i < 4; i++) {
		assert_false(stored[i]);
		assert_true(ds_chunk_id_is_zero(&ids[i]));
	}
	after = get_stats(s);
	assert_stats_equal(&before, &after);
}

/* Zero chunks take no space: no record, no pack, stats unchanged. */
static void test_zero_chunks(void **state)
{
	struct fx *f = *state;
	struct spec one;
	ds_chunk_id id, zero = {0};
	uint32_t len;
	int err;

	store_new(f, 16 * KiB, 0);
	random_specs(&one, 1, 7, 16 * KiB);
	assert_int_equal(put_specs(f->s, &one, 1, &id, NULL), 0);
	put_zeros_expect_nothing(f->s);

	/* The zero id reads as a whole chunk of zeros and is always present. */
	assert_int_equal(get_one(f->s, &zero, &err, &len), 0);
	assert_int_equal(err, 0);
	assert_int_equal(len, 16 * KiB);
	assert_true(has_one(f->s, &zero));
	ds_store_chunk_id(f->s, "\0\0\0\0", 4, &id);
	assert_true(ds_chunk_id_is_zero(&id));
}

/* The same on a store that has no pack yet: a put of zeros alone must not
 * start one. */
static void test_zero_chunks_fresh_store(void **state)
{
	struct fx *f = *state;

	store_new(f, 16 * KiB, 0);
	put_zeros_expect_nothing(f->s);
	assert_int_equal(count_pack_files(f, NULL), 0);
}

static void test_dedup(void **state)
{
	struct fx *f = *state;
	struct spec a, b, c;
	struct spec batch[5];
	struct ds_store_stats before, after;
	ds_chunk_id ida, ids[5];
	bool stored[5];

	store_new(f, 16 * KiB, 0);
	random_specs(&a, 1, 1, 16 * KiB);
	random_specs(&b, 1, 2, 16 * KiB);
	c = (struct spec){.seed = 3, .len = 16 * KiB, .kind = GEN_TEXT};

	assert_int_equal(put_specs(f->s, &a, 1, &ida, stored), 0);
	assert_true(stored[0]);
	before = get_stats(f->s);

	/* The same chunk again stores nothing. */
	assert_int_equal(put_specs(f->s, &a, 1, ids, stored), 0);
	assert_false(stored[0]);
	assert_memory_equal(&ids[0], &ida, sizeof(ida));
	after = get_stats(f->s);
	assert_stats_equal(&before, &after);

	/* The same chunk twice within one batch is stored once. */
	batch[0] = b;
	batch[1] = b;
	batch[2] = c;
	batch[3] = b;
	batch[4] = a;
	assert_int_equal(put_specs(f->s, batch, 5, ids, stored), 0);
	assert_true(stored[0]);
	assert_false(stored[1]);
	assert_true(stored[2]);
	assert_false(stored[3]);
	assert_false(stored[4]);
	assert_memory_equal(&ids[0], &ids[1], sizeof(ids[0]));
	assert_memory_equal(&ids[0], &ids[3], sizeof(ids[0]));
	after = get_stats(f->s);
	assert_int_equal(after.chunks, before.chunks + 2);
	assert_int_equal(after.raw_bytes, before.raw_bytes + 2 * 16 * KiB);
	expect_chunks(f->s, batch, ids, 5);

	/* The secret survives a reopen, so dedup does too. */
	store_reopen(f);
	before = get_stats(f->s);
	assert_int_equal(put_specs(f->s, batch, 5, ids, stored), 0);
	for (int i = 0; i < 5; i++)
		assert_false(stored[i]);
	after = get_stats(f->s);
	assert_stats_equal(&before, &after);

	/* The same bytes cut shorter are another chunk. */
	a.len = 16 * KiB - 8;
	assert_int_equal(put_specs(f->s, &a, 1, ids, stored), 0);
	assert_true(stored[0]);
	assert_memory_not_equal(&ids[0], &ida, sizeof(ida));
}

/* Two stores have different secrets, so the same bytes get different ids. */
static void test_ids_keyed_per_store(void **state)
{
	struct fx *f = *state;
	char dir2[PATH_MAX];
	struct ds_store *s2;
	uint8_t buf[4096];
	ds_chunk_id a, b;

	store_new(f, 16 * KiB, 0);
	path_cat(dir2, sizeof(dir2), f->tmp, "store2");
	assert_int_equal(ds_store_create(dir2, NULL), 0);
	assert_int_equal(ds_store_open(dir2, &s2), 0);
	fill_text(buf, sizeof(buf), 5);
	ds_store_chunk_id(f->s, buf, sizeof(buf), &a);
	ds_store_chunk_id(s2, buf, sizeof(buf), &b);
	ds_store_close(s2);
	assert_memory_not_equal(&a, &b, sizeof(a));
}

static void test_has(void **state)
{
	struct fx *f = *state;
	struct spec sp[4];
	ds_chunk_id ids[8];
	bool present[8];

	store_new(f, 16 * KiB, 0);
	random_specs(sp, 4, 100, 10000);
	assert_int_equal(put_specs(f->s, sp, 4, ids, NULL), 0);
	fill_random(&ids[4], sizeof(ids[4]), 1);
	fill_random(&ids[5], sizeof(ids[5]), 2);
	memset(&ids[6], 0, sizeof(ids[6]));
	ids[7] = ids[1];
	memset(present, 0x55, sizeof(present));
	assert_int_equal(ds_store_has(f->s, ids, 8, present), 0);
	for (int i = 0; i < 4; i++)
		assert_true(present[i]);
	assert_false(present[4]);
	assert_false(present[5]);
	assert_true(present[6]);
	assert_true(present[7]);
	assert_int_equal(ds_store_has(f->s, ids, 0, present), 0);
}

/* Chunks added but not flushed read back at once (from the writer's
 * queue), while ds_store_has() sees only flushed ones. */
static void test_get_added_before_flush(void **state)
{
	struct fx *f = *state;
	struct ds_chunk c[3], g;
	uint8_t *data[3], *buf = malloc(16 * KiB);
	bool present[3];
	ds_chunk_id ids[3];

	assert_non_null(buf);
	store_new(f, 16 * KiB, 0);
	memset(c, 0, sizeof(c));
	for (int i = 0; i < 3; i++) {
		data[i] = malloc(16 * KiB);
		assert_non_null(data[i]);
		fill_random(data[i], 16 * KiB, 300 + (unsigned)i);
		c[i].data = data[i];
		c[i].len = 16 * KiB;
	}
	assert_int_equal(ds_store_add(f->s, c, 3), 0);
	for (int i = 0; i < 3; i++) {
		ids[i] = c[i].id;
		memset(&g, 0, sizeof(g));
		g.id = ids[i];
		g.data = buf;
		assert_int_equal(ds_store_get(f->s, &g, 1), 0);
		assert_int_equal(g.len, 16 * KiB);
		assert_bytes_equal(buf, data[i], 16 * KiB);
	}
	assert_int_equal(ds_store_has(f->s, ids, 3, present), 0);
	assert_false(present[0]);
	assert_int_equal(ds_store_flush(f->s), 0);
	assert_int_equal(ds_store_has(f->s, ids, 3, present), 0);
	assert_true(present[0] && present[1] && present[2]);
	for (int i = 0; i < 3; i++)
		free(data[i]);
	free(buf);
}

/* A reader racing adds and flushes always finds what was added: a row is
 * queued, being flushed, or committed, and the get looks at all three. */
#define RACE_CHUNKS 300
struct race {
	struct ds_store *s;
	atomic_uint added;
	ds_chunk_id ids[RACE_CHUNKS];
	int err;
};

static void *race_writer(void *arg)
{
	struct race *rc = arg;
	uint8_t *d = malloc(16 * KiB);

	for (unsigned k = 0; d && k < RACE_CHUNKS && rc->err == 0; k++) {
		struct ds_chunk c = {.data = d, .len = 16 * KiB};
		fill_random(d, 16 * KiB, 5000 + k);
		rc->err = ds_store_add(rc->s, &c, 1);
		rc->ids[k] = c.id;
		atomic_store(&rc->added, k + 1);
		if (rc->err == 0 && k % 7 == 6)
			rc->err = ds_store_flush(rc->s);
	}
	free(d);
	return NULL;
}

static void test_get_races_flush(void **state)
{
	struct fx *f = *state;
	struct race rc = {0};
	uint8_t *buf = malloc(16 * KiB), *want = malloc(16 * KiB);
	unsigned reads = 0, seed = 1;
	pthread_t t;

	assert_non_null(buf);
	assert_non_null(want);
	store_new(f, 16 * KiB, 0);
	rc.s = f->s;
	assert_int_equal(pthread_create(&t, NULL, race_writer, &rc), 0);
	for (;;) {
		unsigned n = atomic_load(&rc.added), k;
		struct ds_chunk g = {.data = buf};
		if (n == 0)
			continue;
		seed = seed * 1103515245u + 12345u;
		k = n - 1 - (seed >> 16) % (n < 8 ? n : 8); /* mostly the newest */
		g.id = rc.ids[k];
		assert_int_equal(ds_store_get(f->s, &g, 1), 0);
		fill_random(want, 16 * KiB, 5000 + k);
		assert_bytes_equal(buf, want, 16 * KiB);
		reads++;
		if (n == RACE_CHUNKS)
			break;
	}
	pthread_join(t, NULL);
	assert_int_equal(rc.err, 0);
	assert_true(reads > 0);
	free(buf);
	free(want);
}

static void test_get_unknown(void **state)
{
	struct fx *f = *state;
	struct spec sp;
	struct ds_chunk c[3];
	ds_chunk_id id;
	uint8_t *buf[3], *want;

	store_new(f, 16 * KiB, 0);
	random_specs(&sp, 1, 9, 16 * KiB);
	assert_int_equal(put_specs(f->s, &sp, 1, &id, NULL), 0);

	memset(c, 0, sizeof(c));
	for (int i = 0; i < 3; i++) {
		buf[i] = malloc(16 * KiB);
		assert_non_null(buf[i]);
		c[i].data = buf[i];
		c[i].err = 12345;
	}
	fill_random(&c[0].id, sizeof(c[0].id), 77); /* unknown */
	c[1].id = id;                               /* known */
	/* c[2].id is the zero id */
	assert_int_equal(ds_store_get(f->s, c, 3), -ENOENT);
	assert_int_equal(c[0].err, -ENOENT);
	assert_int_equal(c[1].err, 0);
	assert_int_equal(c[1].len, 16 * KiB);
	assert_int_equal(c[2].err, 0);
	assert_true(ds_is_zero(buf[2], 16 * KiB));
	want = malloc(16 * KiB);
	assert_non_null(want);
	fill_random(want, 16 * KiB, 9);
	assert_bytes_equal(buf[1], want, 16 * KiB);
	free(want);
	for (int i = 0; i < 3; i++)
		free(buf[i]);
	assert_int_equal(ds_store_get(f->s, c, 0), 0);
}

static void test_put_invalid(void **state)
{
	struct fx *f = *state;
	struct spec sp[2];
	struct ds_store_stats before, after;
	struct ds_chunk c[2];
	uint8_t *buf = calloc(1, 16 * KiB + 1);
	ds_chunk_id id;

	assert_non_null(buf);
	store_new(f, 16 * KiB, 0);
	random_specs(sp, 2, 1, 16 * KiB);
	assert_int_equal(put_specs(f->s, sp, 1, NULL, NULL), 0);
	before = get_stats(f->s);

	/* len 0, len > chunk size, no data: alone and after a good chunk. */
	for (int k = 0; k < 3; k++) {
		memset(c, 0, sizeof(c));
		fill_random(buf, 16 * KiB + 1, 5);
		c[0].data = buf;
		c[0].len = 1000;
		c[1].data = k == 2 ? NULL : buf;
		c[1].len = k == 0 ? 0 : k == 1 ? 16 * KiB + 1 : 1000;
		assert_int_equal(ds_store_put(f->s, &c[1], 1), -EINVAL);
		assert_int_equal(ds_store_put(f->s, c, 2), -EINVAL);
		ds_store_chunk_id(f->s, buf, 1000, &id);
		assert_false(has_one(f->s, &id));
		after = get_stats(f->s);
		assert_stats_equal(&before, &after);
	}
	/* An empty batch is fine and does nothing. */
	assert_int_equal(ds_store_put(f->s, c, 0), 0);
	after = get_stats(f->s);
	assert_stats_equal(&before, &after);
	assert_verify_clean(f->s);
	free(buf);
}

/* ---- damage -------------------------------------------------------------------------- */

/*
 * Three random chunks in one put are three raw records one after another in
 * pack 1. Damage anywhere in the middle one's record is reported for that
 * chunk alone, by get and by verify, with its id; the others still read.
 */
static void test_damaged_record(void **state)
{
	struct fx *f = *state;
	const uint32_t len = 16 * KiB;
	const uint64_t rec = REC_HEADER_SIZE + len;
	const uint64_t b_off = PACK_HEADER_SIZE + rec;
	static const uint64_t where[] = {
		/* header: magic, codec, lengths, id, checksum */
		0, 4, 5, 9, 13, 16, 31, 32, 39,
		/* payload */
		REC_HEADER_SIZE, REC_HEADER_SIZE + 1000, REC_HEADER_SIZE + 16 * KiB - 1,
	};
	struct spec sp[3];
	ds_chunk_id ids[3];
	char pack[PATH_MAX], hex[DS_CHUNK_ID_HEX];
	int err;

	store_new(f, len, 0);
	random_specs(sp, 3, 1000, len);
	assert_int_equal(put_specs(f->s, sp, 3, ids, NULL), 0);
	pack_path(f, 1, pack, sizeof(pack));
	assert_int_equal(file_size(pack), PACK_HEADER_SIZE + 3 * rec);
	ds_chunk_id_to_hex(&ids[1], hex);

	for (size_t w = 0; w < sizeof(where) / sizeof(where[0]); w++) {
		struct bad_list bad = {0};
		struct ds_chunk c[3];
		uint8_t *bufs = malloc(3 * len);

		assert_non_null(bufs);
		/* Damage while the store is open: reads must not trust a cache. */
		flip_byte(pack, b_off + where[w]);
		test_log_capture();

		memset(c, 0, sizeof(c));
		for (int i = 0; i < 3; i++) {
			c[i].id = ids[i];
			c[i].data = bufs + i * len;
		}
		assert_int_equal(ds_store_get(f->s, c, 3), -EBADMSG);
		assert_int_equal(c[0].err, 0);
		assert_int_equal(c[1].err, -EBADMSG);
		assert_int_equal(c[2].err, 0);
		free(bufs);
		/* The log names the chunk. */
		if (!test_log_has(hex))
			fail_msg("no log line names chunk %s:\n%s", hex, test_log.all);

		assert_int_equal(ds_store_verify(f->s, bad_collect, &bad), 1);
		assert_int_equal(bad.n, 1);
		assert_memory_equal(&bad.ids[0], &ids[1], sizeof(ids[1]));
		assert_int_equal(bad.errs[0], -EBADMSG);
		assert_int_equal(ds_store_verify(f->s, NULL, NULL), 1);

		expect_chunks(f->s, &sp[0], &ids[0], 1);
		expect_chunks(f->s, &sp[2], &ids[2], 1);

		/* Undo the damage: all is well again. */
		flip_byte(pack, b_off + where[w]);
		assert_int_equal(get_one(f->s, &ids[1], &err, NULL), 0);
		assert_verify_clean(f->s);
	}

	/* Damage survives a reopen (nothing "repairs" it at open). */
	flip_byte(pack, b_off + REC_HEADER_SIZE + 7);
	store_reopen(f);
	assert_int_equal(get_one(f->s, &ids[1], &err, NULL), -EBADMSG);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 1);
}

/* The index is trusted for nothing: a row that points at another chunk's
 * record (a sound record) is caught. */
static void test_index_points_elsewhere(void **state)
{
	struct fx *f = *state;
	struct spec sp[2];
	ds_chunk_id ids[2];
	char db[PATH_MAX], sql[256], hb[DS_CHUNK_ID_HEX];
	struct bad_list bad = {0};
	int err;

	store_new(f, 16 * KiB, 0);
	random_specs(sp, 2, 50, 16 * KiB);
	assert_int_equal(put_specs(f->s, sp, 2, ids, NULL), 0);
	store_shut(f);
	path_cat(db, sizeof(db), f->dir, "store.db");
	ds_chunk_id_to_hex(&ids[1], hb);
	snprintf(sql, sizeof(sql), "UPDATE chunks SET off = %u WHERE id = x'%s'",
		 PACK_HEADER_SIZE, hb);
	assert_int_equal(sql_exec(db, sql), SQLITE_OK);

	store_reopen(f);
	assert_int_equal(get_one(f->s, &ids[1], &err, NULL), -EBADMSG);
	assert_int_equal(err, -EBADMSG);
	expect_chunks(f->s, sp, ids, 1);
	assert_int_equal(ds_store_verify(f->s, bad_collect, &bad), 1);
	assert_memory_equal(&bad.ids[0], &ids[1], sizeof(ids[1]));
}

/*
 * Index rows damaged field by field. Each case runs in a child process, so
 * that a crash is reported as this case failing rather than ending the run.
 * The damaged chunk must read as an error (never as absent, never as other
 * bytes), verify must count it, and the other chunk must still read.
 */
static const struct {
	const char *set;
	int verify_err; /* the error verify reports; 0: any */
} row_cases[] = {
	{"len = 10", -EBADMSG},
	{"len = 40", -EBADMSG},
	{"len = len - 1", -EBADMSG},
	{"len = len + 1", -EBADMSG},
	{"len = 1000000000", -EBADMSG},
	{"len = -1", -EBADMSG},
	{"raw_len = 0", -EBADMSG},
	{"raw_len = raw_len - 1", -EBADMSG},
	{"raw_len = 16385", -EBADMSG},
	{"raw_len = -1", -EBADMSG},
	{"off = off + 1", -EBADMSG},
	{"off = 0", -EBADMSG},
	{"off = 1099511627776", -ENODATA},
	{"off = -40", 0},
	{"pack = 99", 0},
	{"pack = 0", 0},
	{"pack = 4294967295", 0},
	{"pack = -1", 0},
};

static int row_case_child(const char *dir, const ds_chunk_id *good, const ds_chunk_id *bad,
			  int want)
{
	struct ds_store *s;
	struct bad_list bl = {0};
	struct ds_chunk c = {.id = *bad};
	int64_t nbad;

	if (ds_store_open(dir, &s) != 0)
		return 10;
	c.data = malloc(16 * KiB);
	if (!c.data)
		return 11;
	if (ds_store_get(s, &c, 1) >= 0 || c.err >= 0 || c.err == -ENOENT)
		return 12;
	c.id = *good;
	if (ds_store_get(s, &c, 1) != 0 || c.len != 16 * KiB)
		return 13;
	nbad = ds_store_verify(s, bad_collect, &bl);
	if (nbad != 1 || bl.n != 1 || memcmp(&bl.ids[0], bad, sizeof(*bad)) != 0)
		return 14;
	if (want ? bl.errs[0] != want : bl.errs[0] >= 0)
		return 15;
	ds_store_close(s);
	free(c.data);
	return 0;
}

static void test_index_rows_damaged(void **state)
{
	struct fx *f = *state;
	char db[PATH_MAX], sql[256], hex[DS_CHUNK_ID_HEX];
	int failed = 0;

	path_cat(db, sizeof(db), f->dir, "store.db");
	for (size_t i = 0; i < sizeof(row_cases) / sizeof(row_cases[0]); i++) {
		struct spec sp[2];
		ds_chunk_id ids[2];
		int status;
		pid_t pid;

		rm_rf(f->dir);
		store_new(f, 16 * KiB, 0);
		random_specs(sp, 2, 60, 16 * KiB);
		assert_int_equal(put_specs(f->s, sp, 2, ids, NULL), 0);
		store_shut(f);
		/* The first record, so a row one byte longer still lies in the pack. */
		ds_chunk_id_to_hex(&ids[0], hex);
		snprintf(sql, sizeof(sql), "UPDATE chunks SET %s WHERE id = x'%s'", row_cases[i].set,
			 hex);
		assert_int_equal(sql_exec(db, sql), SQLITE_OK);

		fflush(NULL);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			child_default_signals();
			_exit(row_case_child(f->dir, &ids[1], &ids[0], row_cases[i].verify_err));
		}
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (WIFSIGNALED(status)) {
			print_error("row with \"%s\": killed by signal %d\n", row_cases[i].set,
				    WTERMSIG(status));
			failed++;
		} else if (WEXITSTATUS(status) != 0) {
			print_error("row with \"%s\": check %d failed\n", row_cases[i].set,
				    WEXITSTATUS(status));
			failed++;
		}
	}
	assert_int_equal(failed, 0);
}

/* A pack cut short (lost by the file system, say) leaves the store usable:
 * the lost chunks are reported, the rest reads, new puts work, and GC can
 * drop the lost ones. */
static void test_truncated_pack(void **state)
{
	struct fx *f = *state;
	const uint32_t len = 16 * KiB;
	const uint64_t rec = REC_HEADER_SIZE + len;
	struct spec sp[16];
	ds_chunk_id ids[16];
	struct bad_list bad = {0};
	char pack[PATH_MAX];
	int64_t size;
	int err;

	store_new(f, len, 0);
	random_specs(sp, 16, 300, len);
	put_all(f->s, sp, 12, 4, ids);
	store_shut(f);

	pack_path(f, 1, pack, sizeof(pack));
	size = file_size(pack);
	assert_int_equal(size, PACK_HEADER_SIZE + 12 * rec);
	/* The last record gone, the one before it missing its last 100 bytes. */
	assert_int_equal(truncate(pack, size - (int64_t)rec - 100), 0);

	store_reopen(f);
	assert_int_equal(ds_store_verify(f->s, bad_collect, &bad), 2);
	assert_int_equal(bad.n, 2);
	assert_true(bad_find(&bad, &ids[10]) >= 0);
	assert_true(bad_find(&bad, &ids[11]) >= 0);
	assert_int_equal(bad.errs[0], -ENODATA);
	assert_int_equal(bad.errs[1], -ENODATA);
	assert_true(get_one(f->s, &ids[10], &err, NULL) < 0);
	assert_true(err < 0 && err != -ENOENT);
	assert_true(get_one(f->s, &ids[11], &err, NULL) < 0);
	assert_true(err < 0 && err != -ENOENT);
	expect_chunks(f->s, sp, ids, 10);

	/* New chunks go in and read back. */
	put_all(f->s, sp + 12, 4, 4, ids + 12);
	expect_chunks(f->s, sp + 12, ids + 12, 4);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 2);

	/* GC without the lost chunks: a clean store again. */
	{
		ds_chunk_id live[14];
		struct ds_gc_stats gs;

		memcpy(live, ids, 10 * sizeof(ids[0]));
		memcpy(live + 10, ids + 12, 4 * sizeof(ids[0]));
		assert_int_equal(ds_store_gc(f->s, live, 14, &gs), 0);
		assert_int_equal(gs.chunks_removed, 2);
	}
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp, ids, 10);
	expect_chunks(f->s, sp + 12, ids + 12, 4);
	store_reopen(f);
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp, ids, 10);
	expect_chunks(f->s, sp + 12, ids + 12, 4);
}

/* ---- recovery at open ------------------------------------------------------------------ */

static void test_tail_garbage_cut(void **state)
{
	struct fx *f = *state;
	const uint32_t len = 64 * KiB;
	struct spec sp[40];
	ds_chunk_id ids[40];
	struct ds_store_stats before, after;
	char p1[PATH_MAX], p2[PATH_MAX];
	int64_t s1, s2;
	uint8_t junk[5000], *rec;
	int fd;

	/* Two packs, so a tail is cut on a pack that is not the current one too. */
	store_new(f, len, MiB);
	random_specs(sp, 40, 500, len);
	put_all(f->s, sp, 20, 4, ids);
	before = get_stats(f->s);
	assert_int_equal(before.packs, 2);
	store_shut(f);

	pack_path(f, 1, p1, sizeof(p1));
	pack_path(f, 2, p2, sizeof(p2));
	s1 = file_size(p1);
	s2 = file_size(p2);
	assert_int_equal((uint64_t)(s1 + s2), before.pack_bytes);

	/* Junk, then a copy of a whole valid record: neither may survive. */
	fill_random(junk, sizeof(junk), 3);
	rec = malloc(REC_HEADER_SIZE + len);
	assert_non_null(rec);
	fd = open(p1, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, rec, REC_HEADER_SIZE + len, PACK_HEADER_SIZE),
			 (ssize_t)(REC_HEADER_SIZE + len));
	close(fd);
	append_bytes(p1, junk, sizeof(junk));
	append_bytes(p2, junk, 17);
	append_bytes(p2, rec, REC_HEADER_SIZE + len);
	free(rec);

	store_reopen(f);
	assert_int_equal(file_size(p1), s1);
	assert_int_equal(file_size(p2), s2);
	after = get_stats(f->s);
	assert_stats_equal(&before, &after);
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp, ids, 20);

	/* Appending goes on from the committed end. */
	put_all(f->s, sp + 20, 20, 4, ids + 20);
	expect_chunks(f->s, sp, ids, 40);
	store_reopen(f);
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp, ids, 40);
}

static void test_stray_pack_removed(void **state)
{
	struct fx *f = *state;
	struct spec sp[24];
	ds_chunk_id ids[24];
	char stray[PATH_MAX], low[PATH_MAX], other[PATH_MAX];
	uint8_t hdr[PACK_HEADER_SIZE + 100];
	uint64_t bytes;
	struct ds_store_stats st;

	store_new(f, 64 * KiB, MiB);
	random_specs(sp, 24, 900, 64 * KiB);
	put_all(f->s, sp, 8, 8, ids);
	store_shut(f);

	/* An interrupted pack creation (a bare header) and an interrupted GC
	 * (an old pack whose row is gone); plus a file that is not a pack. */
	pack_path(f, 0x99, stray, sizeof(stray));
	memset(hdr, 0, sizeof(hdr));
	memcpy(hdr, PACK_MAGIC, 8);
	write_file(stray, hdr, PACK_HEADER_SIZE);
	pack_path(f, 0, low, sizeof(low));
	write_file(low, hdr, sizeof(hdr));
	path_cat(other, sizeof(other), f->dir, "packs/notes.txt");
	write_file(other, "keep me", 7);

	store_reopen(f);
	assert_false(file_exists(stray));
	assert_false(file_exists(low));
	assert_true(file_exists(other));
	st = get_stats(f->s);
	assert_int_equal(count_pack_files(f, &bytes), (int)st.packs);
	assert_int_equal(bytes, st.pack_bytes);
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp, ids, 8);

	/* Go on past a pack rotation. */
	put_all(f->s, sp + 8, 16, 8, ids + 8);
	st = get_stats(f->s);
	assert_true(st.packs >= 2);
	assert_int_equal(count_pack_files(f, &bytes), (int)st.packs);
	assert_int_equal(bytes, st.pack_bytes);
	expect_chunks(f->s, sp, ids, 24);
	store_reopen(f);
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp, ids, 24);
}

/* Reopening appends to the last pack instead of starting a pack per open. */
static void test_reopen_appends(void **state)
{
	struct fx *f = *state;
	struct spec sp[10];
	ds_chunk_id ids[10];

	store_new(f, 16 * KiB, 0);
	random_specs(sp, 10, 1, 5000);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(put_specs(f->s, &sp[i], 1, &ids[i], NULL), 0);
		store_reopen(f);
	}
	assert_int_equal(get_stats(f->s).packs, 1);
	assert_int_equal(count_pack_files(f, NULL), 1);
	expect_chunks(f->s, sp, ids, 10);
}

static void test_busy(void **state)
{
	struct fx *f = *state;
	struct ds_store *s2 = (struct ds_store *)0x1;

	store_new(f, 0, 0);
	assert_int_equal(ds_store_open(f->dir, &s2), -EBUSY);
	assert_ptr_equal(s2, (struct ds_store *)0x1);
	/* The open store is unharmed by the refused open. */
	{
		struct spec sp;
		ds_chunk_id id;

		random_specs(&sp, 1, 1, 1000);
		assert_int_equal(put_specs(f->s, &sp, 1, &id, NULL), 0);
		expect_chunks(f->s, &sp, &id, 1);
	}
	store_shut(f);
	assert_int_equal(ds_store_open(f->dir, &s2), 0);
	ds_store_close(s2);
}

/* A pack file lost altogether: its chunks are reported (-EIO), the rest of
 * the store works, and GC without them makes it clean again. */
static void test_missing_pack(void **state)
{
	struct fx *f = *state;
	struct spec sp[40];
	ds_chunk_id ids[40];
	struct bad_list bad = {0};
	char p1[PATH_MAX];
	struct ds_gc_stats gs;
	int err;

	store_new(f, 64 * KiB, MiB);
	random_specs(sp, 40, 700, 64 * KiB);
	put_all(f->s, sp, 32, 8, ids); /* pack 1: chunks 0..15, pack 2: 16..31 */
	assert_int_equal(get_stats(f->s).packs, 2);
	store_shut(f);
	pack_path(f, 1, p1, sizeof(p1));
	assert_int_equal(unlink(p1), 0);

	store_reopen(f);
	assert_int_equal(ds_store_verify(f->s, bad_collect, &bad), 16);
	for (int i = 0; i < 16; i++) {
		int k = bad_find(&bad, &ids[i]);
		assert_true(k >= 0);
		assert_int_equal(bad.errs[k], -EIO);
		assert_int_equal(get_one(f->s, &ids[i], &err, NULL), -EIO);
	}
	expect_chunks(f->s, sp + 16, ids + 16, 16);
	put_all(f->s, sp + 32, 8, 8, ids + 32);
	expect_chunks(f->s, sp + 32, ids + 32, 8);

	assert_int_equal(ds_store_gc(f->s, ids + 16, 24, &gs), 0);
	assert_int_equal(gs.chunks_removed, 16);
	assert_verify_clean(f->s);
	store_reopen(f);
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp + 16, ids + 16, 24);
	assert_int_equal(count_pack_files(f, NULL), (int)get_stats(f->s).packs);
}

/*
 * Write failures (here EFBIG from RLIMIT_FSIZE, standing in for a full
 * disk): the call fails, nothing of it is visible, and once the cause is
 * gone the store goes on.
 */
static void fsize_limit(rlim_t limit)
{
	struct rlimit rl;

	assert_int_equal(getrlimit(RLIMIT_FSIZE, &rl), 0);
	rl.rlim_cur = limit == RLIM_INFINITY ? rl.rlim_max : limit;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void test_put_write_error(void **state)
{
	struct fx *f = *state;
	struct spec sp[8];
	ds_chunk_id ids[8];
	bool stored[8];
	struct ds_store_stats before, after;
	char pack[PATH_MAX];
	int64_t size;
	int r;

	signal(SIGXFSZ, SIG_IGN);
	store_new(f, 16 * KiB, 0);
	random_specs(sp, 8, 3000, 16 * KiB);
	put_all(f->s, sp, 4, 4, ids);
	before = get_stats(f->s);
	pack_path(f, 1, pack, sizeof(pack));
	size = file_size(pack);

	/* Room for one and a half records more. */
	fsize_limit((rlim_t)size + 3 * (REC_HEADER_SIZE + 16 * KiB) / 2);
	r = put_specs(f->s, sp + 4, 4, ids + 4, stored + 4);
	fsize_limit(RLIM_INFINITY);
	assert_true(r < 0);
	for (int i = 4; i < 8; i++) {
		assert_false(stored[i]);
		assert_false(has_one(f->s, &ids[i]));
	}
	after = get_stats(f->s);
	assert_stats_equal(&before, &after);
	assert_int_equal(file_size(pack), size);
	assert_verify_clean(f->s);

	/* The cause is gone: the same batch goes in. */
	assert_int_equal(put_specs(f->s, sp + 4, 4, ids + 4, stored + 4), 0);
	for (int i = 4; i < 8; i++)
		assert_true(stored[i]);
	expect_chunks(f->s, sp, ids, 8);
	store_reopen(f);
	assert_verify_clean(f->s);
	expect_chunks(f->s, sp, ids, 8);
	signal(SIGXFSZ, SIG_DFL);
}

static void test_gc_write_error(void **state)
{
	struct fx *f = *state;
	enum { N = 160 };
	struct spec *sp = calloc(N, sizeof(*sp));
	ds_chunk_id *ids = calloc(N, sizeof(*ids)), *live = calloc(N, sizeof(*live));
	struct ds_gc_stats gs;
	size_t nlive = 0;
	uint64_t bytes;
	int r;

	assert_non_null(sp);
	assert_non_null(ids);
	assert_non_null(live);
	signal(SIGXFSZ, SIG_IGN);
	store_new(f, 16 * KiB, MiB);
	random_specs(sp, N, 8000, 16 * KiB);
	put_all(f->s, sp, N, 8, ids);
	/* A quarter dead in every pack: each is compacted, each copy is
	 * 768 KiB, more than the limit allows. */
	for (int i = 0; i < N; i++)
		if (i % 4 != 0)
			live[nlive++] = ids[i];

	fsize_limit(512 * KiB);
	r = ds_store_gc(f->s, live, nlive, &gs);
	fsize_limit(RLIM_INFINITY);
	assert_true(r < 0);
	for (int i = 0; i < N; i++)
		if (i % 4 != 0)
			expect_chunks(f->s, &sp[i], &ids[i], 1);
	assert_verify_clean(f->s);

	/* The cause is gone: GC finishes the job. */
	assert_int_equal(ds_store_gc(f->s, live, nlive, &gs), 0);
	assert_int_equal(get_stats(f->s).chunks, nlive);
	for (int i = 0; i < N; i++) {
		if (i % 4 != 0)
			expect_chunks(f->s, &sp[i], &ids[i], 1);
		else
			assert_false(has_one(f->s, &ids[i]));
	}
	assert_verify_clean(f->s);
	store_reopen(f);
	assert_verify_clean(f->s);
	assert_int_equal(count_pack_files(f, &bytes), (int)get_stats(f->s).packs);
	assert_int_equal(bytes, get_stats(f->s).pack_bytes);
	signal(SIGXFSZ, SIG_DFL);
	free(sp);
	free(ids);
	free(live);
}

/* ---- threads ---------------------------------------------------------------------------- */

#define W_THREADS 4
#define W_BATCHES 24
#define W_BATCH 8
#define W_SHARED 48
#define W_ZERO_SEED UINT64_MAX

static struct spec seed_spec(uint64_t seed)
{
	struct spec sp = {.seed = seed, .len = 16 * KiB, .kind = GEN_RANDOM};

	if (seed == W_ZERO_SEED)
		sp.kind = GEN_ZERO;
	else if (seed % 3 == 0)
		sp.kind = GEN_TEXT;
	if (seed % 5 == 0)
		sp.len = 1000 + (uint32_t)(seed % 7919);
	return sp;
}

struct writer_ctx {
	struct ds_store *s;
	int t;
	uint64_t seeds[W_BATCHES * W_BATCH];
	ds_chunk_id ids[W_BATCHES * W_BATCH];
	unsigned stored;
	int err;
};

static void *writer_main(void *arg)
{
	struct writer_ctx *w = arg;
	uint64_t x = (uint64_t)w->t * 7777;

	for (int b = 0; b < W_BATCHES && !w->err; b++) {
		struct ds_chunk c[W_BATCH];
		struct spec sp[W_BATCH];

		memset(c, 0, sizeof(c));
		for (int j = 0; j < W_BATCH; j++) {
			uint64_t r = splitmix64(&x) % 8;
			uint64_t seed;

			if (r == 0)
				seed = W_ZERO_SEED;
			else if (r <= 3)
				seed = splitmix64(&x) % W_SHARED; /* other threads put these too */
			else
				seed = 1000000ull * (uint64_t)(w->t + 1) +
				       (uint64_t)(b * W_BATCH + j);
			sp[j] = seed_spec(seed);
			w->seeds[b * W_BATCH + j] = seed;
			c[j].data = malloc(sp[j].len);
			if (!c[j].data)
				abort();
			gen_fill(c[j].data, sp[j].len, sp[j].seed, sp[j].kind);
			c[j].len = sp[j].len;
		}
		w->err = ds_store_put(w->s, c, W_BATCH);
		for (int j = 0; j < W_BATCH; j++) {
			w->ids[b * W_BATCH + j] = c[j].id;
			w->stored += c[j].stored;
			free(c[j].data);
		}
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void test_concurrent_writers(void **state)
{
	struct fx *f = *state;
	static struct writer_ctx w[W_THREADS];
	const size_t per = W_BATCHES * W_BATCH;
	pthread_t th[W_THREADS];
	uint64_t *all = malloc(W_THREADS * per * sizeof(*all));
	size_t distinct = 0;
	unsigned stored = 0;
	struct ds_store_stats st;

	assert_non_null(all);
	/* A small pack size, so packs rotate under the writers too. */
	store_new(f, 16 * KiB, MiB);
	memset(w, 0, sizeof(w));
	for (int t = 0; t < W_THREADS; t++) {
		w[t].s = f->s;
		w[t].t = t;
		assert_int_equal(pthread_create(&th[t], NULL, writer_main, &w[t]), 0);
	}
	for (int t = 0; t < W_THREADS; t++)
		pthread_join(th[t], NULL);

	for (int t = 0; t < W_THREADS; t++) {
		assert_int_equal(w[t].err, 0);
		stored += w[t].stored;
		memcpy(all + (size_t)t * per, w[t].seeds, per * sizeof(*all));
		for (size_t i = 0; i < per; i++) {
			struct spec sp = seed_spec(w[t].seeds[i]);
			expect_chunks(f->s, &sp, &w[t].ids[i], 1);
		}
	}
	qsort(all, W_THREADS * per, sizeof(*all), cmp_u64);
	for (size_t i = 0; i < W_THREADS * per; i++)
		if (all[i] != W_ZERO_SEED && (i == 0 || all[i] != all[i - 1]))
			distinct++;
	free(all);

	st = get_stats(f->s);
	assert_int_equal(st.chunks, distinct);
	/* Each distinct chunk was written by exactly one put. */
	assert_int_equal(stored, distinct);
	assert_true(st.packs > 1);
	assert_verify_clean(f->s);
	store_reopen(f);
	assert_int_equal(get_stats(f->s).chunks, distinct);
	assert_verify_clean(f->s);
}

#define R_CHUNKS 320
#define R_READERS 3

struct reader_shared {
	struct ds_store *s;
	ds_chunk_id ids[R_CHUNKS];
	atomic_int committed; /* ids[0..committed) are durable */
	atomic_bool done;
	atomic_int errors;
	atomic_int gets;
	atomic_int verifies;
	int put_err;
};

static struct spec reader_spec(int i)
{
	return (struct spec){.seed = 5000 + (uint64_t)i, .len = 16 * KiB,
			     .kind = i % 2 ? GEN_RANDOM : GEN_TEXT};
}

static void *rw_writer(void *arg)
{
	struct reader_shared *sh = arg;

	for (int i = 0; i < R_CHUNKS && !sh->put_err; i += 8) {
		struct ds_chunk c[8];

		memset(c, 0, sizeof(c));
		for (int j = 0; j < 8; j++) {
			struct spec sp = reader_spec(i + j);
			c[j].data = malloc(sp.len);
			if (!c[j].data)
				abort();
			gen_fill(c[j].data, sp.len, sp.seed, sp.kind);
			c[j].len = sp.len;
		}
		sh->put_err = ds_store_put(sh->s, c, 8);
		for (int j = 0; j < 8; j++) {
			sh->ids[i + j] = c[j].id;
			free(c[j].data);
		}
		atomic_store(&sh->committed, i + 8);
	}
	atomic_store(&sh->done, true);
	return NULL;
}

static void *rw_reader(void *arg)
{
	struct reader_shared *sh = arg;
	uint8_t *got = malloc(16 * KiB), *want = malloc(16 * KiB);
	uint64_t x = (uint64_t)(uintptr_t)&got;
	unsigned iter = 0;

	if (!got || !want)
		abort();
	do {
		int n = atomic_load(&sh->committed);
		struct ds_chunk c[2];
		bool present[2];

		iter++;
		if (n == 0)
			continue;
		memset(c, 0, sizeof(c));
		int i = (int)(splitmix64(&x) % (uint64_t)n);
		struct spec sp = reader_spec(i);
		c[0].id = sh->ids[i];
		c[0].data = got;
		c[1].data = want; /* the zero id */
		if (ds_store_get(sh->s, c, 2) != 0 || c[0].len != sp.len || c[1].len != 16 * KiB) {
			atomic_fetch_add(&sh->errors, 1);
			continue;
		}
		gen_fill(want, sp.len, sp.seed, sp.kind);
		if (memcmp(got, want, sp.len) != 0)
			atomic_fetch_add(&sh->errors, 1);
		if (ds_store_has(sh->s, &sh->ids[i], 1, present) != 0 || !present[0])
			atomic_fetch_add(&sh->errors, 1);
		atomic_fetch_add(&sh->gets, 1);
		if (iter % 64 == 0) {
			struct ds_store_stats st;
			if (ds_store_verify(sh->s, NULL, NULL) != 0 ||
			    ds_store_stats(sh->s, &st) != 0 || st.chunks < (uint64_t)n)
				atomic_fetch_add(&sh->errors, 1);
			atomic_fetch_add(&sh->verifies, 1);
		}
	} while (!atomic_load(&sh->done));
	free(got);
	free(want);
	return NULL;
}

static void test_concurrent_readers(void **state)
{
	struct fx *f = *state;
	static struct reader_shared sh;
	pthread_t wt, rt[R_READERS];

	store_new(f, 16 * KiB, MiB);
	memset(&sh, 0, sizeof(sh));
	sh.s = f->s;
	for (int t = 0; t < R_READERS; t++)
		assert_int_equal(pthread_create(&rt[t], NULL, rw_reader, &sh), 0);
	assert_int_equal(pthread_create(&wt, NULL, rw_writer, &sh), 0);
	pthread_join(wt, NULL);
	for (int t = 0; t < R_READERS; t++)
		pthread_join(rt[t], NULL);
	assert_int_equal(sh.put_err, 0);
	assert_int_equal(atomic_load(&sh.errors), 0);
	assert_true(atomic_load(&sh.gets) > 0);
	for (int i = 0; i < R_CHUNKS; i++) {
		struct spec sp = reader_spec(i);
		expect_chunks(f->s, &sp, &sh.ids[i], 1);
	}
	assert_verify_clean(f->s);
}

/* Readers run while GC sweeps and compacts under them; puts go on between
 * GC runs. Live chunks read right all along. */
struct gc_readers {
	struct ds_store *s;
	const struct spec *sp;
	const ds_chunk_id *ids;
	int n;
	atomic_bool done;
	atomic_int errors;
	atomic_int gets;
};

static void *gc_reader(void *arg)
{
	struct gc_readers *g = arg;
	uint8_t *got = malloc(16 * KiB), *want = malloc(16 * KiB);
	uint64_t x = (uint64_t)(uintptr_t)&got;

	if (!got || !want)
		abort();
	do {
		int i = (int)(splitmix64(&x) % (uint64_t)g->n);
		struct ds_chunk c = {.id = g->ids[i], .data = got};

		if (ds_store_get(g->s, &c, 1) != 0 || c.len != g->sp[i].len) {
			atomic_fetch_add(&g->errors, 1);
			continue;
		}
		gen_fill(want, g->sp[i].len, g->sp[i].seed, g->sp[i].kind);
		if (memcmp(got, want, c.len) != 0)
			atomic_fetch_add(&g->errors, 1);
		atomic_fetch_add(&g->gets, 1);
	} while (!atomic_load(&g->done));
	free(got);
	free(want);
	return NULL;
}

static void test_readers_during_gc(void **state)
{
	struct fx *f = *state;
	enum { NA = 64, NB = 64, ROUNDS = 8 };
	static struct gc_readers g;
	struct spec a[NA], b[NB];
	ds_chunk_id ida[NA], idb[NB];
	pthread_t th[2];

	store_new(f, 16 * KiB, MiB);
	random_specs(a, NA, 100, 16 * KiB);
	put_all(f->s, a, NA, 8, ida);
	memset(&g, 0, sizeof(g));
	g.s = f->s;
	g.sp = a;
	g.ids = ida;
	g.n = NA;
	for (int t = 0; t < 2; t++)
		assert_int_equal(pthread_create(&th[t], NULL, gc_reader, &g), 0);
	for (int round = 0; round < ROUNDS; round++) {
		struct ds_gc_stats gs;

		random_specs(b, NB, 1000000 + (uint64_t)round * NB, 16 * KiB);
		put_all(f->s, b, NB, 8, idb);
		if (ds_store_gc(f->s, ida, NA, &gs) != 0 || gs.chunks_removed != NB)
			atomic_fetch_add(&g.errors, 1);
	}
	atomic_store(&g.done, true);
	for (int t = 0; t < 2; t++)
		pthread_join(th[t], NULL);
	assert_int_equal(atomic_load(&g.errors), 0);
	assert_true(atomic_load(&g.gets) > 0);
	expect_chunks(f->s, a, ida, NA);
	assert_verify_clean(f->s);
}

/* ---- pack rotation ------------------------------------------------------------------------ */

static void test_pack_rotation(void **state)
{
	struct fx *f = *state;
	const uint32_t len = 64 * KiB;
	struct spec sp[96];
	ds_chunk_id ids[96];
	struct ds_store_stats st;
	uint64_t bytes;
	int files;

	store_new(f, len, MiB);
	random_specs(sp, 96, 77, len);
	put_all(f->s, sp, 96, 8, ids); /* 6 MiB */
	st = get_stats(f->s);
	assert_true(st.packs >= 5);
	files = count_pack_files(f, &bytes);
	assert_int_equal(files, (int)st.packs);
	assert_int_equal(bytes, st.pack_bytes);
	/* A pack is closed once past pack_size: at most one batch beyond it. */
	for (uint32_t id = 1; id <= st.packs; id++) {
		char p[PATH_MAX];
		pack_path(f, id, p, sizeof(p));
		assert_true(file_size(p) > 0);
		assert_true(file_size(p) <= (int64_t)(MiB + 8 * (REC_HEADER_SIZE + len)));
	}
	expect_chunks(f->s, sp, ids, 96);
	assert_verify_clean(f->s);
	store_reopen(f);
	expect_chunks(f->s, sp, ids, 96);
	assert_verify_clean(f->s);
}

/* ---- garbage collection ------------------------------------------------------------------- */

static void test_gc(void **state)
{
	struct fx *f = *state;
	enum { NA = 48, NB = 144 };
	struct spec *sp = calloc(NA + NB, sizeof(*sp));
	ds_chunk_id *ids = calloc(NA + NB, sizeof(*ids));
	ds_chunk_id live[NA + 3];
	struct ds_store_stats before, after;
	struct ds_gc_stats gs;
	uint64_t bytes;
	int err;

	assert_non_null(sp);
	assert_non_null(ids);
	store_new(f, 16 * KiB, MiB);
	/* A and B interleaved in every batch, so every pack holds both:
	 * sp[i] is in A when i % 4 == 0. */
	for (int i = 0; i < NA + NB; i++)
		sp[i] = (struct spec){.seed = 10000 + (uint64_t)i, .len = 16 * KiB,
				      .kind = i % 3 ? GEN_RANDOM : GEN_SPARSE};
	put_all(f->s, sp, NA + NB, 12, ids);
	before = get_stats(f->s);
	assert_int_equal(before.chunks, NA + NB);
	assert_true(before.packs >= 2);

	for (int i = 0, k = 0; i < NA + NB; i += 4)
		live[k++] = ids[i];
	/* The zero id, a duplicate and an unknown id in the live set are fine. */
	memset(&live[NA], 0, sizeof(live[NA]));
	live[NA + 1] = live[0];
	fill_random(&live[NA + 2], sizeof(live[NA + 2]), 99);

	assert_int_equal(ds_store_gc(f->s, live, NA + 3, &gs), 0);
	assert_int_equal(gs.chunks_removed, NB);
	assert_true(gs.packs_rewritten >= 1);
	assert_true(gs.bytes_freed > 0 && gs.bytes_freed <= before.pack_bytes);

	after = get_stats(f->s);
	assert_int_equal(after.chunks, NA);
	/* B was three quarters of the data. */
	assert_true(after.pack_bytes < before.pack_bytes / 2);
	assert_int_equal(count_pack_files(f, &bytes), (int)after.packs);
	assert_int_equal(bytes, after.pack_bytes);

	for (int i = 0; i < NA + NB; i++) {
		if (i % 4 == 0) {
			expect_chunks(f->s, &sp[i], &ids[i], 1);
		} else {
			assert_int_equal(get_one(f->s, &ids[i], &err, NULL), -ENOENT);
			assert_int_equal(err, -ENOENT);
			assert_false(has_one(f->s, &ids[i]));
		}
	}
	assert_verify_clean(f->s);

	/* Again with the same live set: nothing to do. */
	assert_int_equal(ds_store_gc(f->s, live, NA, &gs), 0);
	assert_int_equal(gs.chunks_removed, 0);
	assert_int_equal(gs.packs_rewritten, 0);

	store_reopen(f);
	for (int i = 0; i < NA + NB; i += 4)
		expect_chunks(f->s, &sp[i], &ids[i], 1);
	assert_verify_clean(f->s);
	assert_int_equal(count_pack_files(f, NULL), (int)get_stats(f->s).packs);

	/* A removed chunk can be put again. */
	assert_int_equal(put_specs(f->s, &sp[1], 1, &ids[1], NULL), 0);
	expect_chunks(f->s, &sp[1], &ids[1], 1);
	free(sp);
	free(ids);
}

static void test_gc_empty_live_set(void **state)
{
	struct fx *f = *state;
	struct spec sp[64];
	ds_chunk_id ids[64];
	struct ds_store_stats st;
	struct ds_gc_stats gs;
	bool stored;

	store_new(f, 32 * KiB, MiB);
	random_specs(sp, 64, 1, 32 * KiB);
	put_all(f->s, sp, 64, 8, ids);
	assert_int_equal(ds_store_gc(f->s, NULL, 0, &gs), 0);
	assert_int_equal(gs.chunks_removed, 64);
	st = get_stats(f->s);
	assert_int_equal(st.chunks, 0);
	assert_int_equal(st.raw_bytes, 0);
	assert_true(st.pack_bytes <= st.packs * PACK_HEADER_SIZE);
	assert_int_equal(count_pack_files(f, NULL), (int)st.packs);
	for (int i = 0; i < 64; i++) {
		assert_false(has_one(f->s, &ids[i]));
		assert_int_equal(get_one(f->s, &ids[i], NULL, NULL), -ENOENT);
	}
	assert_verify_clean(f->s);

	/* The store goes on working. */
	assert_int_equal(put_specs(f->s, sp, 1, ids, &stored), 0);
	assert_true(stored);
	expect_chunks(f->s, sp, ids, 1);
	store_reopen(f);
	expect_chunks(f->s, sp, ids, 1);
	assert_verify_clean(f->s);
}

static void test_gc_empty_store(void **state)
{
	struct fx *f = *state;
	struct ds_gc_stats gs;
	ds_chunk_id live = {{1}};
	struct spec sp;
	ds_chunk_id id;

	store_new(f, 0, 0);
	memset(&gs, 0xff, sizeof(gs));
	assert_int_equal(ds_store_gc(f->s, NULL, 0, &gs), 0);
	assert_int_equal(gs.chunks_removed, 0);
	assert_int_equal(gs.packs_rewritten, 0);
	assert_int_equal(gs.bytes_freed, 0);
	assert_int_equal(ds_store_gc(f->s, &live, 1, NULL), 0);
	random_specs(&sp, 1, 1, 1000);
	assert_int_equal(put_specs(f->s, &sp, 1, &id, NULL), 0);
	expect_chunks(f->s, &sp, &id, 1);
	assert_verify_clean(f->s);
}

/* A damaged live record is not copied by GC (a copy would hide it or drop
 * it): it stays where verify reports it, and GC still succeeds. */
static void test_gc_keeps_damaged_record(void **state)
{
	struct fx *f = *state;
	struct spec sp[8];
	ds_chunk_id ids[8];
	struct bad_list bad = {0};
	char pack[PATH_MAX];
	struct ds_gc_stats gs;

	store_new(f, 16 * KiB, 0);
	random_specs(sp, 8, 40, 16 * KiB);
	put_all(f->s, sp, 8, 8, ids);
	pack_path(f, 1, pack, sizeof(pack));
	/* Damage chunk 2's payload; chunks 4..7 become garbage. */
	flip_byte(pack, PACK_HEADER_SIZE + 2 * (REC_HEADER_SIZE + 16 * KiB) + REC_HEADER_SIZE + 5);
	assert_int_equal(ds_store_gc(f->s, ids, 4, &gs), 0);
	assert_int_equal(gs.chunks_removed, 4);
	assert_int_equal(ds_store_verify(f->s, bad_collect, &bad), 1);
	assert_memory_equal(&bad.ids[0], &ids[2], sizeof(ids[2]));
	expect_chunks(f->s, sp, ids, 2);
	expect_chunks(f->s, &sp[3], &ids[3], 1);
	store_reopen(f);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 1);
	expect_chunks(f->s, sp, ids, 2);
}

/*
 * Layout for the next two tests (16 KiB random chunks, 1 MiB packs):
 * pack 1 holds 64 records, pack 2 (the current one) a single record.
 * live = 51 of pack 1's chunks: pack 1 is 20% dead and compacted, pack 2
 * is all dead and removed.
 */
#define L_N 65
static void gc_layout(struct fx *f, struct spec *sp, ds_chunk_id *ids, ds_chunk_id *live,
		      size_t *nlive)
{
	struct ds_store_stats st;

	store_new(f, 16 * KiB, MiB);
	random_specs(sp, L_N, 20000, 16 * KiB);
	put_all(f->s, sp, 64, 8, ids);
	put_all(f->s, sp + 64, 1, 1, ids + 64);
	st = get_stats(f->s);
	assert_int_equal(st.packs, 2);
	*nlive = 0;
	for (int i = 0; i < 64; i++)
		if (i % 5 != 0)
			live[(*nlive)++] = ids[i];
	assert_int_equal(*nlive, 51);
}

static void test_gc_bytes_freed(void **state)
{
	struct fx *f = *state;
	struct spec sp[L_N];
	ds_chunk_id ids[L_N], live[L_N];
	struct ds_store_stats before, after;
	struct ds_gc_stats gs;
	uint64_t shrunk;
	size_t nlive;

	gc_layout(f, sp, ids, live, &nlive);
	before = get_stats(f->s);
	assert_int_equal(ds_store_gc(f->s, live, nlive, &gs), 0);
	after = get_stats(f->s);
	assert_int_equal(gs.chunks_removed, 14);
	assert_int_equal(after.chunks, 51);
	for (int i = 0; i < 64; i++)
		if (i % 5 != 0)
			expect_chunks(f->s, &sp[i], &ids[i], 1);
	assert_verify_clean(f->s);
	/*
	 * bytes_freed is what went back to the file system: at least what the
	 * packs shrank by, at most that plus the headers of packs GC started.
	 */
	shrunk = before.pack_bytes - after.pack_bytes;
	if (gs.bytes_freed < shrunk || gs.bytes_freed > shrunk + after.packs * PACK_HEADER_SIZE)
		fail_msg("bytes_freed %llu, but packs went from %llu to %llu bytes",
			 (unsigned long long)gs.bytes_freed, (unsigned long long)before.pack_bytes,
			 (unsigned long long)after.pack_bytes);
}

/* Bytes this process has handed to write(2) and friends so far. */
static uint64_t proc_wchar(void)
{
	FILE *fp = fopen("/proc/self/io", "r");
	char line[128];
	unsigned long long v = 0;

	if (!fp)
		return UINT64_MAX;
	while (fgets(line, sizeof(line), fp))
		if (sscanf(line, "wchar: %llu", &v) == 1)
			break;
	fclose(fp);
	return v;
}

static void test_gc_copies_live_once(void **state)
{
	struct fx *f = *state;
	struct spec sp[L_N];
	ds_chunk_id ids[L_N], live[L_N];
	struct ds_gc_stats gs;
	size_t nlive;
	uint64_t w0, w1, live_bytes = 51 * (REC_HEADER_SIZE + 16 * KiB);

	if (proc_wchar() == UINT64_MAX)
		skip();
	gc_layout(f, sp, ids, live, &nlive);
	w0 = proc_wchar();
	assert_int_equal(ds_store_gc(f->s, live, nlive, &gs), 0);
	w1 = proc_wchar();
	/* Index updates cost some KiB; a second copy of the live data would
	 * cost another 800. */
	if (w1 - w0 > live_bytes + live_bytes / 4)
		fail_msg("gc wrote %llu bytes to keep %llu live bytes",
			 (unsigned long long)(w1 - w0), (unsigned long long)live_bytes);
	for (int i = 0; i < 64; i++)
		if (i % 5 != 0)
			expect_chunks(f->s, &sp[i], &ids[i], 1);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_create_open_close),
		T(test_create_twice),
		T(test_open_missing),
		T(test_open_garbage),
		T(test_open_bad_meta),
		T(test_bad_options),
		T(test_round_trip_all_sizes),
		T(test_incompressible_stored_raw),
		T(test_zero_chunks),
		T(test_zero_chunks_fresh_store),
		T(test_dedup),
		T(test_ids_keyed_per_store),
		T(test_has),
		T(test_get_added_before_flush),
		T(test_get_races_flush),
		T(test_get_unknown),
		T(test_put_invalid),
		T(test_damaged_record),
		T(test_index_points_elsewhere),
		T(test_index_rows_damaged),
		T(test_truncated_pack),
		T(test_tail_garbage_cut),
		T(test_stray_pack_removed),
		T(test_reopen_appends),
		T(test_busy),
		T(test_missing_pack),
		T(test_put_write_error),
		T(test_gc_write_error),
		T(test_concurrent_writers),
		T(test_concurrent_readers),
		T(test_readers_during_gc),
		T(test_pack_rotation),
		T(test_gc),
		T(test_gc_empty_live_set),
		T(test_gc_empty_store),
		T(test_gc_keeps_damaged_record),
		T(test_gc_bytes_freed),
		T(test_gc_copies_live_once),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
