/*
 * Manifests, stored as a tree of chunks.
 *
 * A manifest serialises to a stream: a 32-byte header then one 16-byte id
 * per disk chunk. The stream is cut into chunk-size pieces, stored as
 * ordinary chunks (a run of zero ids makes an all-zero piece, which costs
 * nothing), and a tree of node chunks lists the pieces. The root is always
 * a node. Unchanged regions of a disk give identical pieces, so the next
 * manifest of the same disk stores only the pieces and nodes above its
 * changes. Byte layout in doc/store-format.md.
 */
#include <string.h>

#include <dsnap/snapshot.h>

#include "util/util.h"

#define MANIFEST_MAGIC "DSNPMFST"
#define MANIFEST_VERSION 1
#define MANIFEST_HEADER 32
#define NODE_MAGIC "DSNPNODE"
#define NODE_VERSION 1
#define NODE_HEADER 24
#define NODE_MAX_LEVEL 16
#define PUT_BATCH 64

static uint32_t node_capacity(uint32_t chunk_size)
{
	return (chunk_size - NODE_HEADER) / DS_CHUNK_ID_SIZE;
}

struct ds_manifest *ds_manifest_new(uint32_t chunk_size, uint64_t disk_size)
{
	struct ds_manifest *m;
	uint64_t count;

	if (chunk_size < DS_CHUNK_SIZE_MIN || chunk_size > DS_CHUNK_SIZE_MAX ||
	    (chunk_size & (chunk_size - 1)))
		return NULL;
	count = disk_size / chunk_size + (disk_size % chunk_size != 0);
	if (count > (SIZE_MAX - MANIFEST_HEADER) / DS_CHUNK_ID_SIZE)
		return NULL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->ids = calloc(count ? count : 1, DS_CHUNK_ID_SIZE);
	if (!m->ids) {
		free(m);
		return NULL;
	}
	m->chunk_size = chunk_size;
	m->disk_size = disk_size;
	m->count = count;
	return m;
}

void ds_manifest_free(struct ds_manifest *m)
{
	if (!m)
		return;
	free(m->ids);
	free(m);
}

/* Stores len bytes of buf as consecutive chunks; ids[ceil(len/cs)] out. */
static int put_stream(struct ds_store *s, const uint8_t *buf, uint64_t len, ds_chunk_id *ids)
{
	uint32_t cs = ds_store_chunk_size(s);
	struct ds_chunk batch[PUT_BATCH];
	uint64_t n = len / cs + (len % cs != 0);

	for (uint64_t i = 0; i < n; i += PUT_BATCH) {
		size_t k = (size_t)MIN((uint64_t)PUT_BATCH, n - i);
		int r;

		for (size_t j = 0; j < k; j++) {
			uint64_t off = (i + j) * cs;
			batch[j].data = (void *)(buf + off);
			batch[j].len = (uint32_t)MIN((uint64_t)cs, len - off);
		}
		r = ds_store_put(s, batch, k);
		if (r < 0)
			return r;
		for (size_t j = 0; j < k; j++)
			ids[i + j] = batch[j].id;
	}
	return 0;
}

int ds_manifest_save(struct ds_store *s, const struct ds_manifest *m, ds_chunk_id *root)
{
	uint32_t cs = ds_store_chunk_size(s), cap = node_capacity(cs);
	_cleanup_free_ uint8_t *stream = NULL;
	_cleanup_free_ ds_chunk_id *ids = NULL;
	_cleanup_free_ uint8_t *node = NULL;
	uint64_t len, n;
	uint8_t level = 0;
	int r;

	if (m->chunk_size != cs)
		return -EINVAL;
	len = MANIFEST_HEADER + m->count * DS_CHUNK_ID_SIZE;
	stream = malloc(len);
	n = len / cs + (len % cs != 0);
	ids = calloc(n, sizeof(*ids));
	node = malloc(cs);
	if (!stream || !ids || !node)
		return -ENOMEM;
	memcpy(stream, MANIFEST_MAGIC, 8);
	put_le32(stream + 8, MANIFEST_VERSION);
	put_le32(stream + 12, m->chunk_size);
	put_le64(stream + 16, m->disk_size);
	put_le64(stream + 24, m->count);
	memcpy(stream + MANIFEST_HEADER, m->ids, m->count * DS_CHUNK_ID_SIZE);
	r = put_stream(s, stream, len, ids);
	if (r < 0)
		return r;

	/* Build node levels until a single node remains. A node of level L
	 * covers span(L) = cs * cap^(L-1) bytes of the stream (less at the
	 * stream's end). Nodes overwrite ids[] in place: node i is stored
	 * after reading its children, which start at index i * cap >= i. */
	uint64_t span = cs;
	do {
		uint64_t nodes = n / cap + (n % cap != 0);

		if (++level > NODE_MAX_LEVEL)
			return -E2BIG;
		for (uint64_t i = 0; i < nodes; i++) {
			uint64_t first = i * cap, k = MIN((uint64_t)cap, n - first);
			uint64_t covered = MIN(k * span, len - first * span);
			struct ds_chunk c;

			memset(node, 0, NODE_HEADER);
			memcpy(node, NODE_MAGIC, 8);
			node[8] = NODE_VERSION;
			node[9] = level;
			put_le32(node + 12, (uint32_t)k);
			put_le64(node + 16, covered);
			memcpy(node + NODE_HEADER, &ids[first], k * DS_CHUNK_ID_SIZE);
			c.data = node;
			c.len = (uint32_t)(NODE_HEADER + k * DS_CHUNK_ID_SIZE);
			r = ds_store_put(s, &c, 1);
			if (r < 0)
				return r;
			ids[i] = c.id;
		}
		n = nodes;
		if (__builtin_mul_overflow(span, (uint64_t)cap, &span))
			span = UINT64_MAX;
	} while (n > 1);
	*root = ids[0];
	return 0;
}

/*
 * Walks the tree under root: calls visit() for every node and piece id,
 * and returns the reassembled stream (*stream, *len; yours to free).
 */
typedef int (*walk_fn)(const ds_chunk_id *id, void *opaque);

static int parse_node(const uint8_t *p, uint32_t plen, uint32_t cap, uint8_t *level,
		      uint32_t *count, uint64_t *covered)
{
	if (plen < NODE_HEADER || memcmp(p, NODE_MAGIC, 8) != 0)
		return -EBADMSG;
	if (p[8] != NODE_VERSION)
		return -EPROTONOSUPPORT;
	*level = p[9];
	*count = get_le32(p + 12);
	*covered = get_le64(p + 16);
	if (*level < 1 || *level > NODE_MAX_LEVEL || *count == 0 || *count > cap ||
	    plen != NODE_HEADER + *count * DS_CHUNK_ID_SIZE)
		return -EBADMSG;
	return 0;
}

static int manifest_walk(struct ds_store *s, const ds_chunk_id *root, walk_fn visit,
			 void *opaque, uint8_t **stream_out, uint64_t *len_out)
{
	uint32_t cs = ds_store_chunk_size(s), cap = node_capacity(cs);
	_cleanup_free_ uint8_t *buf = malloc(cs);
	_cleanup_free_ ds_chunk_id *cur = malloc(sizeof(*cur));
	_cleanup_free_ uint8_t *stream = NULL;
	uint64_t ncur = 1, total = 0;
	uint8_t want = 0;
	int r;

	if (!buf || !cur)
		return -ENOMEM;
	cur[0] = *root;
	if (ds_chunk_id_is_zero(root))
		return -EBADMSG;
	/* Descend level by level; cur holds the ids of one level's nodes. */
	for (;;) {
		_cleanup_free_ ds_chunk_id *next = NULL;
		uint64_t nnext = 0, covered_sum = 0;
		uint8_t level = 0;

		for (uint64_t i = 0; i < ncur; i++) {
			struct ds_chunk c = {.id = cur[i], .data = buf};
			uint32_t count;
			uint64_t covered;
			ds_chunk_id *grown;

			if (ds_chunk_id_is_zero(&cur[i]))
				return -EBADMSG;
			r = ds_store_get(s, &c, 1);
			if (r < 0)
				return r;
			r = parse_node(buf, c.len, cap, &level, &count, &covered);
			if (r < 0)
				return r;
			if (i == 0 && want == 0) {
				want = level;
				total = covered;
			}
			if (level != want)
				return -EBADMSG;
			if (visit && (r = visit(&cur[i], opaque)) < 0)
				return r;
			covered_sum += covered;
			if (nnext + count > SIZE_MAX / sizeof(*next))
				return -E2BIG;
			grown = realloc(next, (nnext + count) * sizeof(*next));
			if (!grown)
				return -ENOMEM;
			next = grown;
			memcpy(&next[nnext], buf + NODE_HEADER, count * DS_CHUNK_ID_SIZE);
			nnext += count;
		}
		if (covered_sum != total)
			return -EBADMSG;
		free(cur);
		cur = TAKE_PTR(next);
		ncur = nnext;
		if (want == 1)
			break;
		want--;
	}

	/* cur now lists the stream's pieces. */
	if (total < MANIFEST_HEADER || total > (uint64_t)ncur * cs || total <= (ncur - 1) * (uint64_t)cs)
		return -EBADMSG;
	stream = malloc(total);
	if (!stream)
		return -ENOMEM;
	for (uint64_t i = 0; i < ncur; i++) {
		uint64_t off = i * cs;
		uint32_t len = (uint32_t)MIN((uint64_t)cs, total - off);
		struct ds_chunk c = {.id = cur[i], .data = buf};

		if (!ds_chunk_id_is_zero(&cur[i]) && visit && (r = visit(&cur[i], opaque)) < 0)
			return r;
		r = ds_store_get(s, &c, 1);
		if (r < 0)
			return r;
		if (!ds_chunk_id_is_zero(&cur[i]) && c.len != len)
			return -EBADMSG;
		memcpy(stream + off, buf, len);
	}
	*stream_out = TAKE_PTR(stream);
	*len_out = total;
	return 0;
}

static int parse_stream(const uint8_t *p, uint64_t len, uint32_t cs, struct ds_manifest **out)
{
	struct ds_manifest *m;
	uint64_t disk_size, count;

	if (len < MANIFEST_HEADER || memcmp(p, MANIFEST_MAGIC, 8) != 0)
		return -EBADMSG;
	if (get_le32(p + 8) != MANIFEST_VERSION)
		return -EPROTONOSUPPORT;
	disk_size = get_le64(p + 16);
	count = get_le64(p + 24);
	if (get_le32(p + 12) != cs || (len - MANIFEST_HEADER) / DS_CHUNK_ID_SIZE != count ||
	    (len - MANIFEST_HEADER) % DS_CHUNK_ID_SIZE != 0)
		return -EBADMSG;
	m = ds_manifest_new(cs, disk_size);
	if (!m)
		return -ENOMEM;
	if (m->count != count) {
		ds_manifest_free(m);
		return -EBADMSG;
	}
	memcpy(m->ids, p + MANIFEST_HEADER, count * DS_CHUNK_ID_SIZE);
	*out = m;
	return 0;
}

int ds_manifest_load(struct ds_store *s, const ds_chunk_id *root, struct ds_manifest **out)
{
	_cleanup_free_ uint8_t *stream = NULL;
	uint64_t len;
	int r = manifest_walk(s, root, NULL, NULL, &stream, &len);

	if (r < 0)
		return r;
	return parse_stream(stream, len, ds_store_chunk_size(s), out);
}

struct refs {
	ds_chunk_id **ids;
	size_t *n, *cap;
};

static int refs_add(const ds_chunk_id *id, void *opaque)
{
	struct refs *rf = opaque;

	if (ds_chunk_id_is_zero(id))
		return 0;
	if (*rf->n == *rf->cap) {
		size_t cap = *rf->cap ? *rf->cap * 2 : 1024;
		ds_chunk_id *v = realloc(*rf->ids, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		*rf->ids = v;
		*rf->cap = cap;
	}
	(*rf->ids)[(*rf->n)++] = *id;
	return 0;
}

int ds_manifest_refs(struct ds_store *s, const ds_chunk_id *root, ds_chunk_id **ids, size_t *n,
		     size_t *cap)
{
	struct refs rf = {ids, n, cap};
	_cleanup_free_ uint8_t *stream = NULL;
	struct ds_manifest *m = NULL;
	uint64_t len;
	int r;

	r = manifest_walk(s, root, refs_add, &rf, &stream, &len);
	if (r == 0)
		r = parse_stream(stream, len, ds_store_chunk_size(s), &m);
	for (uint64_t i = 0; r == 0 && i < m->count; i++)
		r = refs_add(&m->ids[i], &rf);
	ds_manifest_free(m);
	return r;
}
