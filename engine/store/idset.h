/* A set of chunk ids (open addressing; no removal, cleared whole). Ids are
 * keyed hashes, so their first 8 bytes serve as the hash. Not thread-safe. */
#ifndef DSNAP_STORE_IDSET_H
#define DSNAP_STORE_IDSET_H
#ifndef DSNAP_INTERNAL
#error "engine/store/idset.h is private to libdsnap"
#endif

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <dsnap/chunk.h>

struct idset {
	ds_chunk_id *slot; /* the zero id marks a free slot (it is never stored) */
	size_t cap, n;     /* cap is 0 or a power of two */
};

static inline size_t idset_home(const struct idset *s, const ds_chunk_id *id)
{
	uint64_t h;

	memcpy(&h, id->b, sizeof(h));
	return (size_t)h & (s->cap - 1);
}

static inline bool idset_has(const struct idset *s, const ds_chunk_id *id)
{
	if (s->n == 0)
		return false;
	for (size_t i = idset_home(s, id);; i = (i + 1) & (s->cap - 1)) {
		if (ds_chunk_id_is_zero(&s->slot[i]))
			return false;
		if (memcmp(&s->slot[i], id, sizeof(*id)) == 0)
			return true;
	}
}

static inline void idset_put(struct idset *s, const ds_chunk_id *id)
{
	size_t i = idset_home(s, id);

	while (!ds_chunk_id_is_zero(&s->slot[i])) {
		if (memcmp(&s->slot[i], id, sizeof(*id)) == 0)
			return;
		i = (i + 1) & (s->cap - 1);
	}
	s->slot[i] = *id;
	s->n++;
}

/* Adds id (not the zero id). 0 or -ENOMEM. Keeps the load under 1/2. */
static inline int idset_add(struct idset *s, const ds_chunk_id *id)
{
	if ((s->n + 1) * 2 > s->cap) {
		struct idset g = {calloc(s->cap ? s->cap * 2 : 64, sizeof(ds_chunk_id)),
				  s->cap ? s->cap * 2 : 64, 0};
		if (!g.slot)
			return -ENOMEM;
		for (size_t i = 0; i < s->cap; i++)
			if (!ds_chunk_id_is_zero(&s->slot[i]))
				idset_put(&g, &s->slot[i]);
		free(s->slot);
		*s = g;
	}
	idset_put(s, id);
	return 0;
}

static inline void idset_clear(struct idset *s)
{
	if (s->n)
		memset(s->slot, 0, s->cap * sizeof(*s->slot));
	s->n = 0;
}

static inline void idset_free(struct idset *s)
{
	free(s->slot);
	memset(s, 0, sizeof(*s));
}

#endif
