/*
 * Parameter rules of API.md: names, descriptions, tags, tokens, numbers.
 * Lengths count characters (Unicode code points), not bytes.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_priv.h"

/* Decodes one UTF-8 sequence; returns its length, or 0 when malformed
 * (overlong, surrogate, past U+10FFFF, truncated). */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
	uint32_t c;
	size_t n;

	if (len == 0)
		return 0;
	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if ((s[0] & 0xe0) == 0xc0) {
		n = 2;
		c = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		n = 3;
		c = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		n = 4;
		c = s[0] & 0x07;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3f);
	}
	if ((n == 2 && c < 0x80) || (n == 3 && c < 0x800) || (n == 4 && c < 0x10000) ||
	    c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return n;
}

bool utf8_valid(const char *s, size_t len, size_t *chars)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t count = 0;

	while (len > 0) {
		uint32_t cp;
		size_t n = utf8_decode(p, len, &cp);
		if (n == 0 || cp == 0 || (cp < 0x20 && cp != '\t' && cp != '\n') || cp == 0x7f)
			return false;
		p += n;
		len -= n;
		count++;
	}
	if (chars)
		*chars = count;
	return true;
}

#include "api/unicode_letters.h"

/* Unicode letters (general category L, Chinese characters included), by
 * binary search of the generated ranges. */
static bool is_letter(uint32_t cp)
{
	size_t lo = 0, hi = sizeof(unicode_letters) / sizeof(unicode_letters[0]);

	if (cp < 0x80)
		return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (cp < unicode_letters[mid].lo)
			hi = mid;
		else if (cp > unicode_letters[mid].hi)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool starts_with_ci(const char *s, const char *prefix)
{
	return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static bool has_url(const char *s)
{
	return strstr(s, "http://") || strstr(s, "https://");
}

bool valid_name(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t len = strlen(s), chars = 0;

	if (!utf8_valid(s, len, NULL) || starts_with(s, "http://") || starts_with(s, "https://") ||
	    starts_with(s, "auto"))
		return false;
	while (len > 0) {
		uint32_t cp = 0;
		size_t n = utf8_decode(p, len, &cp);
		bool ok;

		if (n == 0)
			return false;
		ok = is_letter(cp) || (chars > 0 && ((cp >= '0' && cp <= '9') || cp == ':' ||
						     cp == '_' || cp == '.' || cp == '-'));
		if (!ok)
			return false;
		p += n;
		len -= n;
		chars++;
	}
	return chars >= 2 && chars <= 128;
}

bool valid_description(const char *s)
{
	size_t chars;

	return utf8_valid(s, strlen(s), &chars) && chars >= 2 && chars <= 256 &&
	       !starts_with(s, "http://") && !starts_with(s, "https://");
}

bool valid_tag_key(const char *s)
{
	size_t chars;

	return utf8_valid(s, strlen(s), &chars) && chars >= 1 && chars <= 128 &&
	       !starts_with_ci(s, "acs:") && !starts_with_ci(s, "aliyun") && !has_url(s);
}

bool valid_tag_value(const char *s)
{
	size_t chars;

	return utf8_valid(s, strlen(s), &chars) && chars <= 128 && !starts_with_ci(s, "acs:") &&
	       !has_url(s);
}

bool valid_client_token(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > 64)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

bool parse_int(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (!*s || strlen(s) > 19 || !isdigit((unsigned char)s[0]))
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

bool parse_bool(const char *s, bool *out)
{
	if (strcasecmp(s, "true") == 0)
		*out = true;
	else if (strcasecmp(s, "false") == 0)
		*out = false;
	else
		return false;
	return true;
}

void free_id_array(char **ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
}

int parse_id_array(const char *s, size_t max, char ***ids_out, size_t *n_out)
{
	json_tokener *tok = json_tokener_new_ex(4);
	json_object *arr;
	char **ids;
	size_t n;

	if (!tok)
		return -ENOMEM;
	arr = json_tokener_parse_ex(tok, s, (int)strlen(s));
	/* Trailing bytes after the array are refused too. */
	if (!arr || json_tokener_get_error(tok) != json_tokener_success ||
	    (size_t)json_tokener_get_parse_end(tok) != strlen(s) ||
	    !json_object_is_type(arr, json_type_array) ||
	    (n = json_object_array_length(arr)) > max) {
		json_object_put(arr);
		json_tokener_free(tok);
		return -EINVAL;
	}
	json_tokener_free(tok);
	ids = calloc(n ? n : 1, sizeof(*ids));
	if (!ids) {
		json_object_put(arr);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		json_object *v = json_object_array_get_idx(arr, i);
		const char *str = json_object_get_string(v);
		if (!json_object_is_type(v, json_type_string) || !str || strlen(str) > 64 ||
		    !(ids[i] = strdup(str))) {
			free_id_array(ids, i);
			json_object_put(arr);
			return -EINVAL;
		}
	}
	json_object_put(arr);
	*ids_out = ids;
	*n_out = n;
	return 0;
}
