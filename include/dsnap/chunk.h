/*
 * Chunk ids.
 *
 * A disk is cut into fixed-size chunks aligned to disk offsets. A chunk's id
 * is XXH3-128 of its bytes, keyed with the store's secret, in canonical
 * (big-endian) byte order. The all-zero id is reserved: it names an all-zero
 * chunk of any length, which is never stored.
 */
#ifndef DSNAP_CHUNK_H
#define DSNAP_CHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <dsnap/dsnap.h>

#define DS_CHUNK_ID_SIZE 16
#define DS_CHUNK_ID_HEX 33 /* 32 hex digits and a NUL */

#define DS_CHUNK_SIZE_MIN (16u * 1024)
#define DS_CHUNK_SIZE_MAX (4u * 1024 * 1024)
#define DS_CHUNK_SIZE_DEFAULT (64u * 1024)

typedef struct ds_chunk_id {
	uint8_t b[DS_CHUNK_ID_SIZE];
} ds_chunk_id;

/* The reserved id of an all-zero chunk (all 16 bytes zero). */
DS_EXPORT bool ds_chunk_id_is_zero(const ds_chunk_id *id);

/* Writes 32 lowercase hex digits and a NUL into out. */
DS_EXPORT void ds_chunk_id_to_hex(const ds_chunk_id *id, char out[DS_CHUNK_ID_HEX]);

/* Parses exactly 32 hex digits. Returns 0 or -EINVAL. */
DS_EXPORT int ds_chunk_id_from_hex(const char *hex, ds_chunk_id *id);

/* True when len bytes at p are all zero. Fast (word-at-a-time). */
DS_EXPORT bool ds_is_zero(const void *p, size_t len);

#endif
