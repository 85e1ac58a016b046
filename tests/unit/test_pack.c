/*
 * Tests of pack framing (engine/store/pack.c): record headers, pack headers
 * and pack file names, including the byte layout doc/store-format.md fixes.
 */
#include "testutil.h"

#include <dsnap/chunk.h>

#include "chunk/chunk.h"
#include "store/pack.h"

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/*
 * A record buffer big enough for any payload a parsed header may claim
 * (stored_len <= raw_len <= DS_CHUNK_SIZE_MAX), so rec_check() never reads
 * past it even when a flipped length survives rec_parse().
 */
#define REC_BUF_SIZE (REC_HEADER_SIZE + DS_CHUNK_SIZE_MAX)

static uint8_t *make_record(uint8_t codec, uint32_t raw_len, uint32_t stored_len,
			    const ds_chunk_id *id, uint64_t seed)
{
	uint8_t *rec = calloc(1, REC_BUF_SIZE);

	assert_non_null(rec);
	fill_random(rec + REC_HEADER_SIZE, stored_len, seed);
	rec_seal(rec, codec, raw_len, stored_len, id);
	return rec;
}

static void test_rec_round_trip(void **state)
{
	static const uint32_t lens[][2] = {
		{1, 1}, {100, 100}, {65536, 65536}, {65536, 1000}, {DS_CHUNK_SIZE_MAX, 17},
		{DS_CHUNK_SIZE_MAX, DS_CHUNK_SIZE_MAX},
	};
	struct rec_header h;
	ds_chunk_id id;

	(void)state;
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		uint8_t codec = lens[i][0] == lens[i][1] ? CHUNK_CODEC_RAW : CHUNK_CODEC_LZ4;
		uint8_t *rec;

		fill_random(&id, sizeof(id), i);
		rec = make_record(codec, lens[i][0], lens[i][1], &id, i + 50);
		memset(&h, 0xee, sizeof(h));
		assert_int_equal(rec_parse(rec, &h), 0);
		assert_int_equal(h.codec, codec);
		assert_int_equal(h.raw_len, lens[i][0]);
		assert_int_equal(h.stored_len, lens[i][1]);
		assert_memory_equal(&h.id, &id, sizeof(id));
		assert_int_equal(rec_check(&h, rec, rec + REC_HEADER_SIZE), 0);
		free(rec);
	}
}

/* The on-disk layout: all integers little-endian (doc/store-format.md). */
static void test_rec_layout(void **state)
{
	ds_chunk_id id;
	uint8_t *rec;

	(void)state;
	for (int i = 0; i < DS_CHUNK_ID_SIZE; i++)
		id.b[i] = (uint8_t)(0xa0 + i);
	rec = make_record(CHUNK_CODEC_LZ4, 0x12345, 0x1234, &id, 1);
	assert_memory_equal(rec, "DSCK", 4);
	assert_int_equal(le32(rec), REC_MAGIC);
	assert_int_equal(rec[4], REC_VERSION);
	assert_int_equal(rec[5], CHUNK_CODEC_LZ4);
	assert_int_equal(rec[6], 0);
	assert_int_equal(rec[7], 0);
	assert_int_equal(le32(rec + 8), 0x12345);
	assert_int_equal(le32(rec + 12), 0x1234);
	assert_memory_equal(rec + 16, id.b, DS_CHUNK_ID_SIZE);
	free(rec);
}

/*
 * Every single-bit flip and every whole-byte flip of the header or payload
 * is caught by rec_parse() or rec_check(). A reader that trusts a record
 * only after both pass can then never return damaged bytes undetected.
 */
static void flip_all(uint8_t codec, uint32_t raw_len, uint32_t stored_len)
{
	struct rec_header h;
	ds_chunk_id id;
	uint8_t *rec, *orig;
	size_t total = REC_HEADER_SIZE + stored_len;

	fill_random(&id, sizeof(id), raw_len);
	orig = make_record(codec, raw_len, stored_len, &id, stored_len);
	rec = malloc(REC_BUF_SIZE);
	assert_non_null(rec);
	memcpy(rec, orig, REC_BUF_SIZE);
	for (size_t pos = 0; pos < total; pos++) {
		for (int m = 0; m < 9; m++) {
			uint8_t mask = m < 8 ? (uint8_t)(1u << m) : 0xff;

			rec[pos] ^= mask;
			if (rec_parse(rec, &h) == 0 &&
			    rec_check(&h, rec, rec + REC_HEADER_SIZE) == 0)
				fail_msg("flip 0x%02x at byte %zu of a %zu-byte record missed",
					 mask, pos, total);
			rec[pos] ^= mask;
		}
	}
	assert_memory_equal(rec, orig, total);
	assert_int_equal(rec_parse(rec, &h), 0);
	assert_int_equal(rec_check(&h, rec, rec + REC_HEADER_SIZE), 0);
	free(rec);
	free(orig);
}

static void test_rec_flips_detected(void **state)
{
	(void)state;
	flip_all(CHUNK_CODEC_RAW, 200, 200);
	flip_all(CHUNK_CODEC_LZ4, 16384, 300);
	flip_all(CHUNK_CODEC_RAW, 1, 1);
}

static void test_rec_parse_rejects(void **state)
{
	struct rec_header h;
	ds_chunk_id id;
	uint8_t *rec;

	(void)state;
	fill_random(&id, sizeof(id), 3);
	/* Headers that are sealed (checksum right) but say impossible things. */
	rec = make_record(CHUNK_CODEC_RAW, 0, 0, &id, 1);
	assert_int_equal(rec_parse(rec, &h), -EBADMSG);
	free(rec);
	rec = make_record(CHUNK_CODEC_LZ4, 100, 0, &id, 1);
	assert_int_equal(rec_parse(rec, &h), -EBADMSG);
	free(rec);
	rec = make_record(CHUNK_CODEC_LZ4, 100, 101, &id, 1);
	assert_int_equal(rec_parse(rec, &h), -EBADMSG);
	free(rec);
	rec = make_record(CHUNK_CODEC_LZ4, DS_CHUNK_SIZE_MAX + 1, 100, &id, 1);
	assert_int_equal(rec_parse(rec, &h), -EBADMSG);
	free(rec);

	/* Version and reserved bytes. */
	rec = make_record(CHUNK_CODEC_RAW, 100, 100, &id, 1);
	rec[4] = REC_VERSION + 1;
	assert_int_equal(rec_parse(rec, &h), -EBADMSG);
	rec[4] = REC_VERSION;
	rec[7] = 1;
	assert_int_equal(rec_parse(rec, &h), -EBADMSG);
	rec[7] = 0;
	assert_int_equal(rec_parse(rec, &h), 0);
	/* An all-zero header (a hole in a sparse pack) is not a record. */
	memset(rec, 0, REC_HEADER_SIZE);
	assert_int_equal(rec_parse(rec, &h), -EBADMSG);
	free(rec);
}

/* The checksum binds the header to the payload: a record's header moved
 * onto another payload of the same length fails. */
static void test_rec_header_payload_bound(void **state)
{
	struct rec_header h;
	ds_chunk_id id;
	uint8_t *a, *b;

	(void)state;
	fill_random(&id, sizeof(id), 4);
	a = make_record(CHUNK_CODEC_RAW, 500, 500, &id, 10);
	b = make_record(CHUNK_CODEC_RAW, 500, 500, &id, 11);
	assert_int_equal(rec_parse(a, &h), 0);
	assert_int_equal(rec_check(&h, a, b + REC_HEADER_SIZE), -EBADMSG);
	assert_int_equal(rec_check(&h, a, a + REC_HEADER_SIZE), 0);
	free(a);
	free(b);
}

/* ---- pack header ---------------------------------------------------------- */

static void test_pack_header(void **state)
{
	uint8_t hdr[PACK_HEADER_SIZE], sid[16], other[16];

	(void)state;
	fill_random(sid, sizeof(sid), 1);
	fill_random(other, sizeof(other), 2);
	memset(hdr, 0xcc, sizeof(hdr));
	pack_header_fill(hdr, 0x01020304, sid);

	assert_memory_equal(hdr, PACK_MAGIC, 8);
	assert_int_equal(le32(hdr + 8), PACK_VERSION);
	assert_int_equal(le32(hdr + 12), 0x01020304);
	assert_memory_equal(hdr + 16, sid, 16);

	assert_int_equal(pack_header_check(hdr, 0x01020304, sid), 0);
	assert_int_equal(pack_header_check(hdr, 0x01020305, sid), -EBADMSG);
	assert_int_equal(pack_header_check(hdr, 0x01020304, other), -EBADMSG);

	/* A newer version is refused as such, not as damage. */
	hdr[8] = PACK_VERSION + 1;
	assert_int_equal(pack_header_check(hdr, 0x01020304, sid), -EPROTONOSUPPORT);
	hdr[8] = PACK_VERSION;

	/* Every byte of the header matters. */
	for (int pos = 0; pos < PACK_HEADER_SIZE; pos++) {
		for (int m = 0; m < 8; m++) {
			hdr[pos] ^= (uint8_t)(1u << m);
			if (pack_header_check(hdr, 0x01020304, sid) == 0)
				fail_msg("flipped bit %d of byte %d not detected", m, pos);
			hdr[pos] ^= (uint8_t)(1u << m);
		}
	}
	memset(hdr, 0, sizeof(hdr));
	assert_int_not_equal(pack_header_check(hdr, 0, sid), 0);
}

/* ---- pack names ------------------------------------------------------------- */

static void test_pack_name(void **state)
{
	static const uint32_t ids[] = {
		0, 1, 9, 10, 0xff, 0x1000, 0x7fffffff, 0xdeadbeef, UINT32_MAX,
	};
	char name[PACK_NAME_MAX];
	uint32_t id;

	(void)state;
	/* Names are relative to the packs/ folder (store.c opens them with
	 * openat(packs_fd, ...)). */
	pack_name(1, name);
	assert_string_equal(name, "00000001.pack");
	pack_name(0xdeadbeef, name);
	assert_string_equal(name, "deadbeef.pack");
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		pack_name(ids[i], name);
		assert_int_equal(strlen(name), 13);
		id = ids[i] ^ 1;
		assert_int_equal(pack_name_parse(name, &id), 0);
		assert_int_equal(id, ids[i]);
	}
}

static void test_pack_name_parse_rejects(void **state)
{
	static const char *const bad[] = {
		"",
		".pack",
		"1.pack",
		"0000001.pack",
		"000000001.pack",
		"0000000g.pack",
		"DEADBEEF.pack",
		"00000001.pac",
		"00000001.packx",
		"00000001.pack.tmp",
		"00000001.PACK",
		"00000001",
		"00000001.",
		"00000001 pack",
		" 0000001.pack",
		"-0000001.pack",
		"lock",
		"store.db",
		".",
		"..",
	};
	uint32_t id;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		id = 12345;
		if (pack_name_parse(bad[i], &id) != -EINVAL)
			fail_msg("\"%s\" parsed as a pack name", bad[i]);
		assert_int_equal(id, 12345);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rec_round_trip),
		cmocka_unit_test(test_rec_layout),
		cmocka_unit_test(test_rec_flips_detected),
		cmocka_unit_test(test_rec_parse_rejects),
		cmocka_unit_test(test_rec_header_payload_bound),
		cmocka_unit_test(test_pack_header),
		cmocka_unit_test(test_pack_name),
		cmocka_unit_test(test_pack_name_parse_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
