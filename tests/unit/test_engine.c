/*
 * Tests of the engine (engine/snapshot/engine.c) on image files in a
 * scratch state folder: registering disks, creating snapshots and what
 * they record, deduplication between snapshots of one disk, the refusals
 * (-EEXIST, -ENOENT, -ENOLCK, -EALREADY, -EBUSY, -EDQUOT), deletion and
 * GC, export, disks made from snapshots, reset, and copies that end
 * badly: stopped by a close, by a crash, or by a writer breaking the
 * lease.
 *
 * A copy that must still be running when the test acts reads a 256 GiB
 * sparse image: 4 M chunks whose holes cost a seek each, so it runs for
 * seconds but the tests stop it at once and store nothing.
 *
 * Each test gets a fresh folder under /tmp with the engine open on
 * tmp/state (setup); teardown closes it and removes the folder.
 */
#include "testutil.h"

#include <sqlite3.h>

#include <dsnap/engine.h>
#include <dsnap/snapshot.h>
#include <dsnap/store.h>

#define KiB 1024u
#define MiB (1024u * 1024u)
#define CS (64u * KiB) /* the default chunk size */
#define HUGE_IMAGE (256ull << 30)

struct fx {
	char tmp[PATH_MAX];
	char state[PATH_MAX];
	char img[PATH_MAX]; /* tmp/disk.img */
	char shm[PATH_MAX]; /* a scratch folder in memory, when a test made one */
	struct ds_engine *e;
	pid_t child;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f || tmpdir_make(f->tmp, sizeof(f->tmp)) < 0) {
		free(f);
		return -1;
	}
	path_cat(f->state, sizeof(f->state), f->tmp, "state");
	path_cat(f->img, sizeof(f->img), f->tmp, "disk.img");
	test_log_capture();
	*state = f;
	return ds_engine_open(f->state, NULL, &f->e) < 0 ? -1 : 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	if (f->child > 0) {
		kill(f->child, SIGKILL);
		waitpid(f->child, NULL, 0);
	}
	ds_engine_close(f->e);
	rm_rf(f->tmp);
	rm_rf(f->shm);
	free(f);
	return 0;
}

/* ---- helpers ------------------------------------------------------------------------ */

static void engine_reopen(struct fx *f)
{
	ds_engine_close(f->e);
	f->e = NULL;
	assert_int_equal(ds_engine_open(f->state, NULL, &f->e), 0);
}

/*
 * An image of nchunks chunks (the last one cut short by tail bytes when
 * tail > 0): chunk i holds random data when pattern[i % len] is 'D', text
 * for 'T', written zeros for '0', and is a hole for '.'.
 */
static void make_image(const char *path, uint64_t nchunks, uint32_t tail, const char *pattern,
		       uint64_t seed)
{
	uint64_t size = nchunks * CS - (tail ? CS - tail : 0);
	uint8_t *buf = malloc(CS);
	size_t plen = strlen(pattern);

	assert_non_null(buf);
	unlink(path);
	assert_int_equal(file_truncate(path, size), 0);
	for (uint64_t i = 0; i < nchunks; i++) {
		char p = pattern[i % plen];
		size_t len = i + 1 == nchunks && tail ? tail : CS;
		if (p == '.')
			continue;
		gen_fill(buf, len, seed * 100000 + i,
			 p == 'D' ? GEN_RANDOM : p == 'T' ? GEN_TEXT : GEN_ZERO);
		assert_int_equal(write_at(path, i * CS, buf, len), 0);
	}
	free(buf);
}

static void reg(struct fx *f, const char *path, char id[DS_ID_SIZE])
{
	assert_int_equal(ds_disk_register(f->e, path, NULL, id), 0);
}

/* Creates a snapshot and waits for it; returns its info. */
static void snap(struct fx *f, const char *disk, const char *name, char id[DS_ID_SIZE],
		 struct ds_snapshot_info *info)
{
	struct ds_snapshot_params p = {.name = name};

	assert_int_equal(ds_snapshot_create(f->e, disk, &p, id), 0);
	assert_int_equal(ds_snapshot_wait(f->e, id), 0);
	if (info)
		assert_int_equal(ds_snapshot_get(f->e, id, info), 0);
}

static struct ds_store_stats stats(struct fx *f)
{
	struct ds_store_stats st;

	assert_int_equal(ds_store_stats(ds_engine_store(f->e), &st), 0);
	return st;
}

/* Every chunk that is all zero in src is a hole in dst, and no other. */
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

static void copy_file(const char *from, const char *to)
{
	size_t len = 0;
	uint8_t *b = file_read_all(from, &len);

	assert_non_null(b);
	unlink(to);
	assert_int_equal(write_at(to, 0, b, len), 0);
	free(b);
}

struct count {
	int n;
	char last[DS_ID_SIZE];
};

static int count_snap(const struct ds_snapshot_info *s, void *opaque)
{
	struct count *c = opaque;

	c->n++;
	snprintf(c->last, sizeof(c->last), "%s", s->id);
	return 0;
}

static int count_disk(const struct ds_disk_info *d, void *opaque)
{
	struct count *c = opaque;

	c->n++;
	snprintf(c->last, sizeof(c->last), "%s", d->id);
	return 0;
}

static int snapshots_of(struct fx *f, const char *disk)
{
	struct count c = {0};

	assert_int_equal(ds_snapshot_list(f->e, disk, count_snap, &c), 0);
	return c.n;
}

/* A disk whose copy runs for seconds: a sparse image of 256 GiB. */
static void reg_huge(struct fx *f, char id[DS_ID_SIZE])
{
	unlink(f->img);
	assert_int_equal(file_truncate(f->img, HUGE_IMAGE), 0);
	assert_int_equal(write_at(f->img, 0, "boot", 4), 0);
	reg(f, f->img, id);
}

/* ---- open ------------------------------------------------------------------------------ */

static void test_open_twice(void **state)
{
	struct fx *f = *state;
	struct ds_engine *other = (struct ds_engine *)0x1;
	char p[PATH_MAX];

	assert_int_equal(ds_engine_open(f->state, NULL, &other), -EBUSY);
	assert_ptr_equal(other, (struct ds_engine *)0x1);
	assert_true(test_log_has("in use"));
	/* The layout of a state folder. */
	path_cat(p, sizeof(p), f->state, "catalog.db");
	assert_true(file_exists(p));
	path_cat(p, sizeof(p), f->state, "store");
	assert_true(file_exists(p));
	path_cat(p, sizeof(p), f->state, "disks");
	assert_true(file_exists(p));
	ds_engine_close(f->e);
	f->e = NULL;
	assert_int_equal(ds_engine_open(f->state, NULL, &f->e), 0);
	ds_engine_close(NULL);
}

/* ---- disks ---------------------------------------------------------------------------- */

static void test_register(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], again[DS_ID_SIZE], p[PATH_MAX];
	struct ds_disk_info info;
	struct count c = {0};
	char longname[DS_NAME_MAX + 8];

	make_image(f->img, 3, 100, "D", 1);
	reg(f, f->img, id);
	assert_int_equal(strlen(id), 22);
	assert_memory_equal(id, "d-", 2);
	memset(again, 0, sizeof(again));
	assert_int_equal(ds_disk_register(f->e, f->img, "other name", again), -EEXIST);
	assert_string_equal(again, id);

	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_string_equal(info.id, id);
	assert_string_equal(info.name, "disk.img"); /* the file name by default */
	assert_int_equal(info.kind, DS_DISK_FILE);
	assert_int_equal(info.size, 2 * CS + 100);
	assert_string_equal(info.status, "Available");
	assert_true(info.present);
	assert_false(info.owned);
	assert_false(info.locked);
	assert_true(info.created > 0);
	assert_non_null(realpath(f->img, p));
	assert_string_equal(info.path, p);

	assert_int_equal(ds_disk_list(f->e, count_disk, &c), 0);
	assert_int_equal(c.n, 1);
	assert_string_equal(c.last, id);

	/* Not disks, or no such thing. */
	path_cat(p, sizeof(p), f->tmp, "missing.img");
	assert_int_equal(ds_disk_register(f->e, p, NULL, again), -ENOENT);
	assert_int_equal(ds_disk_register(f->e, "/dev/null", NULL, again), -ENOTSUP);
	assert_int_equal(ds_disk_register(f->e, f->tmp, NULL, again), -ENOTSUP);
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	path_cat(p, sizeof(p), f->tmp, "b.img");
	make_image(p, 1, 0, "D", 2);
	assert_int_equal(ds_disk_register(f->e, p, longname, again), -EINVAL);
	assert_int_equal(ds_disk_register(f->e, p, "named", again), 0);
	assert_int_equal(ds_disk_get(f->e, again, &info), 0);
	assert_string_equal(info.name, "named");

	/* Registered disks outlive the engine. */
	engine_reopen(f);
	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_int_equal(ds_disk_register(f->e, f->img, NULL, again), -EEXIST);
	assert_string_equal(again, id);
}

static void test_disk_gone(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {0};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE];
	struct ds_disk_info info;

	make_image(f->img, 2, 0, "D", 3);
	reg(f, f->img, id);
	assert_int_equal(unlink(f->img), 0);
	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_false(info.present);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), -ENODEV);
	assert_int_equal(snapshots_of(f, id), 0);
	/* Forgetting it works. */
	assert_int_equal(ds_disk_delete(f->e, id), 0);
	assert_int_equal(ds_disk_get(f->e, id, &info), -ENOENT);
}

static void test_disk_create(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], disks[PATH_MAX];
	struct ds_snapshot_info s;
	struct ds_disk_info info;

	assert_int_equal(ds_disk_create(f->e, 0, "zero", id), -EINVAL);
	assert_int_equal(ds_disk_create(f->e, 5 * MiB + 3, "fresh", id), 0);
	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_true(info.owned);
	assert_true(info.present);
	assert_int_equal(info.size, 5 * MiB + 3);
	assert_string_equal(info.name, "fresh");
	path_cat(disks, sizeof(disks), f->state, "disks/");
	assert_memory_equal(info.path, disks, strlen(disks));
	assert_true(path_range_is_hole(info.path, 0, 5 * MiB + 3));

	/* An empty disk: nothing read, nothing stored. */
	snap(f, id, NULL, sid, &s);
	assert_int_equal(s.bytes_read, 0);
	assert_int_equal(s.stored_bytes, 0);
	assert_int_equal(s.disk_size, 5 * MiB + 3);

	/* Deleting a disk dsnap made deletes its image; its snapshots stay. */
	assert_int_equal(ds_disk_delete(f->e, id), 0);
	assert_false(file_exists(info.path));
	assert_int_equal(ds_disk_delete(f->e, id), -ENOENT);
	assert_int_equal(ds_snapshot_get(f->e, sid, &s), 0);
}

/* ---- snapshots ------------------------------------------------------------------------- */

static void test_snapshot_accomplished(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {.name = "first", .description = "before the upgrade",
				       .retention_days = 7};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE];
	struct ds_snapshot_info s;
	struct ds_manifest *m = NULL;
	int64_t t0, t1;

	/* 20 chunks + 1000 bytes: data, text, zeros, holes. */
	make_image(f->img, 21, 1000, "DT0..", 4);
	reg(f, f->img, id);
	t0 = (int64_t)time(NULL);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), 0);
	assert_int_equal(strlen(sid), 22);
	assert_memory_equal(sid, "s-", 2);
	assert_int_equal(ds_snapshot_wait(f->e, sid), 0);
	t1 = (int64_t)time(NULL);
	assert_int_equal(ds_snapshot_get(f->e, sid, &s), 0);
	assert_string_equal(s.id, sid);
	assert_string_equal(s.disk_id, id);
	assert_string_equal(s.name, "first");
	assert_string_equal(s.description, "before the upgrade");
	assert_string_equal(s.status, "accomplished");
	assert_int_equal(s.progress, 100);
	assert_int_equal(s.disk_size, 20 * CS + 1000);
	assert_true(s.created >= t0 && s.created <= t1);
	assert_true(s.modified >= s.created && s.modified <= t1);
	assert_int_equal(s.retention_days, 7);
	assert_false(s.automatic);
	assert_true(s.has_manifest);
	assert_string_equal(s.error, "");
	/* Chunks 0-2, 5-7, 10-12, 15-17 and 20 (1000 bytes) were read: the
	 * zeros too, the holes not. */
	assert_int_equal(s.bytes_read, 12 * CS + 1000);
	assert_true(s.stored_bytes > 0);
	assert_int_equal(ds_snapshot_verify(f->e, sid), 0);
	assert_int_equal(snapshots_of(f, id), 1);
	assert_int_equal(snapshots_of(f, NULL), 1);
	assert_int_equal(snapshots_of(f, "d-other"), 0);

	assert_int_equal(ds_manifest_load(ds_engine_store(f->e), &s.manifest, &m), 0);
	assert_int_equal(m->disk_size, 20 * CS + 1000);
	assert_int_equal(m->count, 21);
	for (int i = 0; i < 21; i++)
		assert_int_equal(ds_chunk_id_is_zero(&m->ids[i]), i % 5 >= 2);
	ds_manifest_free(m);

	/* The record outlives the engine. */
	engine_reopen(f);
	{
		struct ds_snapshot_info again;
		assert_int_equal(ds_snapshot_get(f->e, sid, &again), 0);
		assert_string_equal(again.status, "accomplished");
		assert_memory_equal(again.manifest.b, s.manifest.b, DS_CHUNK_ID_SIZE);
		assert_int_equal(again.bytes_read, s.bytes_read);
	}
}

static void test_snapshot_params_invalid(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], name[DS_NAME_MAX + 8], desc[DS_DESCRIPTION_MAX + 8];
	struct ds_snapshot_params p = {0};

	make_image(f->img, 1, 0, "D", 5);
	reg(f, f->img, id);
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	memset(desc, 'd', sizeof(desc) - 1);
	desc[sizeof(desc) - 1] = '\0';
	p.name = name;
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), -EINVAL);
	p.name = NULL;
	p.description = desc;
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), -EINVAL);
	p.description = NULL;
	p.retention_days = -1;
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), -EINVAL);
	assert_int_equal(snapshots_of(f, NULL), 0);
}

/* A second snapshot of an unchanged disk stores nothing; one changed
 * chunk costs that chunk and the manifest's path to it. */
static void test_second_snapshot_dedup(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], s1[DS_ID_SIZE], s2[DS_ID_SIZE], s3[DS_ID_SIZE];
	struct ds_snapshot_info a, b, c;
	struct ds_store_stats st1, st2, st3;
	uint8_t chunk[CS];

	make_image(f->img, 64, 0, "DTD.", 6);
	reg(f, f->img, id);
	snap(f, id, "a", s1, &a);
	st1 = stats(f);
	snap(f, id, "b", s2, &b);
	st2 = stats(f);
	assert_memory_equal(a.manifest.b, b.manifest.b, DS_CHUNK_ID_SIZE);
	assert_int_equal(b.stored_bytes, 0);
	assert_int_equal(b.bytes_read, a.bytes_read);
	assert_int_equal(st2.chunks, st1.chunks);
	assert_int_equal(st2.stored_bytes, st1.stored_bytes);

	fill_random(chunk, sizeof(chunk), 77);
	assert_int_equal(write_at(f->img, 10 * CS, chunk, sizeof(chunk)), 0);
	snap(f, id, "c", s3, &c);
	st3 = stats(f);
	assert_memory_not_equal(a.manifest.b, c.manifest.b, DS_CHUNK_ID_SIZE);
	/* The new chunk, the manifest's piece holding its id, and the root. */
	assert_int_equal(st3.chunks - st2.chunks, 3);
	assert_true(c.stored_bytes >= CS);
	assert_true(c.stored_bytes < CS + CS / 4);
	assert_int_equal(ds_snapshot_verify(f->e, s1), 0);
	assert_int_equal(ds_snapshot_verify(f->e, s3), 0);
}

static void test_unknown_ids(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {0};
	struct ds_snapshot_info s;
	struct ds_disk_info d;
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], out[PATH_MAX];
	const char *nd = "d-aaaaaaaaaaaaaaaaaaaa", *ns = "s-aaaaaaaaaaaaaaaaaaaa";

	make_image(f->img, 2, 0, "D", 7);
	reg(f, f->img, id);
	snap(f, id, NULL, sid, NULL);
	path_cat(out, sizeof(out), f->tmp, "out.img");

	assert_int_equal(ds_snapshot_create(f->e, nd, &p, sid), -ENOENT);
	assert_int_equal(ds_disk_get(f->e, nd, &d), -ENOENT);
	assert_int_equal(ds_disk_delete(f->e, nd), -ENOENT);
	assert_int_equal(ds_disk_set_locked(f->e, nd, true), -ENOENT);
	assert_int_equal(ds_snapshot_get(f->e, ns, &s), -ENOENT);
	assert_int_equal(ds_snapshot_wait(f->e, ns), -ENOENT);
	assert_int_equal(ds_snapshot_delete(f->e, ns), -ENOENT);
	assert_int_equal(ds_snapshot_verify(f->e, ns), -ENOENT);
	assert_int_equal(ds_snapshot_export(f->e, ns, out), -ENOENT);
	assert_false(file_exists(out));
	assert_int_equal(ds_disk_create_from_snapshot(f->e, ns, NULL, id), -ENOENT);
	assert_int_equal(ds_disk_reset(f->e, id, ns), -ENOENT);
	assert_int_equal(ds_disk_reset(f->e, nd, sid), -ENOENT);
	assert_int_equal(snapshots_of(f, nd), 0);
}

static void test_locked(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {0};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], sid2[DS_ID_SIZE];
	struct ds_disk_info info;

	make_image(f->img, 2, 0, "D", 8);
	reg(f, f->img, id);
	snap(f, id, NULL, sid, NULL);
	assert_int_equal(ds_disk_set_locked(f->e, id, true), 0);
	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_true(info.locked);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid2), -ENOLCK);
	assert_int_equal(ds_disk_reset(f->e, id, sid), -ENOLCK);
	assert_int_equal(ds_disk_delete(f->e, id), -ENOLCK);
	assert_int_equal(snapshots_of(f, id), 1);
	/* The lock outlives the engine. */
	engine_reopen(f);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid2), -ENOLCK);
	assert_int_equal(ds_disk_set_locked(f->e, id, false), 0);
	snap(f, id, NULL, sid2, NULL);
	assert_int_equal(snapshots_of(f, id), 2);
}

static void test_busy_while_open_for_writing(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {0};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE];
	int w;

	make_image(f->img, 4, 0, "D", 9);
	reg(f, f->img, id);
	w = open(f->img, O_RDWR | O_CLOEXEC);
	assert_true(w >= 0);
	if (!fs_keeps_holes(f->tmp)) {
		close(w);
		skip();
	}
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), -EBUSY);
	close(w);
	/* Nothing was recorded. */
	assert_int_equal(snapshots_of(f, NULL), 0);
	snap(f, id, NULL, sid, NULL);
}

/*
 * 256 manual snapshots per disk; automatic ones do not count. Each
 * snapshot of the 16 KiB image costs a copier start, a few fsyncs and
 * some catalog rows. The state folder goes to tmpfs when there is one, so
 * the fsyncs do not wait for a busy disk: the 259 snapshots took 1.3 to
 * 11 s (ASan) on this machine's ext4 while other builds ran, 1.2 to 4 s
 * on tmpfs. The test prints its time.
 */
static void test_quota(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params manual = {0}, automatic = {.automatic = true};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], first[DS_ID_SIZE], img[PATH_MAX];
	const char *base = f->tmp;
	double t0 = now_sec();

	snprintf(f->shm, sizeof(f->shm), "/dev/shm/dsnap-test-XXXXXX");
	if (mkdtemp(f->shm)) {
		base = f->shm;
		ds_engine_close(f->e);
		f->e = NULL;
		path_cat(f->state, sizeof(f->state), f->shm, "state");
		assert_int_equal(ds_engine_open(f->state, NULL, &f->e), 0);
	} else {
		f->shm[0] = '\0';
	}
	path_cat(img, sizeof(img), base, "disk.img");
	make_image(img, 1, 16 * KiB, "D", 10);
	reg(f, img, id);
	for (int i = 0; i < DS_MAX_MANUAL_SNAPSHOTS; i++) {
		assert_int_equal(ds_snapshot_create(f->e, id, &manual, sid), 0);
		assert_int_equal(ds_snapshot_wait(f->e, sid), 0);
		if (i == 0)
			snprintf(first, sizeof(first), "%s", sid);
	}
	assert_int_equal(ds_snapshot_create(f->e, id, &manual, sid), -EDQUOT);
	assert_int_equal(ds_snapshot_create(f->e, id, &automatic, sid), 0);
	assert_int_equal(ds_snapshot_wait(f->e, sid), 0);
	assert_int_equal(ds_snapshot_create(f->e, id, &manual, sid), -EDQUOT);
	assert_int_equal(snapshots_of(f, id), DS_MAX_MANUAL_SNAPSHOTS + 1);
	/* One released: room for one more. */
	assert_int_equal(ds_snapshot_delete(f->e, first), 0);
	assert_int_equal(ds_snapshot_create(f->e, id, &manual, sid), 0);
	assert_int_equal(ds_snapshot_wait(f->e, sid), 0);
	assert_int_equal(ds_snapshot_create(f->e, id, &manual, sid), -EDQUOT);
	/* The quota is per disk. */
	{
		char other[PATH_MAX], id2[DS_ID_SIZE];
		path_cat(other, sizeof(other), base, "other.img");
		make_image(other, 1, 16 * KiB, "D", 11);
		reg(f, other, id2);
		snap(f, id2, NULL, sid, NULL);
	}
	print_message("quota: %d snapshots of a 16 KiB image on %s in %.2f s\n",
		      DS_MAX_MANUAL_SNAPSHOTS + 3, base, now_sec() - t0);
}

static void test_delete_and_gc(void **state)
{
	struct fx *f = *state;
	char a[PATH_MAX], b[PATH_MAX], out[PATH_MAX];
	char da[DS_ID_SIZE], db[DS_ID_SIZE], sa[DS_ID_SIZE], sb[DS_ID_SIZE];
	struct ds_store_stats st0, st1, st2;
	struct ds_gc_stats gs;
	struct ds_snapshot_info s;

	path_cat(a, sizeof(a), f->tmp, "a.img");
	path_cat(b, sizeof(b), f->tmp, "b.img");
	path_cat(out, sizeof(out), f->tmp, "out.img");
	make_image(a, 16, 0, "D", 12);
	make_image(b, 16, 0, "T.", 13);
	reg(f, a, da);
	reg(f, b, db);
	snap(f, db, NULL, sb, NULL);
	st0 = stats(f);
	snap(f, da, NULL, sa, NULL);
	st1 = stats(f);
	assert_int_equal(st1.chunks - st0.chunks, 16 + 2); /* data, piece, root */

	/* Nothing to collect while both are kept. */
	assert_int_equal(ds_engine_gc(f->e, &gs), 0);
	assert_int_equal(gs.chunks_removed, 0);

	assert_int_equal(ds_snapshot_delete(f->e, sa), 0);
	assert_int_equal(ds_snapshot_get(f->e, sa, &s), -ENOENT);
	assert_int_equal(ds_snapshot_delete(f->e, sa), -ENOENT);
	/* Deleting releases; GC frees. */
	assert_int_equal(stats(f).chunks, st1.chunks);
	assert_int_equal(ds_engine_gc(f->e, &gs), 0);
	assert_int_equal(gs.chunks_removed, 16 + 2);
	st2 = stats(f);
	assert_int_equal(st2.chunks, st0.chunks);
	assert_int_equal(st2.stored_bytes, st0.stored_bytes);

	/* What is left is whole. */
	assert_int_equal(ds_snapshot_verify(f->e, sb), 0);
	assert_int_equal(ds_snapshot_export(f->e, sb, out), 0);
	assert_files_equal(b, out);
	assert_int_equal(ds_store_verify(ds_engine_store(f->e), NULL, NULL), 0);

	/* Everything released: the store empties. */
	assert_int_equal(ds_snapshot_delete(f->e, sb), 0);
	assert_int_equal(ds_engine_gc(f->e, NULL), 0);
	assert_int_equal(stats(f).chunks, 0);
}

static void test_export_and_create_from(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], nid[DS_ID_SIZE], out[PATH_MAX], orig[PATH_MAX];
	struct ds_disk_info info;

	if (!fs_keeps_holes(f->tmp))
		skip();
	path_cat(out, sizeof(out), f->tmp, "out.img");
	path_cat(orig, sizeof(orig), f->tmp, "orig.img");
	/* 3 MiB + 1 byte: data, text, written zeros, holes. */
	make_image(f->img, 49, 1, "DT0.D..", 14);
	copy_file(f->img, orig);
	reg(f, f->img, id);
	snap(f, id, NULL, sid, NULL);
	/* The disk changes afterwards; the snapshot does not. */
	assert_int_equal(write_at(f->img, 0, "changed", 7), 0);

	assert_int_equal(ds_snapshot_export(f->e, sid, out), 0);
	assert_files_equal(orig, out);
	assert_sparse_like(orig, out);
	/* An output that exists is left alone. */
	assert_int_equal(ds_snapshot_export(f->e, sid, out), -EEXIST);
	assert_files_equal(orig, out);

	assert_int_equal(ds_disk_create_from_snapshot(f->e, sid, "copy", nid), 0);
	assert_string_not_equal(nid, id);
	assert_int_equal(ds_disk_get(f->e, nid, &info), 0);
	assert_true(info.owned);
	assert_true(info.present);
	assert_string_equal(info.name, "copy");
	assert_int_equal(info.size, 48 * CS + 1);
	assert_files_equal(orig, info.path);
	assert_sparse_like(orig, info.path);
	/* It is a disk like any other. */
	{
		char s2[DS_ID_SIZE];
		struct ds_snapshot_info s;
		snap(f, nid, NULL, s2, &s);
		assert_int_equal(s.stored_bytes, 0);
	}
	assert_int_equal(ds_disk_delete(f->e, nid), 0);
	assert_false(file_exists(info.path));
}

static void test_reset(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], orig[PATH_MAX];
	uint8_t junk[3 * CS];
	struct ds_disk_info info;
	int other;

	if (!fs_keeps_holes(f->tmp))
		skip();
	path_cat(orig, sizeof(orig), f->tmp, "orig.img");
	make_image(f->img, 40, 5000, "D.T0.", 15);
	copy_file(f->img, orig);
	reg(f, f->img, id);
	snap(f, id, NULL, sid, NULL);

	/* Change it: data over data and over holes, and make it longer. */
	fill_random(junk, sizeof(junk), 16);
	assert_int_equal(write_at(f->img, 0, junk, sizeof(junk)), 0);
	assert_int_equal(write_at(f->img, 20 * CS + 10, junk, sizeof(junk)), 0);
	assert_int_equal(write_at(f->img, 50 * CS, junk, sizeof(junk)), 0);

	/* Someone has the image open: no reset. */
	other = open(f->img, O_RDONLY | O_CLOEXEC);
	assert_true(other >= 0);
	assert_int_equal(ds_disk_reset(f->e, id, sid), -EBUSY);
	close(other);
	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_string_equal(info.status, "Available");

	assert_int_equal(ds_disk_reset(f->e, id, sid), 0);
	assert_files_equal(orig, f->img);
	assert_sparse_like(orig, f->img);
	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_string_equal(info.status, "Available");
	assert_int_equal(info.size, 39 * CS + 5000);
	/* And a snapshot of the reset disk is the same snapshot. */
	{
		char s2[DS_ID_SIZE];
		struct ds_snapshot_info a, b;
		assert_int_equal(ds_snapshot_get(f->e, sid, &a), 0);
		snap(f, id, NULL, s2, &b);
		assert_memory_equal(a.manifest.b, b.manifest.b, DS_CHUNK_ID_SIZE);
	}
}

/* A crash in the middle of a reset leaves the disk `ReIniting` in the
 * catalog and a partial image. The next process must let the
 * administrator reset it again. */
static void test_reset_after_crash(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], cat[PATH_MAX], sql[128], orig[PATH_MAX];
	struct ds_disk_info info;
	sqlite3 *db;

	path_cat(orig, sizeof(orig), f->tmp, "orig.img");
	make_image(f->img, 8, 0, "DT", 17);
	copy_file(f->img, orig);
	reg(f, f->img, id);
	snap(f, id, NULL, sid, NULL);
	ds_engine_close(f->e);
	f->e = NULL;
	/* What ds_disk_reset leaves when the process dies during the copy. */
	path_cat(cat, sizeof(cat), f->state, "catalog.db");
	assert_int_equal(sqlite3_open(cat, &db), SQLITE_OK);
	snprintf(sql, sizeof(sql), "UPDATE disks SET status = 'ReIniting' WHERE id = '%s'", id);
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(write_at(f->img, 0, "partial", 7), 0);

	assert_int_equal(ds_engine_open(f->state, NULL, &f->e), 0);
	assert_int_equal(ds_disk_reset(f->e, id, sid), 0);
	assert_files_equal(orig, f->img);
	assert_int_equal(ds_disk_get(f->e, id, &info), 0);
	assert_string_equal(info.status, "Available");
}

/* ---- copies that do not finish ----------------------------------------------------------- */

/* While a copy runs: one at a time per disk, and neither it nor its disk
 * can be deleted. Closing the engine stops it: `failed`, "stopped". */
static void test_running_copy_stopped_by_close(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {.name = "long"};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE], sid2[DS_ID_SIZE], out[PATH_MAX];
	struct ds_snapshot_info s;
	double t0;

	path_cat(out, sizeof(out), f->tmp, "out.img");
	reg_huge(f, id);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), 0);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid2), -EALREADY);
	assert_int_equal(ds_snapshot_get(f->e, sid, &s), 0);
	assert_string_equal(s.status, "progressing");
	assert_true(s.progress < 100);
	assert_int_equal(s.disk_size, HUGE_IMAGE);
	assert_false(s.has_manifest);
	assert_int_equal(ds_snapshot_delete(f->e, sid), -EBUSY);
	assert_int_equal(ds_disk_delete(f->e, id), -EBUSY);
	assert_int_equal(ds_snapshot_verify(f->e, sid), -EBUSY);
	/* Instant access: exported while it is copied, holes skipped. */
	assert_int_equal(ds_snapshot_export(f->e, sid, out), 0);
	{
		char head[5] = {0};
		struct stat st;
		int fd = open(out, O_RDONLY);
		assert_true(fd >= 0);
		assert_int_equal(fstat(fd, &st), 0);
		assert_int_equal((uint64_t)st.st_size, HUGE_IMAGE);
		assert_int_equal(pread(fd, head, 4, 0), 4);
		assert_string_equal(head, "boot");
		assert_true(fd_range_is_hole(fd, 65536, HUGE_IMAGE - 65536));
		close(fd);
	}
	unlink(out);
	assert_int_equal(snapshots_of(f, id), 1);

	t0 = now_sec();
	ds_engine_close(f->e);
	f->e = NULL;
	assert_true(now_sec() - t0 < 2.0); /* stopped, not waited for */
	assert_int_equal(ds_engine_open(f->state, NULL, &f->e), 0);
	assert_int_equal(ds_snapshot_get(f->e, sid, &s), 0);
	assert_string_equal(s.status, "failed");
	assert_non_null(strstr(s.error, "stopped"));
	assert_false(s.has_manifest);
	assert_int_equal(ds_snapshot_wait(f->e, sid), -EIO);
	assert_int_equal(ds_snapshot_verify(f->e, sid), -ENODATA);
	assert_int_equal(ds_snapshot_export(f->e, sid, out), -ENODATA);
	/* A failed snapshot is deleted like any other, and the disk is free. */
	assert_int_equal(ds_snapshot_delete(f->e, sid), 0);
	assert_int_equal(ds_disk_delete(f->e, id), 0);
}

/* A process that dies during a copy leaves it `progressing` in the
 * catalog; the next open marks it failed. */
static void test_running_copy_interrupted_by_crash(void **state)
{
	struct fx *f = *state;
	char id[DS_ID_SIZE], sid[DS_ID_SIZE] = "";
	struct ds_snapshot_info s;
	struct count c = {0};
	int st, pfd[2];

	reg_huge(f, id);
	ds_engine_close(f->e);
	f->e = NULL;
	assert_int_equal(pipe(pfd), 0);
	f->child = fork();
	assert_true(f->child >= 0);
	if (f->child == 0) {
		struct ds_snapshot_params p = {0};
		struct ds_engine *e;
		char cid[DS_ID_SIZE] = "";

		child_default_signals();
		if (ds_engine_open(f->state, NULL, &e) == 0 &&
		    ds_snapshot_create(e, id, &p, cid) == 0)
			(void)!write(pfd[1], cid, sizeof(cid));
		kill(getpid(), SIGKILL); /* mid-copy, no cleanup */
		_exit(1);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], sid, sizeof(sid)), (ssize_t)sizeof(sid));
	close(pfd[0]);
	assert_int_equal(waitpid(f->child, &st, 0), f->child);
	f->child = 0;
	assert_true(WIFSIGNALED(st));

	test_log.count = 0;
	assert_int_equal(ds_engine_open(f->state, NULL, &f->e), 0);
	assert_true(test_log_has("interrupted"));
	assert_int_equal(ds_snapshot_get(f->e, sid, &s), 0);
	assert_string_equal(s.status, "failed");
	assert_non_null(strstr(s.error, "interrupted"));
	assert_int_equal(ds_snapshot_list(f->e, id, count_snap, &c), 0);
	assert_int_equal(c.n, 1);
	/* The disk is usable again: its lease went with the process. */
	{
		struct ds_snapshot_params p = {0};
		char sid2[DS_ID_SIZE];
		assert_int_equal(ds_snapshot_create(f->e, id, &p, sid2), 0);
	}
}

/* A writer opening the image during the copy breaks the lease: the copy
 * fails rather than record a snapshot that is no point in time. */
static void test_running_copy_lease_broken(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {0};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE];
	struct ds_snapshot_info s;
	int w, r;

	reg_huge(f, id);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), 0);
	assert_int_equal(ds_snapshot_get(f->e, sid, &s), 0);
	if (strcmp(s.status, "progressing") != 0)
		fail_msg("the copy of a 256 GiB sparse image ended at once: %s", s.status);
	w = open(f->img, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (w >= 0) { /* a reflink clone, not a lease: writers are fine */
		close(w);
		skip();
	}
	assert_int_equal(errno, EWOULDBLOCK);
	r = ds_snapshot_wait(f->e, sid);
	assert_true(r < 0);
	assert_int_equal(ds_snapshot_get(f->e, sid, &s), 0);
	assert_string_equal(s.status, "failed");
	assert_non_null(strstr(s.error, "opened for writing"));
	assert_false(s.has_manifest);
	/* The writer gets in once the copy has let go. */
	w = open(f->img, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	assert_true(w >= 0);
	close(w);
}

/* ds_snapshot_wait: "0 if accomplished, else the copy's error". */
static void test_wait_returns_copy_error(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_params p = {0};
	char id[DS_ID_SIZE], sid[DS_ID_SIZE];
	int w;

	reg_huge(f, id);
	assert_int_equal(ds_snapshot_create(f->e, id, &p, sid), 0);
	w = open(f->img, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (w >= 0) {
		close(w);
		skip();
	}
	assert_int_equal(ds_snapshot_wait(f->e, sid), -ESTALE);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_open_twice),
		T(test_register),
		T(test_disk_gone),
		T(test_disk_create),
		T(test_snapshot_accomplished),
		T(test_snapshot_params_invalid),
		T(test_second_snapshot_dedup),
		T(test_unknown_ids),
		T(test_locked),
		T(test_busy_while_open_for_writing),
		T(test_quota),
		T(test_delete_and_gc),
		T(test_export_and_create_from),
		T(test_reset),
		T(test_reset_after_crash),
		T(test_running_copy_stopped_by_close),
		T(test_running_copy_interrupted_by_crash),
		T(test_running_copy_lease_broken),
		T(test_wait_returns_copy_error),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
