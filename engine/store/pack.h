/*
 * Pack files: append-only files of framed chunk records.
 * Byte layout in doc/store-format.md; all integers little-endian.
 */
#ifndef DSNAP_STORE_PACK_H
#define DSNAP_STORE_PACK_H
#ifndef DSNAP_INTERNAL
#error "engine/store/pack.h is private to libdsnap"
#endif

#include <stdint.h>

#include <dsnap/chunk.h>

#define PACK_MAGIC "DSNPPACK"
#define PACK_VERSION 1
#define PACK_HEADER_SIZE 32

#define REC_MAGIC 0x4b435344u /* "DSCK" */
#define REC_VERSION 1
#define REC_HEADER_SIZE 40

struct rec_header {
	uint8_t codec;
	uint32_t raw_len;
	uint32_t stored_len;
	ds_chunk_id id;
	uint64_t checksum;
};

/* Fills the 40 header bytes at rec (payload follows at rec + 40) and its checksum. */
void rec_seal(uint8_t *rec, uint8_t codec, uint32_t raw_len, uint32_t stored_len,
	      const ds_chunk_id *id);

/*
 * Parses and checks a record header; payload (stored_len bytes) is needed
 * for the checksum. Returns 0 or -EBADMSG.
 */
int rec_parse(const uint8_t hdr[REC_HEADER_SIZE], struct rec_header *h);
int rec_check(const struct rec_header *h, const uint8_t hdr[REC_HEADER_SIZE],
	      const void *payload);

void pack_header_fill(uint8_t hdr[PACK_HEADER_SIZE], uint32_t pack_id,
		      const uint8_t store_id[16]);
int pack_header_check(const uint8_t hdr[PACK_HEADER_SIZE], uint32_t pack_id,
		      const uint8_t store_id[16]);

/* "%08x.pack": the file name inside the store's packs/ folder. */
#define PACK_NAME_MAX 32
void pack_name(uint32_t pack_id, char out[PACK_NAME_MAX]);
/* Parses a pack file name; 0 and *id, or -EINVAL. */
int pack_name_parse(const char *name, uint32_t *id);

#endif
