/*
 * Tests of manifests (engine/snapshot/manifest.c): save/load round trips
 * from an empty disk to a tree of two node levels, sharing between
 * consecutive manifests, the reference list GC keeps alive, and damaged or
 * foreign trees, which must fail with an error and never crash.
 *
 * The entries of a manifest are only data to save and load (nothing checks
 * that they exist), so the big manifests hold synthetic ids and cost no
 * disk data. Chunk size is the smallest, 16 KiB: a node lists
 * (16384 - 24) / 16 = 1022 children, so a stream of more than 1022 pieces
 * (about 16 GiB of disk) needs a second node level. A third level would
 * need more than 1022 * 1022 pieces, a 17 GB stream that save builds in
 * memory; its reader path is tested with hand-built trees instead.
 *
 * Each test gets a fresh folder under /tmp (setup) that teardown removes.
 */
#include "testutil.h"

#include <dirent.h>

#include <dsnap/snapshot.h>
#include <dsnap/store.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KiB 1024u
#define CS (16u * KiB)
#define NODE_HEADER 24
#define MANIFEST_HEADER 32
#define NODE_CAP ((CS - NODE_HEADER) / DS_CHUNK_ID_SIZE) /* 1022 */
/* The most entries a one-level tree holds: NODE_CAP full pieces. */
#define LEVEL1_MAX_COUNT (((uint64_t)NODE_CAP * CS - MANIFEST_HEADER) / DS_CHUNK_ID_SIZE)

struct fx {
	char tmp[PATH_MAX];
	char dir[PATH_MAX];
	struct ds_store *s;
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

	ds_store_close(f->s);
	rm_rf(f->tmp);
	free(f);
	return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Distinct, never-zero ids that exist nowhere: a manifest's entries are data. */
static void synth_ids(struct ds_manifest *m, uint64_t seed)
{
	uint64_t x = seed;

	for (uint64_t i = 0; i < m->count; i++) {
		uint64_t a = splitmix64(&x), b = i + 1;
		memcpy(m->ids[i].b, &a, 8);
		memcpy(m->ids[i].b + 8, &b, 8);
	}
}

static struct ds_manifest *manifest_synth(uint64_t disk_size, uint64_t seed)
{
	struct ds_manifest *m = ds_manifest_new(CS, disk_size);

	assert_non_null(m);
	synth_ids(m, seed);
	return m;
}

static void assert_manifest_equal(const struct ds_manifest *a, const struct ds_manifest *b)
{
	assert_int_equal(a->chunk_size, b->chunk_size);
	assert_int_equal(a->disk_size, b->disk_size);
	assert_int_equal(a->count, b->count);
	if (a->count)
		assert_bytes_equal(a->ids, b->ids, a->count * DS_CHUNK_ID_SIZE);
}

/* Saves m, loads it back, compares; returns the root. */
static ds_chunk_id round_trip(struct ds_store *s, const struct ds_manifest *m)
{
	struct ds_manifest *back = NULL;
	ds_chunk_id root;

	assert_int_equal(ds_manifest_save(s, m, &root), 0);
	assert_false(ds_chunk_id_is_zero(&root));
	assert_int_equal(ds_manifest_load(s, &root, &back), 0);
	assert_non_null(back);
	assert_manifest_equal(m, back);
	ds_manifest_free(back);
	return root;
}

static uint64_t store_chunks(struct ds_store *s)
{
	struct ds_store_stats st;

	assert_int_equal(ds_store_stats(s, &st), 0);
	return st.chunks;
}

/* Reads a chunk; returns its length, data into buf (CS bytes). */
static uint32_t get_chunk(struct ds_store *s, const ds_chunk_id *id, uint8_t *buf)
{
	struct ds_chunk c = {.id = *id, .data = buf};

	assert_int_equal(ds_store_get(s, &c, 1), 0);
	return c.len;
}

/* The level byte of a node chunk (doc/store-format.md, "Node chunk"). */
static int node_level(struct ds_store *s, const ds_chunk_id *id)
{
	uint8_t *buf = malloc(CS);
	uint32_t len;
	int level;

	assert_non_null(buf);
	len = get_chunk(s, id, buf);
	assert_true(len >= NODE_HEADER);
	assert_memory_equal(buf, "DSNPNODE", 8);
	level = buf[9];
	free(buf);
	return level;
}

static ds_chunk_id put_bytes(struct ds_store *s, const void *data, size_t len)
{
	struct ds_chunk c = {.data = (void *)data, .len = (uint32_t)len};

	assert_int_equal(ds_store_put(s, &c, 1), 0);
	return c.id;
}

/* Stores a hand-made node chunk (doc/store-format.md). */
static ds_chunk_id put_node(struct ds_store *s, uint8_t version, uint8_t level, uint64_t covered,
			    const ds_chunk_id *children, uint32_t n)
{
	uint8_t *node = calloc(1, CS);
	ds_chunk_id id;

	assert_non_null(node);
	assert_true(n <= NODE_CAP);
	memcpy(node, "DSNPNODE", 8);
	node[8] = version;
	node[9] = level;
	put_le32(node + 12, n);
	put_le64(node + 16, covered);
	memcpy(node + NODE_HEADER, children, (size_t)n * DS_CHUNK_ID_SIZE);
	id = put_bytes(s, node, NODE_HEADER + (size_t)n * DS_CHUNK_ID_SIZE);
	free(node);
	return id;
}

/* A one-piece stream: header (magic, version, chunk size, disk size,
 * count) then count ids. Returns its length; buf holds CS bytes. */
static size_t make_stream(uint8_t *buf, const char *magic, uint32_t version, uint32_t cs,
			  uint64_t disk_size, uint64_t count, const ds_chunk_id *ids)
{
	size_t len = MANIFEST_HEADER + (size_t)count * DS_CHUNK_ID_SIZE;

	assert_true(len <= CS);
	memcpy(buf, magic, 8);
	put_le32(buf + 8, version);
	put_le32(buf + 12, cs);
	put_le64(buf + 16, disk_size);
	put_le64(buf + 24, count);
	memcpy(buf + MANIFEST_HEADER, ids, (size_t)count * DS_CHUNK_ID_SIZE);
	return len;
}

/* Collects a manifest's references; returns how many, *out yours. */
static size_t refs_of(struct ds_store *s, const ds_chunk_id *root, ds_chunk_id **out)
{
	size_t n = 0, cap = 0;

	*out = NULL;
	assert_int_equal(ds_manifest_refs(s, root, out, &n, &cap), 0);
	assert_true(n <= cap);
	return n;
}

static int id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(ds_chunk_id));
}

static bool ids_contain(const ds_chunk_id *ids, size_t n, const ds_chunk_id *id)
{
	for (size_t i = 0; i < n; i++)
		if (memcmp(&ids[i], id, sizeof(*id)) == 0)
			return true;
	return false;
}

static void assert_load_fails(struct ds_store *s, const ds_chunk_id *root, int want)
{
	struct ds_manifest *m = (struct ds_manifest *)0x1;
	ds_chunk_id *refs = NULL;
	size_t n = 0, cap = 0;

	assert_int_equal(ds_manifest_load(s, root, &m), want);
	assert_ptr_equal(m, (struct ds_manifest *)0x1); /* untouched on failure */
	assert_int_equal(ds_manifest_refs(s, root, &refs, &n, &cap), want);
	free(refs);
}

/* ---- round trips ------------------------------------------------------------------ */

static void test_new(void **state)
{
	struct ds_manifest *m;

	(void)state;
	m = ds_manifest_new(CS, 0);
	assert_non_null(m);
	assert_int_equal(m->count, 0);
	ds_manifest_free(m);
	m = ds_manifest_new(CS, 3 * (uint64_t)CS + 1);
	assert_non_null(m);
	assert_int_equal(m->count, 4);
	assert_int_equal(m->chunk_size, CS);
	for (uint64_t i = 0; i < m->count; i++)
		assert_true(ds_chunk_id_is_zero(&m->ids[i]));
	ds_manifest_free(m);
	ds_manifest_free(NULL);
	/* Chunk sizes the store would refuse. */
	assert_null(ds_manifest_new(0, 1));
	assert_null(ds_manifest_new(8 * KiB, 1));
	assert_null(ds_manifest_new(3 * CS, 1));
	assert_null(ds_manifest_new(8u << 20, 1));
}

static void test_round_trip_small(void **state)
{
	struct fx *f = *state;
	static const uint64_t sizes[] = {0, 1, CS - 1, CS, CS + 1, 2 * (uint64_t)CS, 1000003};

	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		struct ds_manifest *m = manifest_synth(sizes[i], i);
		ds_chunk_id root = round_trip(f->s, m);

		assert_int_equal(m->count, (sizes[i] + CS - 1) / CS);
		assert_int_equal(node_level(f->s, &root), 1);
		ds_manifest_free(m);
	}
}

/* Zero entries stay zero and cost no chunks of their own. */
static void test_round_trip_zero_entries(void **state)
{
	struct fx *f = *state;
	/* 4000 entries: four pieces, two of them all zero ids. */
	struct ds_manifest *m = ds_manifest_new(CS, 4000 * (uint64_t)CS);
	ds_chunk_id root, *refs;
	size_t n;

	assert_non_null(m);
	m->ids[0].b[0] = 1;
	m->ids[3999].b[15] = 2;
	root = round_trip(f->s, m);
	/* Root, first and last piece, two entries: zero pieces and entries left out. */
	n = refs_of(f->s, &root, &refs);
	assert_int_equal(n, 5);
	for (size_t i = 0; i < n; i++)
		assert_false(ds_chunk_id_is_zero(&refs[i]));
	assert_true(ids_contain(refs, n, &root));
	assert_true(ids_contain(refs, n, &m->ids[0]));
	assert_true(ids_contain(refs, n, &m->ids[3999]));
	free(refs);
	ds_manifest_free(m);
}

/* The largest one-level tree and the smallest two-level one. */
static void test_round_trip_two_levels(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *m;
	ds_chunk_id root, *refs;
	size_t n;

	assert_int_equal(NODE_CAP, 1022);
	m = manifest_synth(LEVEL1_MAX_COUNT * CS, 11);
	root = round_trip(f->s, m);
	assert_int_equal(node_level(f->s, &root), 1);
	/* root + 1022 pieces + every entry */
	n = refs_of(f->s, &root, &refs);
	assert_int_equal(n, 1 + NODE_CAP + m->count);
	free(refs);
	ds_manifest_free(m);

	/* One entry more: 1023 pieces, two level-1 nodes under a level-2 root.
	 * The last chunk is short: the disk size is not a chunk multiple. */
	m = manifest_synth(LEVEL1_MAX_COUNT * CS + 1, 12);
	assert_int_equal(m->count, LEVEL1_MAX_COUNT + 1);
	root = round_trip(f->s, m);
	assert_int_equal(node_level(f->s, &root), 2);
	n = refs_of(f->s, &root, &refs);
	assert_int_equal(n, 1 + 2 + (NODE_CAP + 1) + m->count);
	/* Every entry is listed (order and duplicates are free). */
	qsort(refs, n, sizeof(*refs), id_cmp);
	for (uint64_t i = 0; i < m->count; i++)
		assert_non_null(bsearch(&m->ids[i], refs, n, sizeof(*refs), id_cmp));
	free(refs);
	ds_manifest_free(m);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);
}

/* Saving the same manifest twice names it the same and stores nothing. */
static void test_save_idempotent(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *m = manifest_synth(5000 * (uint64_t)CS, 3);
	ds_chunk_id a, b;
	uint64_t before;

	assert_int_equal(ds_manifest_save(f->s, m, &a), 0);
	before = store_chunks(f->s);
	assert_int_equal(ds_manifest_save(f->s, m, &b), 0);
	assert_memory_equal(&a, &b, sizeof(a));
	assert_int_equal(store_chunks(f->s), before);
	ds_manifest_free(m);
}

/* Consecutive manifests that differ in one entry share all but the piece
 * holding it and the nodes above. */
static void test_consecutive_share(void **state)
{
	struct fx *f = *state;
	struct ds_store_stats s0, s1;
	struct ds_manifest *m;
	ds_chunk_id r1, r2;
	uint64_t c0;

	/* One level: the piece and the root. */
	m = manifest_synth(5000 * (uint64_t)CS, 5);
	r1 = round_trip(f->s, m);
	c0 = store_chunks(f->s);
	m->ids[2500].b[0] ^= 0xff;
	r2 = round_trip(f->s, m);
	assert_memory_not_equal(&r1, &r2, sizeof(r1));
	assert_int_equal(store_chunks(f->s) - c0, 2);
	ds_manifest_free(m);

	/* Two levels (1.1 M entries): the piece, its level-1 node, the root. */
	m = manifest_synth((LEVEL1_MAX_COUNT + 60000) * CS, 6);
	r1 = round_trip(f->s, m);
	assert_int_equal(node_level(f->s, &r1), 2);
	assert_int_equal(ds_store_stats(f->s, &s0), 0);
	m->ids[777777].b[3] ^= 0x5a;
	r2 = round_trip(f->s, m);
	assert_int_equal(ds_store_stats(f->s, &s1), 0);
	assert_int_equal(s1.chunks - s0.chunks, 3);
	assert_true(s1.raw_bytes - s0.raw_bytes <= 3 * (uint64_t)CS);

	/* The old manifest still loads as it was. */
	{
		struct ds_manifest *old = NULL;
		assert_int_equal(ds_manifest_load(f->s, &r1, &old), 0);
		assert_memory_not_equal(&old->ids[777777], &m->ids[777777], DS_CHUNK_ID_SIZE);
		old->ids[777777] = m->ids[777777];
		assert_manifest_equal(old, m);
		ds_manifest_free(old);
	}
	ds_manifest_free(m);
}

/* ---- references and GC ------------------------------------------------------------- */

/* A manifest over real chunks: entry i holds random data, every third a hole. */
static struct ds_manifest *manifest_real(struct ds_store *s, uint64_t nchunks, uint64_t seed)
{
	struct ds_manifest *m = ds_manifest_new(CS, nchunks * CS - 100);
	uint8_t *buf = malloc(CS);

	assert_non_null(m);
	assert_non_null(buf);
	for (uint64_t i = 0; i < m->count; i++) {
		size_t len = i + 1 == m->count ? CS - 100 : CS;
		if (i % 3 == 1)
			continue;
		gen_fill(buf, len, seed * 1000 + i, (enum gen_kind)(i % 2 ? GEN_TEXT : GEN_RANDOM));
		m->ids[i] = put_bytes(s, buf, len);
	}
	free(buf);
	return m;
}

static void test_refs_keep_manifest_through_gc(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *a = manifest_real(f->s, 30, 1), *b = manifest_real(f->s, 20, 2);
	struct ds_manifest *back = NULL;
	ds_chunk_id ra, rb, *live;
	struct ds_gc_stats gs;
	uint8_t *buf = malloc(CS);
	size_t n, cap = 0;

	assert_non_null(buf);
	assert_int_equal(ds_manifest_save(f->s, a, &ra), 0);
	assert_int_equal(ds_manifest_save(f->s, b, &rb), 0);

	/* refs appends to what the array holds already. */
	live = malloc(sizeof(*live));
	assert_non_null(live);
	memset(live, 0, sizeof(*live)); /* a zero id in live is ignored */
	n = 1;
	cap = 1;
	assert_int_equal(ds_manifest_refs(f->s, &ra, &live, &n, &cap), 0);
	/* root + one piece + 20 data chunks */
	assert_int_equal(n, 1 + 1 + 1 + 20);
	assert_true(ids_contain(live, n, &ra));
	for (uint64_t i = 0; i < a->count; i++)
		if (!ds_chunk_id_is_zero(&a->ids[i]))
			assert_true(ids_contain(live, n, &a->ids[i]));

	assert_int_equal(ds_store_gc(f->s, live, n, &gs), 0);
	assert_true(gs.chunks_removed >= 1 + 1 + 13);
	assert_int_equal(store_chunks(f->s), n - 1);
	assert_int_equal(ds_store_verify(f->s, NULL, NULL), 0);

	/* a survives whole, its data too; b's tree is gone. */
	assert_int_equal(ds_manifest_load(f->s, &ra, &back), 0);
	assert_manifest_equal(a, back);
	ds_manifest_free(back);
	for (uint64_t i = 0; i < a->count; i++)
		if (!ds_chunk_id_is_zero(&a->ids[i]))
			assert_int_equal(get_chunk(f->s, &a->ids[i], buf),
					 i + 1 == a->count ? CS - 100 : CS);
	assert_load_fails(f->s, &rb, -ENOENT);
	free(live);
	free(buf);
	ds_manifest_free(a);
	ds_manifest_free(b);
}

/* ---- damage ------------------------------------------------------------------------ */

static void test_damaged_roots(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *m = manifest_real(f->s, 4, 3);
	ds_chunk_id root, zero, unknown, piece;
	uint8_t *buf = malloc(CS);
	uint32_t len;

	assert_non_null(buf);
	assert_int_equal(ds_manifest_save(f->s, m, &root), 0);
	memset(&zero, 0, sizeof(zero));
	memset(&unknown, 0x5c, sizeof(unknown));

	assert_load_fails(f->s, &zero, -EBADMSG);
	assert_load_fails(f->s, &unknown, -ENOENT);
	/* An ordinary data chunk where a node should be. */
	assert_load_fails(f->s, &m->ids[0], -EBADMSG);
	/* The stream piece itself (the root's only child) as a root. */
	len = get_chunk(f->s, &root, buf);
	assert_int_equal(len, NODE_HEADER + DS_CHUNK_ID_SIZE);
	memcpy(&piece, buf + NODE_HEADER, sizeof(piece));
	assert_load_fails(f->s, &piece, -EBADMSG);

	/* A node whose child is a data chunk, not a stream. */
	root = put_node(f->s, 1, 1, CS, &m->ids[0], 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* A node with a zero child where a piece should be: not a stream. */
	root = put_node(f->s, 1, 1, 48, &zero, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* A newer node version. */
	root = put_node(f->s, 2, 1, 48, &piece, 1);
	assert_load_fails(f->s, &root, -EPROTONOSUPPORT);
	/* Level 0 and a level past the limit (16). */
	root = put_node(f->s, 1, 0, 48, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	root = put_node(f->s, 1, 17, 48, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* A node with no children. */
	root = put_node(f->s, 1, 1, 0, &piece, 0);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* Covered bytes that do not match the piece (it is 32 + 4 * 16 = 96). */
	root = put_node(f->s, 1, 1, 95, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	root = put_node(f->s, 1, 1, 97, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	root = put_node(f->s, 1, 1, 96, &piece, 1);
	{
		struct ds_manifest *back = NULL;
		assert_int_equal(ds_manifest_load(f->s, &root, &back), 0);
		assert_manifest_equal(m, back);
		ds_manifest_free(back);
	}
	/* A level-2 root whose child is a piece, and one whose child is a
	 * level-2 node (levels must go down by one). */
	{
		ds_chunk_id l1 = put_node(f->s, 1, 1, 96, &piece, 1);
		ds_chunk_id l2 = put_node(f->s, 1, 2, 96, &l1, 1);

		root = put_node(f->s, 1, 2, 96, &piece, 1);
		assert_load_fails(f->s, &root, -EBADMSG);
		root = put_node(f->s, 1, 2, 96, &l2, 1);
		assert_load_fails(f->s, &root, -EBADMSG);
	}
	free(buf);
	ds_manifest_free(m);
}

/* A node whose bytes were damaged on disk: the store's check catches it. */
static void test_damaged_node_on_disk(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *m = manifest_synth(3000 * (uint64_t)CS, 8);
	char packs[PATH_MAX], pack[PATH_MAX * 2];
	struct dirent *de;
	ds_chunk_id root;
	int64_t size;
	uint8_t b;
	DIR *d;
	int fd;

	assert_int_equal(ds_manifest_save(f->s, m, &root), 0);
	ds_store_close(f->s);
	f->s = NULL;
	/* The root is the last chunk save stores: damage the pack's last bytes. */
	path_cat(packs, sizeof(packs), f->dir, "packs");
	d = opendir(packs);
	assert_non_null(d);
	pack[0] = '\0';
	while ((de = readdir(d)))
		if (strstr(de->d_name, ".pack"))
			snprintf(pack, sizeof(pack), "%s/%s", packs, de->d_name);
	closedir(d);
	assert_true(pack[0] != '\0');
	size = file_size(pack);
	assert_true(size > 64);
	fd = open(pack, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, size - 20), 1);
	b ^= 0x40;
	assert_int_equal(pwrite(fd, &b, 1, size - 20), 1);
	close(fd);
	assert_int_equal(ds_store_open(f->dir, &f->s), 0);
	assert_load_fails(f->s, &root, -EBADMSG);
	ds_manifest_free(m);
}

/* Streams whose header lies about the manifest. */
static void test_damaged_streams(void **state)
{
	struct fx *f = *state;
	uint8_t *buf = malloc(CS);
	ds_chunk_id ids[4], piece, root;
	size_t len;

	assert_non_null(buf);
	memset(ids, 0x11, sizeof(ids));
	/* Right: 3 entries for a disk of 2 chunks + 1 byte. */
	len = make_stream(buf, "DSNPMFST", 1, CS, 2 * (uint64_t)CS + 1, 3, ids);
	piece = put_bytes(f->s, buf, len);
	root = put_node(f->s, 1, 1, len, &piece, 1);
	{
		struct ds_manifest *m = NULL;
		assert_int_equal(ds_manifest_load(f->s, &root, &m), 0);
		assert_int_equal(m->count, 3);
		assert_int_equal(m->disk_size, 2 * (uint64_t)CS + 1);
		ds_manifest_free(m);
	}
	/* Wrong magic. */
	len = make_stream(buf, "DSNPXXXX", 1, CS, 3 * (uint64_t)CS, 3, ids);
	piece = put_bytes(f->s, buf, len);
	root = put_node(f->s, 1, 1, len, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* A newer stream version. */
	len = make_stream(buf, "DSNPMFST", 2, CS, 3 * (uint64_t)CS, 3, ids);
	piece = put_bytes(f->s, buf, len);
	root = put_node(f->s, 1, 1, len, &piece, 1);
	assert_load_fails(f->s, &root, -EPROTONOSUPPORT);
	/* Another chunk size than the store's. */
	len = make_stream(buf, "DSNPMFST", 1, 4 * CS, 3 * 4 * (uint64_t)CS, 3, ids);
	piece = put_bytes(f->s, buf, len);
	root = put_node(f->s, 1, 1, len, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* A count that does not match the ids that follow. */
	len = make_stream(buf, "DSNPMFST", 1, CS, 3 * (uint64_t)CS, 3, ids);
	put_le64(buf + 24, 4);
	piece = put_bytes(f->s, buf, len);
	root = put_node(f->s, 1, 1, len, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* A count that does not match the disk size. */
	len = make_stream(buf, "DSNPMFST", 1, CS, 5 * (uint64_t)CS, 3, ids);
	piece = put_bytes(f->s, buf, len);
	root = put_node(f->s, 1, 1, len, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* A stream cut inside an id. */
	len = make_stream(buf, "DSNPMFST", 1, CS, 3 * (uint64_t)CS, 3, ids);
	piece = put_bytes(f->s, buf, len - 5);
	root = put_node(f->s, 1, 1, len - 5, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	/* Shorter than a header. */
	piece = put_bytes(f->s, buf, 20);
	root = put_node(f->s, 1, 1, 20, &piece, 1);
	assert_load_fails(f->s, &root, -EBADMSG);
	free(buf);
}

/* Trees save never makes but the format allows: three levels (a chain),
 * and two pieces where the first is short. */
static void test_hand_built_trees(void **state)
{
	struct fx *f = *state;
	uint8_t *buf = calloc(1, CS);
	ds_chunk_id ids[8], piece, l1, l2, l3, *refs;
	struct ds_manifest *m = NULL;
	size_t len, n;

	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		memset(&ids[i], 0x20 + i, sizeof(ids[i]));
	len = make_stream(buf, "DSNPMFST", 1, CS, 8 * (uint64_t)CS, 8, ids);
	piece = put_bytes(f->s, buf, len);
	l1 = put_node(f->s, 1, 1, len, &piece, 1);
	l2 = put_node(f->s, 1, 2, len, &l1, 1);
	l3 = put_node(f->s, 1, 3, len, &l2, 1);
	assert_int_equal(ds_manifest_load(f->s, &l3, &m), 0);
	assert_int_equal(m->count, 8);
	assert_memory_equal(m->ids, ids, sizeof(ids));
	ds_manifest_free(m);
	n = refs_of(f->s, &l3, &refs);
	assert_int_equal(n, 4 + 8);
	assert_true(ids_contain(refs, n, &l1) && ids_contain(refs, n, &l2) &&
		    ids_contain(refs, n, &l3) && ids_contain(refs, n, &piece));
	free(refs);
	/* Covered bytes must agree on every level. */
	l3 = put_node(f->s, 1, 3, len + CS, &l2, 1);
	assert_load_fails(f->s, &l3, -EBADMSG);

	/* Two pieces under one node where the first piece is short: the
	 * stream would have a gap. */
	{
		ds_chunk_id two[2];
		two[0] = piece;
		two[1] = piece;
		l1 = put_node(f->s, 1, 1, 2 * len, two, 2);
		assert_load_fails(f->s, &l1, -EBADMSG);
	}
	free(buf);
}

static void test_chunk_size_mismatch(void **state)
{
	struct fx *f = *state;
	struct ds_manifest *m = ds_manifest_new(4 * CS, 10 * (uint64_t)CS);
	ds_chunk_id root;
	uint64_t before = store_chunks(f->s);

	assert_non_null(m);
	memset(&root, 0x77, sizeof(root));
	assert_int_equal(ds_manifest_save(f->s, m, &root), -EINVAL);
	assert_int_equal(store_chunks(f->s), before);
	ds_manifest_free(m);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_new),
		T(test_round_trip_small),
		T(test_round_trip_zero_entries),
		T(test_round_trip_two_levels),
		T(test_save_idempotent),
		T(test_consecutive_share),
		T(test_refs_keep_manifest_through_gc),
		T(test_damaged_roots),
		T(test_damaged_node_on_disk),
		T(test_damaged_streams),
		T(test_hand_built_trees),
		T(test_chunk_size_mismatch),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
