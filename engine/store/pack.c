#include <errno.h>
#include <stdio.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "store/pack.h"
#include "util/util.h"

/* XXH3-64 over the first 32 header bytes, then the payload. */
static uint64_t rec_checksum(const uint8_t *hdr, const void *payload, uint32_t len)
{
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, hdr, 32);
	XXH3_64bits_update(&st, payload, len);
	return XXH3_64bits_digest(&st);
}

void rec_seal(uint8_t *rec, uint8_t codec, uint32_t raw_len, uint32_t stored_len,
	      const ds_chunk_id *id)
{
	put_le32(rec, REC_MAGIC);
	rec[4] = REC_VERSION;
	rec[5] = codec;
	put_le16(rec + 6, 0);
	put_le32(rec + 8, raw_len);
	put_le32(rec + 12, stored_len);
	memcpy(rec + 16, id->b, DS_CHUNK_ID_SIZE);
	put_le64(rec + 32, rec_checksum(rec, rec + REC_HEADER_SIZE, stored_len));
}

int rec_parse(const uint8_t hdr[REC_HEADER_SIZE], struct rec_header *h)
{
	if (get_le32(hdr) != REC_MAGIC || hdr[4] != REC_VERSION || hdr[6] || hdr[7])
		return -EBADMSG;
	h->codec = hdr[5];
	h->raw_len = get_le32(hdr + 8);
	h->stored_len = get_le32(hdr + 12);
	memcpy(h->id.b, hdr + 16, DS_CHUNK_ID_SIZE);
	h->checksum = get_le64(hdr + 32);
	if (h->raw_len == 0 || h->raw_len > DS_CHUNK_SIZE_MAX || h->stored_len == 0 ||
	    h->stored_len > h->raw_len)
		return -EBADMSG;
	return 0;
}

int rec_check(const struct rec_header *h, const uint8_t hdr[REC_HEADER_SIZE],
	      const void *payload)
{
	return rec_checksum(hdr, payload, h->stored_len) == h->checksum ? 0 : -EBADMSG;
}

void pack_header_fill(uint8_t hdr[PACK_HEADER_SIZE], uint32_t pack_id,
		      const uint8_t store_id[16])
{
	memcpy(hdr, PACK_MAGIC, 8);
	put_le32(hdr + 8, PACK_VERSION);
	put_le32(hdr + 12, pack_id);
	memcpy(hdr + 16, store_id, 16);
}

int pack_header_check(const uint8_t hdr[PACK_HEADER_SIZE], uint32_t pack_id,
		      const uint8_t store_id[16])
{
	if (memcmp(hdr, PACK_MAGIC, 8) != 0 || get_le32(hdr + 12) != pack_id ||
	    memcmp(hdr + 16, store_id, 16) != 0)
		return -EBADMSG;
	if (get_le32(hdr + 8) != PACK_VERSION)
		return -EPROTONOSUPPORT;
	return 0;
}

void pack_name(uint32_t pack_id, char out[PACK_NAME_MAX])
{
	snprintf(out, PACK_NAME_MAX, "%08x.pack", pack_id);
}

int pack_name_parse(const char *name, uint32_t *id)
{
	uint32_t v = 0;

	for (int i = 0; i < 8; i++) {
		char c = name[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			return -EINVAL;
		v = v << 4 | (uint32_t)d;
	}
	if (strcmp(name + 8, ".pack") != 0)
		return -EINVAL;
	*id = v;
	return 0;
}
