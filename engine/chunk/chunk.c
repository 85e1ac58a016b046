#include <errno.h>
#include <string.h>

#include <lz4.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "chunk/chunk.h"
#include "util/util.h"

bool ds_chunk_id_is_zero(const ds_chunk_id *id)
{
	static const ds_chunk_id zero;

	return memcmp(id, &zero, sizeof(zero)) == 0;
}

void ds_chunk_id_to_hex(const ds_chunk_id *id, char out[DS_CHUNK_ID_HEX])
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < DS_CHUNK_ID_SIZE; i++) {
		out[2 * i] = digits[id->b[i] >> 4];
		out[2 * i + 1] = digits[id->b[i] & 15];
	}
	out[2 * DS_CHUNK_ID_SIZE] = '\0';
}

int ds_chunk_id_from_hex(const char *hex, ds_chunk_id *id)
{
	ds_chunk_id r;

	for (size_t i = 0; i < DS_CHUNK_ID_SIZE; i++) {
		int hi = hexval(hex[2 * i]);
		int lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		r.b[i] = (uint8_t)(hi << 4 | lo);
	}
	if (hex[2 * DS_CHUNK_ID_SIZE] != '\0')
		return -EINVAL;
	*id = r;
	return 0;
}

bool ds_is_zero(const void *p, size_t len)
{
	const uint8_t *b = p;
	uint64_t acc = 0;

	/* Bytes up to 8-byte alignment, then words in blocks of 8 (one
	 * branch per 64 bytes), then the tail. */
	while (len > 0 && ((uintptr_t)b & 7)) {
		if (*b)
			return false;
		b++;
		len--;
	}
	while (len >= 64) {
		const uint64_t *w = (const uint64_t *)(const void *)b;
		acc = w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
		if (acc)
			return false;
		b += 64;
		len -= 64;
	}
	while (len > 0) {
		if (*b)
			return false;
		b++;
		len--;
	}
	return true;
}

void chunk_hash(const uint8_t secret[CHUNK_SECRET_SIZE], const void *data, size_t len,
		ds_chunk_id *id)
{
	XXH128_hash_t h = XXH3_128bits_withSecret(data, len, secret, CHUNK_SECRET_SIZE);
	XXH128_canonical_t c;

	XXH128_canonicalFromHash(&c, h);
	memcpy(id->b, c.digest, sizeof(id->b));
	/* The zero id is reserved for all-zero chunks; a real hash of zero
	 * (probability 2^-128) is nudged so it can never alias them. */
	if (ds_chunk_id_is_zero(id))
		id->b[15] = 1;
}

uint32_t chunk_compress_bound(uint32_t len)
{
	return (uint32_t)LZ4_compressBound((int)len);
}

uint32_t chunk_compress(const void *src, uint32_t len, void *dst, uint8_t *codec)
{
	int n = LZ4_compress_default(src, dst, (int)len, LZ4_compressBound((int)len));

	if (n > 0 && (uint32_t)n < len) {
		*codec = CHUNK_CODEC_LZ4;
		return (uint32_t)n;
	}
	memcpy(dst, src, len);
	*codec = CHUNK_CODEC_RAW;
	return len;
}

int chunk_decompress(uint8_t codec, const void *src, uint32_t stored_len, void *dst,
		     uint32_t raw_len)
{
	switch (codec) {
	case CHUNK_CODEC_RAW:
		if (stored_len != raw_len)
			return -EBADMSG;
		if (dst != src)
			memcpy(dst, src, raw_len);
		return 0;
	case CHUNK_CODEC_LZ4: {
		int n = LZ4_decompress_safe(src, dst, (int)stored_len, (int)raw_len);
		return n == (int)raw_len ? 0 : -EBADMSG;
	}
	default:
		return -EPROTONOSUPPORT;
	}
}
