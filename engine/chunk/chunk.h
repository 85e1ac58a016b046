/*
 * Chunk codec: keyed XXH3-128 ids, zero detection and LZ4 compression of
 * one chunk. Stateless; safe from any thread.
 */
#ifndef DSNAP_CHUNK_CHUNK_H
#define DSNAP_CHUNK_CHUNK_H
#ifndef DSNAP_INTERNAL
#error "engine/chunk/chunk.h is private to libdsnap"
#endif

#include <stdint.h>

#include <dsnap/chunk.h>

/* The secret keying chunk ids: made at store creation, 192 random bytes
 * (XXH3's default secret size; anything >= 136 would do). */
#define CHUNK_SECRET_SIZE 192

enum chunk_codec {
	CHUNK_CODEC_RAW = 0,
	CHUNK_CODEC_LZ4 = 1,
};

void chunk_hash(const uint8_t secret[CHUNK_SECRET_SIZE], const void *data, size_t len,
		ds_chunk_id *id);

/* Room chunk_compress() needs for a chunk of len bytes. */
uint32_t chunk_compress_bound(uint32_t len);

/*
 * Compresses len bytes into dst (chunk_compress_bound(len) bytes). Returns
 * the stored length and sets *codec; when LZ4 does not shrink the chunk the
 * bytes are copied raw. Never fails.
 */
uint32_t chunk_compress(const void *src, uint32_t len, void *dst, uint8_t *codec);

/*
 * Decodes a stored payload into exactly raw_len bytes at dst.
 * Returns 0, -EBADMSG for a payload that does not decode to raw_len bytes,
 * -EPROTONOSUPPORT for an unknown codec.
 */
int chunk_decompress(uint8_t codec, const void *src, uint32_t stored_len, void *dst,
		     uint32_t raw_len);

#endif
