/*
 * Tests of the chunk codec (engine/chunk): zero detection, id hex form,
 * keyed ids and the LZ4/raw payload codec.
 */
#include "testutil.h"

#include <dsnap/chunk.h>

#include "chunk/chunk.h"

/* ---- ds_is_zero ------------------------------------------------------------ */

static void test_is_zero_lengths_and_alignments(void **state)
{
	static uint64_t words[1100]; /* 8-byte aligned, zero */
	uint8_t *buf = (uint8_t *)words;

	(void)state;
	assert_true(ds_is_zero(buf, 0));
	for (size_t off = 0; off < 16; off++)
		for (size_t len = 0; len <= 300; len++)
			assert_true(ds_is_zero(buf + off, len));
	assert_true(ds_is_zero(buf + 3, sizeof(words) - 3));
}

/*
 * A single non-zero byte anywhere inside [p, p + len) makes it non-zero, and
 * one just outside does not: the byte, word and tail loops all have edges.
 */
static void test_is_zero_single_byte(void **state)
{
	static uint64_t words[64];
	uint8_t *base = (uint8_t *)words;
	const size_t len = 200;

	(void)state;
	for (size_t off = 1; off < 17; off++) {
		uint8_t *p = base + off;
		for (size_t i = 0; i < len; i++) {
			for (unsigned v = 1; v < 256; v <<= 1) {
				p[i] = (uint8_t)v;
				if (ds_is_zero(p, len))
					fail_msg("byte %zu = 0x%x at alignment %zu not seen", i, v,
						 off);
				p[i] = 0;
			}
		}
		p[-1] = 0xff;
		p[len] = 0xff;
		assert_true(ds_is_zero(p, len));
		p[-1] = 0;
		p[len] = 0;
	}
}

static void test_is_zero_large(void **state)
{
	const size_t len = 4u << 20;
	uint8_t *buf = calloc(1, len + 1);

	(void)state;
	assert_non_null(buf);
	assert_true(ds_is_zero(buf, len));
	buf[len - 1] = 1;
	assert_false(ds_is_zero(buf, len));
	assert_true(ds_is_zero(buf, len - 1));
	buf[len - 1] = 0;
	buf[len / 2 + 3] = 0x80;
	assert_false(ds_is_zero(buf, len));
	assert_false(ds_is_zero(buf + 1, len - 1));
	free(buf);
}

/* ---- ids and hex ----------------------------------------------------------- */

static void test_id_is_zero(void **state)
{
	ds_chunk_id id;

	(void)state;
	memset(&id, 0, sizeof(id));
	assert_true(ds_chunk_id_is_zero(&id));
	for (int i = 0; i < DS_CHUNK_ID_SIZE; i++) {
		id.b[i] = 1;
		assert_false(ds_chunk_id_is_zero(&id));
		id.b[i] = 0;
	}
}

static void test_hex_round_trip(void **state)
{
	char hex[DS_CHUNK_ID_HEX];
	ds_chunk_id id, back;

	(void)state;
	for (uint64_t seed = 0; seed < 200; seed++) {
		fill_random(&id, sizeof(id), seed);
		memset(hex, 'x', sizeof(hex));
		ds_chunk_id_to_hex(&id, hex);
		assert_int_equal(strlen(hex), 32);
		for (int i = 0; i < 32; i++)
			assert_non_null(strchr("0123456789abcdef", hex[i]));
		assert_int_equal(ds_chunk_id_from_hex(hex, &back), 0);
		assert_memory_equal(&id, &back, sizeof(id));
	}

	/* Known value: byte order is the array order, lower case. */
	for (int i = 0; i < DS_CHUNK_ID_SIZE; i++)
		id.b[i] = (uint8_t)(i * 17 + 10);
	ds_chunk_id_to_hex(&id, hex);
	assert_string_equal(hex, "0a1b2c3d4e5f708192a3b4c5d6e7f809");

	/* Upper case is accepted on input. */
	assert_int_equal(ds_chunk_id_from_hex("0A1B2C3D4E5F708192A3B4C5D6E7F809", &back), 0);
	assert_memory_equal(&id, &back, sizeof(id));

	memset(&id, 0, sizeof(id));
	ds_chunk_id_to_hex(&id, hex);
	assert_string_equal(hex, "00000000000000000000000000000000");
}

static void test_hex_bad(void **state)
{
	static const char *const bad[] = {
		"",
		"0",
		"0123456789abcdef0123456789abcde",   /* 31 digits */
		"0123456789abcdef0123456789abcdef0", /* 33 digits */
		"0123456789abcdef0123456789abcdef ", /* trailing space */
		" 0123456789abcdef0123456789abcdef", /* leading space */
		"0123456789abcdefg123456789abcdef",
		"0x23456789abcdef0123456789abcdef",
		"0123456789abcdef0123456789abcde-",
		"-123456789abcdef0123456789abcdef",
	};
	ds_chunk_id id, orig;
	char hex[40];

	(void)state;
	fill_random(&orig, sizeof(orig), 7);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		id = orig;
		if (ds_chunk_id_from_hex(bad[i], &id) != -EINVAL)
			fail_msg("\"%s\" was accepted", bad[i]);
		/* A failed parse leaves the id alone. */
		assert_memory_equal(&id, &orig, sizeof(id));
	}
	/* A bad character at every position. */
	for (int pos = 0; pos < 32; pos++) {
		static const char badc[] = {'g', 'G', ':', '/', '@', '`', ' ', '\n', '\0'};
		for (size_t k = 0; k < sizeof(badc); k++) {
			memset(hex, 'a', 32);
			hex[32] = '\0';
			hex[pos] = badc[k];
			id = orig;
			assert_int_equal(ds_chunk_id_from_hex(hex, &id), -EINVAL);
			assert_memory_equal(&id, &orig, sizeof(id));
		}
	}
}

/* ---- keyed ids -------------------------------------------------------------- */

static void test_hash_keyed(void **state)
{
	uint8_t s1[CHUNK_SECRET_SIZE], s2[CHUNK_SECRET_SIZE], s3[CHUNK_SECRET_SIZE];
	uint8_t data[8192];
	ds_chunk_id a, b, c;

	(void)state;
	fill_random(s1, sizeof(s1), 1);
	memcpy(s2, s1, sizeof(s2));
	s2[CHUNK_SECRET_SIZE - 1] ^= 1; /* differs only in its last byte */
	fill_random(s3, sizeof(s3), 3); /* another store's secret */
	fill_random(data, sizeof(data), 2);

	chunk_hash(s1, data, sizeof(data), &a);
	chunk_hash(s1, data, sizeof(data), &b);
	assert_memory_equal(&a, &b, sizeof(a));
	chunk_hash(s2, data, sizeof(data), &c);
	assert_memory_not_equal(&a, &c, sizeof(a));

	/* Short inputs take other paths in XXH3, which read only part of the
	 * secret (not its last bytes below 1 KiB): another store's secret
	 * must still give other ids. */
	for (size_t len = 1; len <= 2000; len += 13) {
		chunk_hash(s1, data, len, &a);
		chunk_hash(s3, data, len, &b);
		assert_memory_not_equal(&a, &b, sizeof(a));
	}

	/* Content, one flipped bit and the length all change the id. */
	chunk_hash(s1, data, sizeof(data), &a);
	data[4000] ^= 0x10;
	chunk_hash(s1, data, sizeof(data), &b);
	data[4000] ^= 0x10;
	assert_memory_not_equal(&a, &b, sizeof(a));
	chunk_hash(s1, data, sizeof(data) - 1, &b);
	assert_memory_not_equal(&a, &b, sizeof(a));

	/* Zero bytes of different lengths are different chunks to the hash. */
	memset(data, 0, sizeof(data));
	chunk_hash(s1, data, 4096, &a);
	chunk_hash(s1, data, 8192, &b);
	assert_memory_not_equal(&a, &b, sizeof(a));
}

static void test_hash_never_zero_id(void **state)
{
	uint8_t secret[CHUNK_SECRET_SIZE];
	uint8_t data[512];
	ds_chunk_id id;

	(void)state;
	memset(data, 0, sizeof(data));
	for (uint64_t k = 0; k < 64; k++) {
		fill_random(secret, sizeof(secret), 100 + k);
		/* All-zero input is the likeliest to meet a degenerate path. */
		for (size_t len = 0; len <= sizeof(data); len += 32) {
			chunk_hash(secret, data, len, &id);
			assert_false(ds_chunk_id_is_zero(&id));
		}
		fill_random(data, sizeof(data), k);
		chunk_hash(secret, data, sizeof(data), &id);
		assert_false(ds_chunk_id_is_zero(&id));
		memset(data, 0, sizeof(data));
	}
}

/* ---- codec -------------------------------------------------------------------- */

static void round_trip(const uint8_t *src, uint32_t len, int want_codec, bool want_smaller)
{
	uint8_t *dst = malloc(chunk_compress_bound(len));
	uint8_t *out = malloc(len);
	uint8_t codec = 0xee;
	uint32_t slen;

	assert_non_null(dst);
	assert_non_null(out);
	assert_true(chunk_compress_bound(len) >= len);
	slen = chunk_compress(src, len, dst, &codec);
	assert_true(slen >= 1 && slen <= chunk_compress_bound(len));
	if (want_codec >= 0)
		assert_int_equal(codec, want_codec);
	if (codec == CHUNK_CODEC_RAW) {
		assert_int_equal(slen, len);
		assert_bytes_equal(dst, src, len);
	} else {
		assert_int_equal(codec, CHUNK_CODEC_LZ4);
		assert_true(slen < len);
	}
	if (want_smaller)
		assert_true(slen <= len / 2);
	memset(out, 0xa5, len);
	assert_int_equal(chunk_decompress(codec, dst, slen, out, len), 0);
	assert_bytes_equal(out, src, len);
	free(dst);
	free(out);
}

static void test_codec_round_trips(void **state)
{
	static const uint32_t lens[] = {
		1, 7, 64, 4095, 16384, 65536, 65536 + 5, 1u << 20, 4u << 20,
	};
	uint8_t *buf = malloc(4u << 20);

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		uint32_t len = lens[i];
		bool big = len >= 4096;

		/* Random bytes do not shrink: stored raw, byte for byte. */
		fill_random(buf, len, len);
		round_trip(buf, len, CHUNK_CODEC_RAW, false);
		/* Zeros, text and sparse data shrink once there is enough of them. */
		memset(buf, 0, len);
		round_trip(buf, len, big ? CHUNK_CODEC_LZ4 : -1, big);
		fill_text(buf, len, len + 1);
		round_trip(buf, len, big ? CHUNK_CODEC_LZ4 : -1, big);
		fill_sparse(buf, len, len + 2);
		round_trip(buf, len, big ? CHUNK_CODEC_LZ4 : -1, false);
		/* Compressible but for one random tail: still LZ4. */
		if (big) {
			memset(buf, 'x', len);
			fill_random(buf + len - 100, 100, 3);
			round_trip(buf, len, CHUNK_CODEC_LZ4, true);
		}
	}
	free(buf);
}

static void test_codec_garbage(void **state)
{
	const uint32_t len = 65536;
	uint8_t *src = malloc(len), *dst = malloc(chunk_compress_bound(len)), *out = malloc(len);
	uint8_t codec;
	uint32_t slen;

	(void)state;
	assert_non_null(src);
	assert_non_null(dst);
	assert_non_null(out);

	/* Random bytes labelled LZ4. */
	for (uint64_t seed = 0; seed < 32; seed++) {
		fill_random(dst, 4096, seed);
		assert_int_equal(chunk_decompress(CHUNK_CODEC_LZ4, dst, 4096, out, len), -EBADMSG);
	}

	fill_text(src, len, 9);
	slen = chunk_compress(src, len, dst, &codec);
	assert_int_equal(codec, CHUNK_CODEC_LZ4);
	/* A valid stream that decodes to fewer or more bytes than expected. */
	assert_int_equal(chunk_decompress(codec, dst, slen, out, len - 1), -EBADMSG);
	{
		uint8_t *big = malloc(len + 1);
		assert_non_null(big);
		assert_int_equal(chunk_decompress(codec, dst, slen, big, len + 1), -EBADMSG);
		free(big);
	}
	/* A cut stream. */
	assert_int_equal(chunk_decompress(codec, dst, slen / 2, out, len), -EBADMSG);
	assert_int_equal(chunk_decompress(codec, dst, 1, out, len), -EBADMSG);

	/* Raw payloads must be exactly raw_len long. */
	assert_int_equal(chunk_decompress(CHUNK_CODEC_RAW, src, len - 1, out, len), -EBADMSG);
	assert_int_equal(chunk_decompress(CHUNK_CODEC_RAW, src, 100, out, 99), -EBADMSG);

	/* Codecs this version does not know. */
	for (unsigned c = 2; c < 256; c++)
		assert_int_equal(chunk_decompress((uint8_t)c, dst, slen, out, len),
				 -EPROTONOSUPPORT);
	free(src);
	free(dst);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_is_zero_lengths_and_alignments),
		cmocka_unit_test(test_is_zero_single_byte),
		cmocka_unit_test(test_is_zero_large),
		cmocka_unit_test(test_id_is_zero),
		cmocka_unit_test(test_hex_round_trip),
		cmocka_unit_test(test_hex_bad),
		cmocka_unit_test(test_hash_keyed),
		cmocka_unit_test(test_hash_never_zero_id),
		cmocka_unit_test(test_codec_round_trips),
		cmocka_unit_test(test_codec_garbage),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
