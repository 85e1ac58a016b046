/*
 * Tests of the catalog (engine/catalog): disks and snapshots in SQLite.
 * Rows round trip field for field, unknown ids give -ENOENT, snapshots
 * come back in creation order and filtered by disk, transactions roll
 * back, and everything survives a reopen.
 *
 * Each test gets a fresh folder under /tmp (setup) that teardown removes.
 */
#include "testutil.h"

#include <sqlite3.h>

#include "catalog/catalog.h"

struct fx {
	char tmp[PATH_MAX];
	char path[PATH_MAX]; /* tmp/catalog.db */
	struct catalog *c;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f || tmpdir_make(f->tmp, sizeof(f->tmp)) < 0) {
		free(f);
		return -1;
	}
	path_cat(f->path, sizeof(f->path), f->tmp, "catalog.db");
	test_log_capture();
	*state = f;
	return catalog_open(f->path, &f->c) < 0 ? -1 : 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	catalog_close(f->c);
	rm_rf(f->tmp);
	free(f);
	return 0;
}

static void reopen(struct fx *f)
{
	catalog_close(f->c);
	f->c = NULL;
	assert_int_equal(catalog_open(f->path, &f->c), 0);
}

/* ---- rows ------------------------------------------------------------------------ */

static void disk_make(struct disk_row *d, const char *id, uint64_t seed)
{
	struct ds_disk_info *i = &d->info;

	memset(d, 0, sizeof(*d));
	snprintf(i->id, sizeof(i->id), "%s", id);
	snprintf(i->name, sizeof(i->name), "disk %llu 'quoted' \"and\" ünïcode",
		 (unsigned long long)seed);
	snprintf(i->path, sizeof(i->path), "/var/lib/images/%s.img", id);
	i->kind = (enum ds_disk_kind)(seed % 3);
	snprintf(i->status, sizeof(i->status), "Available");
	i->size = (1ull << 40) + seed; /* past 32 bits */
	snprintf(i->fs_type, sizeof(i->fs_type), "ext4");
	snprintf(i->fs_uuid, sizeof(i->fs_uuid), "0b4e5c1a-%04llx", (unsigned long long)seed);
	snprintf(i->fs_label, sizeof(i->fs_label), "label%llu", (unsigned long long)seed);
	i->created = 1700000000 + (int64_t)seed;
	i->owned = seed & 1;
	i->locked = seed & 2;
	d->key.dev = 0xfd00000000ull + seed; /* 64-bit dev_t values */
	d->key.ino = 0x8000000000000000ull + seed; /* past INT64_MAX */
	if (i->kind == DS_DISK_BLOCK)
		snprintf(d->key.id, sizeof(d->key.id), "by-id:wwn-0x%llx", (unsigned long long)seed);
}

static void assert_disk_equal(const struct disk_row *a, const struct disk_row *b)
{
	assert_string_equal(a->info.id, b->info.id);
	assert_string_equal(a->info.name, b->info.name);
	assert_string_equal(a->info.path, b->info.path);
	assert_int_equal(a->info.kind, b->info.kind);
	assert_string_equal(a->info.status, b->info.status);
	assert_int_equal(a->info.size, b->info.size);
	assert_string_equal(a->info.fs_type, b->info.fs_type);
	assert_string_equal(a->info.fs_uuid, b->info.fs_uuid);
	assert_string_equal(a->info.fs_label, b->info.fs_label);
	assert_int_equal(a->info.created, b->info.created);
	assert_int_equal(a->info.owned, b->info.owned);
	assert_int_equal(a->info.locked, b->info.locked);
	assert_int_equal(a->key.dev, b->key.dev);
	assert_int_equal(a->key.ino, b->key.ino);
	assert_string_equal(a->key.id, b->key.id);
}

static void snap_make(struct ds_snapshot_info *s, const char *id, const char *disk, uint64_t seed)
{
	memset(s, 0, sizeof(*s));
	snprintf(s->id, sizeof(s->id), "%s", id);
	snprintf(s->disk_id, sizeof(s->disk_id), "%s", disk);
	snprintf(s->name, sizeof(s->name), "snap %llu", (unsigned long long)seed);
	snprintf(s->description, sizeof(s->description), "before the upgrade; it's \"%llu\"",
		 (unsigned long long)seed);
	snprintf(s->status, sizeof(s->status), seed % 2 ? "accomplished" : "progressing");
	s->progress = (int)(seed % 101);
	s->disk_size = (5ull << 40) + seed;
	s->created = 1700000000 + (int64_t)seed;
	s->modified = s->created + 5;
	s->retention_days = (int)(seed % 30);
	s->automatic = seed & 4;
	if (seed % 2) {
		s->has_manifest = true;
		fill_random(s->manifest.b, sizeof(s->manifest.b), seed);
	}
	s->bytes_read = (3ull << 33) + seed;
	s->stored_bytes = (1ull << 33) + seed;
	if (seed % 3 == 0)
		snprintf(s->error, sizeof(s->error), "read error at %llu", (unsigned long long)seed);
	/* Keys given in descending order: tags come back in the order given,
	 * not in key order. The last seeds give the most tags allowed. */
	s->ntags = seed >= 4 ? DS_MAX_TAGS : (int)(seed % 4) * 3;
	for (int i = 0; i < s->ntags; i++) {
		snprintf(s->tags[i].key, sizeof(s->tags[i].key), "%c-key %llu", 'z' - i,
			 (unsigned long long)seed);
		snprintf(s->tags[i].value, sizeof(s->tags[i].value), "value %d", i);
	}
}

static void assert_snap_equal(const struct ds_snapshot_info *a, const struct ds_snapshot_info *b)
{
	assert_string_equal(a->id, b->id);
	assert_string_equal(a->disk_id, b->disk_id);
	assert_string_equal(a->name, b->name);
	assert_string_equal(a->description, b->description);
	assert_string_equal(a->status, b->status);
	assert_int_equal(a->progress, b->progress);
	assert_int_equal(a->disk_size, b->disk_size);
	assert_int_equal(a->created, b->created);
	assert_int_equal(a->modified, b->modified);
	assert_int_equal(a->retention_days, b->retention_days);
	assert_int_equal(a->automatic, b->automatic);
	assert_int_equal(a->has_manifest, b->has_manifest);
	if (a->has_manifest)
		assert_memory_equal(a->manifest.b, b->manifest.b, DS_CHUNK_ID_SIZE);
	assert_int_equal(a->bytes_read, b->bytes_read);
	assert_int_equal(a->stored_bytes, b->stored_bytes);
	assert_string_equal(a->error, b->error);
	assert_int_equal(a->ntags, b->ntags);
	for (int i = 0; i < a->ntags; i++) {
		assert_string_equal(a->tags[i].key, b->tags[i].key);
		assert_string_equal(a->tags[i].value, b->tags[i].value);
	}
}

/* ---- open ------------------------------------------------------------------------- */

static void test_open_creates(void **state)
{
	struct fx *f = *state;
	struct disk_row d;

	assert_true(file_exists(f->path));
	reopen(f);
	assert_int_equal(catalog_disk_get(f->c, "d-none", &d), -ENOENT);
}

static void test_open_garbage(void **state)
{
	struct fx *f = *state;
	char p[PATH_MAX];
	uint8_t junk[8192];
	struct catalog *c = (struct catalog *)0x1;

	path_cat(p, sizeof(p), f->tmp, "junk.db");
	fill_random(junk, sizeof(junk), 1);
	assert_int_equal(write_at(p, 0, junk, sizeof(junk)), 0);
	assert_int_equal(catalog_open(p, &c), -EBADMSG);
	assert_ptr_equal(c, (struct catalog *)0x1);
}

static void test_open_newer_format(void **state)
{
	struct fx *f = *state;
	struct catalog *c = (struct catalog *)0x1;
	sqlite3 *db;

	catalog_close(f->c);
	f->c = NULL;
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "UPDATE meta SET value = 99 WHERE key = 'format'", NULL,
				      NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(catalog_open(f->path, &c), -EPROTONOSUPPORT);
	assert_ptr_equal(c, (struct catalog *)0x1);
}

static void test_open_missing_folder(void **state)
{
	struct fx *f = *state;
	struct catalog *c = NULL;
	char p[PATH_MAX];

	path_cat(p, sizeof(p), f->tmp, "no/such/catalog.db");
	assert_true(catalog_open(p, &c) < 0);
	assert_null(c);
}

/* ---- disks ------------------------------------------------------------------------ */

static void test_disk_round_trip(void **state)
{
	struct fx *f = *state;
	struct disk_row in, out;

	for (uint64_t seed = 0; seed < 6; seed++) {
		char id[DS_ID_SIZE];
		snprintf(id, sizeof(id), "d-%020llu", (unsigned long long)seed);
		disk_make(&in, id, seed);
		assert_int_equal(catalog_disk_insert(f->c, &in), 0);
		memset(&out, 0x55, sizeof(out));
		assert_int_equal(catalog_disk_get(f->c, id, &out), 0);
		assert_disk_equal(&in, &out);
		/* present is what the host says now, never stored */
		assert_false(out.info.present);
	}
	reopen(f);
	disk_make(&in, "d-00000000000000000004", 4);
	assert_int_equal(catalog_disk_get(f->c, in.info.id, &out), 0);
	assert_disk_equal(&in, &out);
}

static void test_disk_long_strings(void **state)
{
	struct fx *f = *state;
	struct disk_row in, out;

	disk_make(&in, "d-long", 1);
	memset(in.info.name, 'n', sizeof(in.info.name) - 1);
	memset(in.info.path, 'p', sizeof(in.info.path) - 1);
	in.info.path[0] = '/';
	memset(in.key.id, 'k', sizeof(in.key.id) - 1);
	assert_int_equal(catalog_disk_insert(f->c, &in), 0);
	assert_int_equal(catalog_disk_get(f->c, "d-long", &out), 0);
	assert_disk_equal(&in, &out);
}

static void test_disk_duplicate_id(void **state)
{
	struct fx *f = *state;
	struct disk_row a, b, out;

	disk_make(&a, "d-dup", 1);
	disk_make(&b, "d-dup", 2);
	assert_int_equal(catalog_disk_insert(f->c, &a), 0);
	assert_true(catalog_disk_insert(f->c, &b) < 0);
	assert_int_equal(catalog_disk_get(f->c, "d-dup", &out), 0);
	assert_disk_equal(&a, &out);
}

static void test_disk_update_delete(void **state)
{
	struct fx *f = *state;
	struct disk_row d, out;

	disk_make(&d, "d-a", 1);
	assert_int_equal(catalog_disk_insert(f->c, &d), 0);
	snprintf(d.info.path, sizeof(d.info.path), "/dev/loop7");
	snprintf(d.info.status, sizeof(d.info.status), "ReIniting");
	d.info.size = 12345;
	d.info.locked = !d.info.locked;
	d.key.ino = 42;
	assert_int_equal(catalog_disk_update(f->c, &d), 0);
	assert_int_equal(catalog_disk_get(f->c, "d-a", &out), 0);
	assert_disk_equal(&d, &out);

	snprintf(d.info.id, sizeof(d.info.id), "d-unknown");
	assert_int_equal(catalog_disk_update(f->c, &d), -ENOENT);
	assert_int_equal(catalog_disk_delete(f->c, "d-unknown"), -ENOENT);
	assert_int_equal(catalog_disk_get(f->c, "d-unknown", &out), -ENOENT);

	assert_int_equal(catalog_disk_delete(f->c, "d-a"), 0);
	assert_int_equal(catalog_disk_get(f->c, "d-a", &out), -ENOENT);
	assert_int_equal(catalog_disk_delete(f->c, "d-a"), -ENOENT);
	reopen(f);
	assert_int_equal(catalog_disk_get(f->c, "d-a", &out), -ENOENT);
}

static void test_disk_find_key(void **state)
{
	struct fx *f = *state;
	struct disk_row file, blk, nokey;
	struct disk_key k;
	char id[DS_ID_SIZE];

	disk_make(&file, "d-file", 0); /* kind FILE: dev/ino, no id */
	disk_make(&blk, "d-blk", 2);   /* kind BLOCK: by-id name */
	assert_int_equal(blk.info.kind, DS_DISK_BLOCK);
	blk.key.dev = blk.key.ino = 0;
	disk_make(&nokey, "d-nokey", 5);
	nokey.key.dev = nokey.key.ino = 0;
	nokey.key.id[0] = '\0';
	assert_int_equal(catalog_disk_insert(f->c, &file), 0);
	assert_int_equal(catalog_disk_insert(f->c, &blk), 0);
	assert_int_equal(catalog_disk_insert(f->c, &nokey), 0);

	memset(&k, 0, sizeof(k));
	k.dev = file.key.dev;
	k.ino = file.key.ino;
	assert_int_equal(catalog_disk_find_key(f->c, &k, id), 0);
	assert_string_equal(id, "d-file");
	/* Same inode on another file system is another file. */
	k.dev++;
	assert_int_equal(catalog_disk_find_key(f->c, &k, id), -ENOENT);

	memset(&k, 0, sizeof(k));
	snprintf(k.id, sizeof(k.id), "%s", blk.key.id);
	assert_int_equal(catalog_disk_find_key(f->c, &k, id), 0);
	assert_string_equal(id, "d-blk");
	snprintf(k.id, sizeof(k.id), "by-id:other");
	assert_int_equal(catalog_disk_find_key(f->c, &k, id), -ENOENT);

	/* An empty key matches nothing, not the disk without one. */
	memset(&k, 0, sizeof(k));
	assert_int_equal(catalog_disk_find_key(f->c, &k, id), -ENOENT);

	assert_int_equal(catalog_disk_delete(f->c, "d-file"), 0);
	k.dev = file.key.dev;
	k.ino = file.key.ino;
	assert_int_equal(catalog_disk_find_key(f->c, &k, id), -ENOENT);
}

struct collect {
	char ids[64][DS_ID_SIZE];
	int n;
	int stop_after; /* 0 = never */
};

static int collect_disk(const struct disk_row *d, void *opaque)
{
	struct collect *c = opaque;

	snprintf(c->ids[c->n++], DS_ID_SIZE, "%s", d->info.id);
	return c->stop_after && c->n >= c->stop_after ? -EINTR : 0;
}

static int collect_snap(const struct ds_snapshot_info *s, void *opaque)
{
	struct collect *c = opaque;

	snprintf(c->ids[c->n++], DS_ID_SIZE, "%s", s->id);
	return c->stop_after && c->n >= c->stop_after ? -EINTR : 0;
}

static void test_disk_each(void **state)
{
	struct fx *f = *state;
	struct collect c = {0};
	struct disk_row d;

	assert_int_equal(catalog_disk_each(f->c, collect_disk, &c), 0);
	assert_int_equal(c.n, 0);
	/* Ordered by creation time, then id. */
	disk_make(&d, "d-b", 1);
	d.info.created = 300;
	assert_int_equal(catalog_disk_insert(f->c, &d), 0);
	disk_make(&d, "d-c", 2);
	d.info.created = 100;
	assert_int_equal(catalog_disk_insert(f->c, &d), 0);
	disk_make(&d, "d-a", 3);
	d.info.created = 300;
	assert_int_equal(catalog_disk_insert(f->c, &d), 0);
	assert_int_equal(catalog_disk_each(f->c, collect_disk, &c), 0);
	assert_int_equal(c.n, 3);
	assert_string_equal(c.ids[0], "d-c");
	assert_string_equal(c.ids[1], "d-a");
	assert_string_equal(c.ids[2], "d-b");
	/* A callback's error stops the walk and is returned. */
	memset(&c, 0, sizeof(c));
	c.stop_after = 2;
	assert_int_equal(catalog_disk_each(f->c, collect_disk, &c), -EINTR);
	assert_int_equal(c.n, 2);
}

/* ---- snapshots ---------------------------------------------------------------------- */

static void test_snapshot_round_trip(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_info in, out;

	for (uint64_t seed = 0; seed < 6; seed++) {
		char id[DS_ID_SIZE];
		snprintf(id, sizeof(id), "s-%020llu", (unsigned long long)seed);
		snap_make(&in, id, "d-x", seed);
		assert_int_equal(catalog_snapshot_insert(f->c, &in), 0);
		memset(&out, 0x55, sizeof(out));
		assert_int_equal(catalog_snapshot_get(f->c, id, &out), 0);
		assert_snap_equal(&in, &out);
	}
	reopen(f);
	snap_make(&in, "s-00000000000000000003", "d-x", 3);
	assert_int_equal(catalog_snapshot_get(f->c, in.id, &out), 0);
	assert_snap_equal(&in, &out);
}

static void test_snapshot_long_strings(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_info in, out;

	snap_make(&in, "s-long", "d-x", 1);
	memset(in.name, 'n', sizeof(in.name) - 1);
	memset(in.description, 'd', sizeof(in.description) - 1);
	memset(in.error, 'e', sizeof(in.error) - 1);
	assert_int_equal(catalog_snapshot_insert(f->c, &in), 0);
	assert_int_equal(catalog_snapshot_get(f->c, "s-long", &out), 0);
	assert_snap_equal(&in, &out);
}

static void test_snapshot_update_delete(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_info s, out;

	snap_make(&s, "s-a", "d-x", 0); /* progressing, no manifest */
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	snprintf(s.status, sizeof(s.status), "accomplished");
	s.progress = 100;
	s.has_manifest = true;
	memset(s.manifest.b, 0xab, sizeof(s.manifest.b));
	s.bytes_read = 999;
	s.modified += 60;
	assert_int_equal(catalog_snapshot_update(f->c, &s), 0);
	assert_int_equal(catalog_snapshot_get(f->c, "s-a", &out), 0);
	assert_snap_equal(&s, &out);
	/* And the manifest can be cleared again. */
	s.has_manifest = false;
	assert_int_equal(catalog_snapshot_update(f->c, &s), 0);
	assert_int_equal(catalog_snapshot_get(f->c, "s-a", &out), 0);
	assert_false(out.has_manifest);

	snprintf(s.id, sizeof(s.id), "s-unknown");
	assert_int_equal(catalog_snapshot_update(f->c, &s), -ENOENT);
	assert_int_equal(catalog_snapshot_get(f->c, "s-unknown", &out), -ENOENT);
	assert_int_equal(catalog_snapshot_delete(f->c, "s-unknown"), -ENOENT);
	assert_int_equal(catalog_snapshot_delete(f->c, "s-a"), 0);
	assert_int_equal(catalog_snapshot_get(f->c, "s-a", &out), -ENOENT);
	assert_int_equal(catalog_snapshot_delete(f->c, "s-a"), -ENOENT);
}

static void test_snapshot_each(void **state)
{
	struct fx *f = *state;
	/* Insertion order, with creation times that disagree with it. */
	static const char *const ids[] = {"s-z", "s-a", "s-m", "s-b", "s-y"};
	static const char *const disks[] = {"d-1", "d-2", "d-1", "d-1", "d-2"};
	struct ds_snapshot_info s;
	struct collect c = {0};

	for (int i = 0; i < 5; i++) {
		snap_make(&s, ids[i], disks[i], (uint64_t)i);
		s.created = 1000 - i;
		assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	}
	assert_int_equal(catalog_snapshot_each(f->c, NULL, collect_snap, &c), 0);
	assert_int_equal(c.n, 5);
	for (int i = 0; i < 5; i++)
		assert_string_equal(c.ids[i], ids[i]);

	memset(&c, 0, sizeof(c));
	assert_int_equal(catalog_snapshot_each(f->c, "d-1", collect_snap, &c), 0);
	assert_int_equal(c.n, 3);
	assert_string_equal(c.ids[0], "s-z");
	assert_string_equal(c.ids[1], "s-m");
	assert_string_equal(c.ids[2], "s-b");

	memset(&c, 0, sizeof(c));
	assert_int_equal(catalog_snapshot_each(f->c, "d-none", collect_snap, &c), 0);
	assert_int_equal(c.n, 0);

	/* Deleting one keeps the order of the rest; a new one goes last,
	 * also after the newest was deleted and across a reopen. */
	assert_int_equal(catalog_snapshot_delete(f->c, "s-m"), 0);
	assert_int_equal(catalog_snapshot_delete(f->c, "s-y"), 0);
	reopen(f);
	snap_make(&s, "s-new", "d-1", 9);
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	memset(&c, 0, sizeof(c));
	assert_int_equal(catalog_snapshot_each(f->c, NULL, collect_snap, &c), 0);
	assert_int_equal(c.n, 4);
	assert_string_equal(c.ids[0], "s-z");
	assert_string_equal(c.ids[1], "s-a");
	assert_string_equal(c.ids[2], "s-b");
	assert_string_equal(c.ids[3], "s-new");

	memset(&c, 0, sizeof(c));
	c.stop_after = 1;
	assert_int_equal(catalog_snapshot_each(f->c, "d-1", collect_snap, &c), -EINTR);
	assert_int_equal(c.n, 1);
}

static void test_fail_progressing(void **state)
{
	struct fx *f = *state;
	struct ds_snapshot_info s, out;

	assert_int_equal(catalog_fail_progressing(f->c, "nothing"), 0);
	snap_make(&s, "s-p1", "d-1", 0); /* progressing */
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	snap_make(&s, "s-ok", "d-1", 1); /* accomplished */
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	snap_make(&s, "s-p2", "d-2", 2); /* progressing */
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	snap_make(&s, "s-f", "d-2", 3);
	snprintf(s.status, sizeof(s.status), "failed");
	snprintf(s.error, sizeof(s.error), "earlier");
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);

	assert_int_equal(catalog_fail_progressing(f->c, "interrupted"), 2);
	assert_int_equal(catalog_snapshot_get(f->c, "s-p1", &out), 0);
	assert_string_equal(out.status, "failed");
	assert_string_equal(out.error, "interrupted");
	assert_int_equal(catalog_snapshot_get(f->c, "s-p2", &out), 0);
	assert_string_equal(out.status, "failed");
	assert_int_equal(catalog_snapshot_get(f->c, "s-ok", &out), 0);
	assert_string_equal(out.status, "accomplished");
	assert_string_equal(out.error, "");
	assert_int_equal(catalog_snapshot_get(f->c, "s-f", &out), 0);
	assert_string_equal(out.error, "earlier");
	assert_int_equal(catalog_fail_progressing(f->c, "again"), 0);
	reopen(f);
	assert_int_equal(catalog_snapshot_get(f->c, "s-p1", &out), 0);
	assert_string_equal(out.status, "failed");
}

static void test_transactions(void **state)
{
	struct fx *f = *state;
	struct disk_row d, out;
	struct ds_snapshot_info s, sout;

	disk_make(&d, "d-t", 1);
	snap_make(&s, "s-t", "d-t", 1);
	assert_int_equal(catalog_begin(f->c), 0);
	assert_int_equal(catalog_disk_insert(f->c, &d), 0);
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	catalog_rollback(f->c);
	assert_int_equal(catalog_disk_get(f->c, "d-t", &out), -ENOENT);
	assert_int_equal(catalog_snapshot_get(f->c, "s-t", &sout), -ENOENT);
	catalog_rollback(f->c); /* outside a transaction: nothing happens */

	assert_int_equal(catalog_begin(f->c), 0);
	assert_int_equal(catalog_disk_insert(f->c, &d), 0);
	assert_int_equal(catalog_snapshot_insert(f->c, &s), 0);
	assert_int_equal(catalog_commit(f->c), 0);
	reopen(f);
	assert_int_equal(catalog_disk_get(f->c, "d-t", &out), 0);
	assert_int_equal(catalog_snapshot_get(f->c, "s-t", &sout), 0);
}

/* A second connection of the same process sees committed rows. */
static void test_two_connections(void **state)
{
	struct fx *f = *state;
	struct catalog *other = NULL;
	struct disk_row d, out;

	assert_int_equal(catalog_open(f->path, &other), 0);
	disk_make(&d, "d-shared", 1);
	assert_int_equal(catalog_disk_insert(f->c, &d), 0);
	assert_int_equal(catalog_disk_get(other, "d-shared", &out), 0);
	assert_disk_equal(&d, &out);
	catalog_close(other);
}

/* What another process sees: SQLITE_BUSY, or the SQLite code that it got. */
static int probe(const char *path)
{
	sqlite3 *db;
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);

	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, "SELECT count(*) FROM meta", NULL, NULL, NULL);
	sqlite3_close(db);
	return rc;
}

/* Another process cannot read the catalog while it is open (INDEX_PRIVATE:
 * the WAL's index lives in dsnapd's memory, so no one else may use it).
 * The other process is this program run again (a forked child would
 * share SQLite's record of the parent's locks). */
static void test_other_process_kept_out(void **state)
{
	struct fx *f = *state;
	int status;
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		execl("/proc/self/exe", "test_catalog", "--probe", f->path, (char *)NULL);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), SQLITE_BUSY);
	/* Once closed, it is an ordinary SQLite file. */
	catalog_close(f->c);
	f->c = NULL;
	assert_int_equal(probe(f->path), SQLITE_OK);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--probe") == 0)
		return probe(argv[2]);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_open_creates),
		T(test_open_garbage),
		T(test_open_newer_format),
		T(test_open_missing_folder),
		T(test_disk_round_trip),
		T(test_disk_long_strings),
		T(test_disk_duplicate_id),
		T(test_disk_update_delete),
		T(test_disk_find_key),
		T(test_disk_each),
		T(test_snapshot_round_trip),
		T(test_snapshot_long_strings),
		T(test_snapshot_update_delete),
		T(test_snapshot_each),
		T(test_fail_progressing),
		T(test_transactions),
		T(test_two_connections),
		T(test_other_process_kept_out),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
