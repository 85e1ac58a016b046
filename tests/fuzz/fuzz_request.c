/*
 * fuzz_request: the API's request path, from form-encoded text to the
 * rendered answer, on a real engine.
 *
 * Notes on the design
 *
 * Each input is one form-encoded request, as dsnapd receives it in a
 * query string or a POST body. It goes through ds_api_parse_form(), then
 * ds_api_handle() twice: as root (every action allowed) and as uid 1000,
 * whom a policy file allows a few actions on one disk, so that both the
 * authorization refusals and the actions behind them are reached. A form
 * that does not parse gets ds_api_reject(), as in dsnapd. Every answer
 * must be a whole JSON object with a RequestId, or with Format=XML a
 * well-formed document starting with "<?xml"; anything else aborts, and
 * ASan, UBSan and LSan catch memory errors and leaks.
 *
 * The engine is real (LLVMFuzzerInitialize): a state folder under $TMPDIR
 * with two registered 1 MiB image files and one accomplished snapshot of
 * the first, in a resource group, with tags. Ids are random, so the
 * harness replaces the placeholders @D0@, @D1@, @S0@ and @RG@ inside
 * values with the fixture's ids; the seed corpus and request.dict use
 * them. Requests change the state (DeleteSnapshot, DeleteDisk, new
 * snapshots up to the quota), so the fixture is rebuilt from scratch every
 * FUZZ_REBUILD_EVERY inputs (default 1000): the catalog stays small and
 * the fixture's ids come back. The copies a CreateSnapshot starts are
 * waited for before the next input (quiesce()). A crash may still depend
 * on the catalog left by earlier inputs; rerun the saved input alone
 * first, and if it does not reproduce, run the corpus in the same order. FUZZ_PRINT=1 in
 * the environment prints every answer; FUZZ_VERBOSE=1 the engine's errors.
 *
 * Safety: the fuzzer runs as root and invents paths, and an action that
 * takes a path or creates storage would touch the host:
 *   - RegisterDisk: Path could name /dev/vda; a CreateSnapshot of it would
 *     then read the whole device into the store. Path is dropped, so the
 *     action stops at MissingParameter.
 *   - CreateDisk with Size makes an image of up to 64 TiB (sparse, but a
 *     snapshot or reset of it would walk it). Size is dropped; CreateDisk
 *     from SnapshotId is kept: it writes one of the fixture's 1 MiB
 *     snapshots into the state folder.
 *   - ExportSnapshot writes a new file at an absolute Path, anywhere. An
 *     absolute Path is replaced with a file in the fixture's folder,
 *     removed after the request; a relative or empty one is kept for the
 *     checks that refuse it.
 *   - ResetDisk overwrites a disk. It is kept as it is: with RegisterDisk
 *     and CreateDisk-with-Size disarmed, every registered disk is one of
 *     the fixture's 1 MiB images (or a disk CreateDisk made from them).
 *   - CollectGarbage waits for running copies and rewrites packs: slow,
 *     and the daemon's maintenance job rather than request parsing. It
 *     runs for uid 1000 only, whom the policy refuses it.
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <json-c/json.h>

#include <dsnap/api.h>
#include <dsnap/engine.h>

#define IMAGE_SIZE (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fixture {
	char dir[PATH_MAX];
	char state[PATH_MAX];
	char policy[PATH_MAX];
	char export_path[PATH_MAX];
	struct ds_engine *e;
	struct ds_api *a;
	char disk[2][DS_ID_SIZE];
	char snap[DS_ID_SIZE];
	char rg[DS_ID_SIZE + 8];
};

static struct fixture fx;
static unsigned long runs, rebuild_every = 1000;
static bool verbose, print_answers;

static void fail(const char *what, int r)
{
	fprintf(stderr, "fuzz_request: %s: %s\n", what, strerror(r < 0 ? -r : r));
	abort();
}

static void quiet_log(enum ds_log_level level, const char *msg, void *opaque)
{
	if (verbose)
		fprintf(stderr, "dsnap: %s\n", msg);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	remove(path);
	return 0;
}

static void write_image(const char *path, unsigned seed)
{
	static uint8_t buf[IMAGE_SIZE];
	FILE *f = fopen(path, "we");

	if (!f)
		fail(path, errno);
	/* Varied, compressible bytes with a hole-like zero stretch. */
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = i >= IMAGE_SIZE / 2 && i < IMAGE_SIZE * 3 / 4
				 ? 0
				 : (uint8_t)((i * 2654435761u) >> 24 ^ seed);
	if (fwrite(buf, 1, sizeof(buf), f) != sizeof(buf) || fclose(f) != 0)
		fail(path, EIO);
}

static void fixture_up(void)
{
	const char *tmp = getenv("TMPDIR");
	struct ds_api_options ao = {0};
	struct ds_snapshot_params sp = {0};
	struct ds_tag tags[2] = {{"env", "dev"}, {"team", ""}};
	char path[PATH_MAX + 16];
	FILE *f;
	int r;

	snprintf(fx.dir, sizeof(fx.dir), "%s/dsnap-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(fx.dir))
		fail("mkdtemp", errno);
	snprintf(fx.state, sizeof(fx.state), "%s/state", fx.dir);
	snprintf(fx.export_path, sizeof(fx.export_path), "%s/export.img", fx.dir);
	r = ds_engine_open(fx.state, NULL, &fx.e);
	if (r < 0)
		fail("ds_engine_open", r);
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/disk%d.img", fx.dir, i);
		write_image(path, (unsigned)i);
		r = ds_disk_register(fx.e, path, i ? "second" : "first", fx.disk[i]);
		if (r < 0)
			fail("ds_disk_register", r);
	}
	r = ds_rg_create(fx.e, "fuzz-group", fx.rg);
	if (r < 0)
		fail("ds_rg_create", r);
	sp.name = "nightly";
	sp.description = "made by the fuzz fixture";
	sp.retention_days = 7;
	sp.resource_group = fx.rg;
	sp.ntags = 2;
	sp.tags = tags;
	r = ds_snapshot_create(fx.e, fx.disk[0], &sp, fx.snap);
	if (r < 0)
		fail("ds_snapshot_create", r);
	r = ds_snapshot_wait(fx.e, fx.snap);
	if (r < 0)
		fail("ds_snapshot_wait", r);

	/* uid 1000 may work on the first disk only, and see the totals. */
	snprintf(fx.policy, sizeof(fx.policy), "%s/policy", fx.dir);
	f = fopen(fx.policy, "we");
	if (!f)
		fail(fx.policy, errno);
	fprintf(f,
		"uid:1000 CreateSnapshot,DescribeSnapshots,DeleteSnapshot,"
		"ModifySnapshotAttribute,VerifySnapshot,DescribeDisks %s\n"
		"uid:1000 DescribeSnapshotsUsage,ListResourceGroups *\n"
		"gid:1000 ResetDisk %s\n",
		fx.disk[0], fx.disk[1]);
	if (fclose(f) != 0)
		fail(fx.policy, errno);

	ao.host_id = "fuzz";
	ao.policy_file = fx.policy;
	/* Unthrottled: a Throttling answer would hide uid 1000's actions. */
	ao.throttle_rate = 1e9;
	ao.throttle_burst = 1e9;
	r = ds_api_new(fx.e, &ao, &fx.a);
	if (r < 0)
		fail("ds_api_new", r);
}

static void fixture_down(void)
{
	if (!fx.e)
		return;
	ds_api_free(fx.a);
	ds_engine_close(fx.e);
	fx.a = NULL;
	fx.e = NULL;
	nftw(fx.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *every = getenv("FUZZ_REBUILD_EVERY");

	verbose = getenv("FUZZ_VERBOSE") != NULL;
	print_answers = getenv("FUZZ_PRINT") != NULL;
	if (every && atol(every) > 0)
		rebuild_every = (unsigned long)atol(every);
	ds_set_log(quiet_log, NULL, DS_LOG_ERROR);
	fixture_up();
	atexit(fixture_down);
	return 0;
}

/* ---- requests -------------------------------------------------------------------- */

/* Replaces every placeholder in *p's value with the fixture's id. */
static void substitute(struct ds_api_param *p)
{
	const struct {
		const char *token, *id;
	} subst[] = {{"@D0@", fx.disk[0]}, {"@D1@", fx.disk[1]}, {"@S0@", fx.snap}, {"@RG@", fx.rg}};
	char *out;
	size_t n = 0;

	/* A value with a NUL inside is refused before anything reads it. */
	if (strlen(p->value) != p->len || !strchr(p->value, '@'))
		return;
	out = malloc(p->len * 8 + 1); /* an id is at most 27 bytes for a 4-byte token */
	if (!out)
		abort();
	for (const char *s = p->value; *s;) {
		bool hit = false;
		for (size_t i = 0; i < sizeof(subst) / sizeof(subst[0]) && !hit; i++) {
			size_t tl = strlen(subst[i].token);
			if (strncmp(s, subst[i].token, tl) == 0) {
				size_t il = strlen(subst[i].id);
				memcpy(out + n, subst[i].id, il);
				n += il;
				s += tl;
				hit = true;
			}
		}
		if (!hit)
			out[n++] = *s++;
	}
	out[n] = '\0';
	free(p->value);
	p->value = out;
	p->len = n;
}

/* Removes every parameter named key (as the API compares names). */
static void drop(struct ds_api_param *p, size_t *n, const char *key)
{
	for (size_t i = 0; i < *n;) {
		if (strcmp(p[i].key, key) == 0) {
			free(p[i].key);
			free(p[i].value);
			memmove(&p[i], &p[i + 1], (*n - i - 1) * sizeof(*p));
			(*n)--;
		} else {
			i++;
		}
	}
}

static bool names_action(const struct ds_api_param *p, size_t n, const char *action)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(p[i].key, "Action") == 0 && strcmp(p[i].value, action) == 0)
			return true;
	return false;
}

/* Disarms the actions that would touch the host (see the design note).
 * Returns false when root must not run the request. */
static bool make_safe(struct ds_api_param *p, size_t *n)
{
	if (names_action(p, *n, "RegisterDisk"))
		drop(p, n, "Path");
	if (names_action(p, *n, "CreateDisk"))
		drop(p, n, "Size");
	if (names_action(p, *n, "ExportSnapshot")) {
		for (size_t i = 0; i < *n; i++) {
			if (strcmp(p[i].key, "Path") == 0 && p[i].value[0] == '/') {
				char *v = strdup(fx.export_path);
				if (!v)
					abort();
				free(p[i].value);
				p[i].value = v;
				p[i].len = strlen(v);
			}
		}
	}
	return !names_action(p, *n, "CollectGarbage");
}

/* ---- answers ------------------------------------------------------------------------ */

static void bad_answer(const char *why, const struct ds_api_response *r)
{
	fprintf(stderr, "fuzz_request: %s (status %d, %zu bytes): %.*s\n", why, r->status, r->len,
		(int)(r->len > 2000 ? 2000 : r->len), r->body ? r->body : "(null)");
	abort();
}

/* Well-formed enough for a client: the prolog, then nested elements whose
 * close tags match, text without '<' and only the five entities. */
static bool xml_ok(const char *s)
{
	const char *stack[64];
	size_t depth = 0, roots = 0;
	const char *end = strstr(s, "?>");

	if (strncmp(s, "<?xml ", 6) != 0 || !end)
		return false;
	for (s = end + 2; *s;) {
		if (*s == '<') {
			bool close = s[1] == '/';
			const char *name = s + (close ? 2 : 1), *gt = strchr(name, '>');
			size_t len = gt ? (size_t)(gt - name) : 0;
			if (!gt || len == 0 || memchr(name, '<', len) || memchr(name, ' ', len))
				return false;
			if (close) {
				if (depth == 0 || strncmp(stack[depth - 1], name, len) != 0 ||
				    stack[depth - 1][len] != '>')
					return false;
				depth--;
			} else {
				if (depth == sizeof(stack) / sizeof(stack[0]))
					return false;
				if (depth == 0)
					roots++;
				stack[depth++] = name;
			}
			s = gt + 1;
		} else if (*s == '&') {
			static const char *const ents[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
			size_t k = 0;
			while (k < 5 && strncmp(s, ents[k], strlen(ents[k])) != 0)
				k++;
			if (k == 5 || depth == 0)
				return false;
			s += strlen(ents[k]);
		} else {
			if (*s == '>' || depth == 0)
				return false;
			s++;
		}
	}
	return depth == 0 && roots == 1;
}

static void check_answer(const struct ds_api_response *r)
{
	if (print_answers)
		fprintf(stderr, "%d %s\n", r->status, r->body ? r->body : "(null)");
	if (!r->body || r->len != strlen(r->body))
		bad_answer("body missing or with a NUL inside", r);
	if (r->status < 200 || r->status > 599 || !r->content_type)
		bad_answer("bad status or no content type", r);
	if (strncmp(r->content_type, "application/xml", 15) == 0) {
		if (strncmp(r->body, "<?xml", 5) != 0 || !xml_ok(r->body))
			bad_answer("XML answer not well formed", r);
		if (!strstr(r->body, "<RequestId>") && r->status != 500)
			bad_answer("XML answer without RequestId", r);
	} else {
		json_object *o = json_tokener_parse(r->body), *id;
		if (!o || !json_object_is_type(o, json_type_object))
			bad_answer("JSON answer does not parse", r);
		/* The fixed out-of-memory answer is the only one without an id. */
		if ((!json_object_object_get_ex(o, "RequestId", &id) ||
		     !json_object_is_type(id, json_type_string)) &&
		    r->status != 500)
			bad_answer("JSON answer without RequestId", r);
		if (r->status != 200 && !json_object_object_get_ex(o, "Code", &id))
			bad_answer("error answer without Code", r);
		json_object_put(o);
	}
}

struct progressing {
	char ids[64][DS_ID_SIZE];
	int n;
};

static int note_progressing(const struct ds_snapshot_info *s, void *opaque)
{
	struct progressing *p = opaque;

	if (strcmp(s->status, "progressing") == 0 && p->n < 64)
		snprintf(p->ids[p->n++], DS_ID_SIZE, "%s", s->id);
	return 0;
}

/* Waits for the copies that a CreateSnapshot started, so that no thread
 * of one input runs on into the next: an input then replays alone as it
 * ran, and LeakSanitizer's check after an input never meets a copy in
 * flight. */
static void quiesce(void)
{
	struct progressing p = {.n = 0};

	if (ds_snapshot_list(fx.e, NULL, note_progressing, &p) < 0)
		return;
	for (int i = 0; i < p.n; i++)
		ds_snapshot_wait(fx.e, p.ids[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct ds_api_caller root = {0, 0, 1}, user = {1000, 1000, 2};
	struct ds_api_param *p = NULL;
	struct ds_api_response resp;
	size_t n;
	int k;

	if (++runs % rebuild_every == 0) {
		fixture_down();
		fixture_up();
	}
	k = ds_api_parse_form((const char *)data, size, &p);
	if (k < 0) {
		if (k != -EINVAL && k != -E2BIG)
			fail("ds_api_parse_form", k);
		/* What dsnapd answers to a form that does not parse. */
		ds_api_reject(fx.a, 400, "InvalidParameter",
			      "The parameters are not validly URL-encoded.", size & 1, &resp);
		check_answer(&resp);
		ds_api_response_release(&resp);
		return 0;
	}
	n = (size_t)k;
	if (n > DS_API_MAX_PARAMS)
		fail("ds_api_parse_form: too many", E2BIG);
	for (size_t i = 0; i < n; i++)
		substitute(&p[i]);
	if (make_safe(p, &n)) {
		ds_api_handle(fx.a, &root, p, n, &resp);
		check_answer(&resp);
		ds_api_response_release(&resp);
		unlink(fx.export_path);
	}
	ds_api_handle(fx.a, &user, p, n, &resp);
	check_answer(&resp);
	ds_api_response_release(&resp);
	unlink(fx.export_path);
	if (names_action(p, n, "CreateSnapshot"))
		quiesce();
	ds_api_params_free(p, n);
	return 0;
}
