/*
 * The API's front: parameters, common parameters, throttling, dispatch.
 *
 * Order of checks for every request, so that a refused request changes
 * nothing: parameters well formed (no duplicates, no NULs, known names) ->
 * Action known -> common parameters (Format, Version, RegionId) -> caller
 * not throttled -> the action's own checks (syntax, then authorization,
 * then state), and only then any change.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/api_priv.h"
#include "util/util.h"

/* Parameters every action accepts. The signing ones are what the cloud's
 * SDKs always send; on the Unix socket the caller is the peer's uid, so
 * they are accepted and ignored. */
static const char *const common_params[] = {
	"Action", "Format", "Version", "RegionId", "AccessKeyId", "Signature", "SignatureMethod",
	"SignatureVersion", "SignatureNonce", "SignatureType", "Timestamp", "SecurityToken",
	"OwnerId", "OwnerAccount", "ResourceOwnerId", "ResourceOwnerAccount", NULL,
};

#define MAX_VALUE_LEN 4096

/* ---- form parsing ---------------------------------------------------------- */

/* Decodes [s, s+len) into a new NUL-terminated string; *out_len excludes
 * the NUL. NULL on a malformed escape (or no memory: *bad says which). */
static char *url_decode(const char *s, size_t len, size_t *out_len, bool *bad)
{
	char *d = malloc(len + 1);
	size_t k = 0;

	*bad = false;
	if (!d)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '+') {
			d[k++] = ' ';
		} else if (s[i] == '%') {
			int hi = i + 2 < len ? hexval(s[i + 1]) : -1;
			int lo = hi >= 0 ? hexval(s[i + 2]) : -1;
			if (hi < 0 || lo < 0) {
				free(d);
				*bad = true;
				return NULL;
			}
			d[k++] = (char)(hi << 4 | lo);
			i += 2;
		} else {
			d[k++] = s[i];
		}
	}
	d[k] = '\0';
	*out_len = k;
	return d;
}

void ds_api_params_free(struct ds_api_param *p, size_t n)
{
	if (!p)
		return;
	for (size_t i = 0; i < n; i++) {
		free(p[i].key);
		free(p[i].value);
	}
	free(p);
}

int ds_api_parse_form(const char *text, size_t len, struct ds_api_param **out)
{
	struct ds_api_param *p = NULL;
	size_t n = 0, pos = 0;

	while (pos < len) {
		const char *amp = memchr(text + pos, '&', len - pos);
		size_t end = amp ? (size_t)(amp - text) : len;
		const char *eq = memchr(text + pos, '=', end - pos);
		size_t klen = eq ? (size_t)(eq - text) - pos : end - pos, vlen, dummy;
		bool bad;

		if (end > pos) {
			struct ds_api_param *np;
			if (n == DS_API_MAX_PARAMS) {
				ds_api_params_free(p, n);
				return -E2BIG;
			}
			np = realloc(p, (n + 1) * sizeof(*p));
			if (!np) {
				ds_api_params_free(p, n);
				return -ENOMEM;
			}
			p = np;
			p[n].key = url_decode(text + pos, klen, &dummy, &bad);
			if (p[n].key && strlen(p[n].key) != dummy) {
				/* A NUL inside a name: refused, never cut short. */
				free(p[n].key);
				p[n].key = NULL;
				bad = true;
			}
			p[n].value = p[n].key ? url_decode(eq ? eq + 1 : text + end,
							   eq ? end - (size_t)(eq + 1 - text) : 0,
							   &vlen, &bad)
					      : NULL;
			if (!p[n].key || !p[n].value) {
				free(p[n].key);
				ds_api_params_free(p, n);
				return bad ? -EINVAL : -ENOMEM;
			}
			p[n].len = vlen;
			n++;
		}
		pos = end + 1;
	}
	*out = p;
	return (int)n;
}

/* ---- the API object ---------------------------------------------------------- */

static int64_t default_clock(void *opaque)
{
	return (int64_t)time(NULL);
}

bool ds_api_take_gc(struct ds_api *a)
{
	return atomic_exchange(&a->gc_wanted, false);
}

int64_t ds_api_now(struct ds_api *a)
{
	return a->clock(a->clock_opaque);
}

int ds_api_new(struct ds_engine *e, const struct ds_api_options *o, struct ds_api **out)
{
	struct ds_api *a = calloc(1, sizeof(*a));
	double rate = o && o->throttle_rate > 0 ? o->throttle_rate : 200;
	double burst = o && o->throttle_burst > 0 ? o->throttle_burst : 2 * rate;

	if (!a)
		return -ENOMEM;
	a->e = e;
	snprintf(a->region, sizeof(a->region), "%s", o && o->region ? o->region : "local");
	if (o && o->host_id)
		snprintf(a->host_id, sizeof(a->host_id), "%s", o->host_id);
	else if (gethostname(a->host_id, sizeof(a->host_id) - 1) < 0)
		snprintf(a->host_id, sizeof(a->host_id), "localhost");
	a->clock = o && o->clock ? o->clock : default_clock;
	a->clock_opaque = o ? o->clock_opaque : NULL;
	a->throttle_root = o && o->throttle_root;
	a->throttle = throttle_new(rate, burst);
	pthread_mutex_init(&a->lock, NULL);
	pthread_mutex_init(&a->token_lock, NULL);
	/* A dsnapd (or dsnap --local) run by a user serves that user's own
	 * state folder: that user may do what root may. */
	a->owner_uid = (uint32_t)geteuid();
	if (!a->throttle) {
		ds_api_free(a);
		return -ENOMEM;
	}
	if (o && o->policy_file) {
		int r;
		a->policy_path = strdup(o->policy_file);
		if (!a->policy_path) {
			ds_api_free(a);
			return -ENOMEM;
		}
		/* A policy that does not load at start is an error, not "no rules". */
		r = policy_load(a->policy_path, &a->policy);
		if (r < 0) {
			ds_api_free(a);
			return r;
		}
	}
	*out = a;
	return 0;
}

void ds_api_free(struct ds_api *a)
{
	if (!a)
		return;
	policy_free(a->policy);
	free(a->policy_path);
	throttle_free(a->throttle);
	while (a->inflight) {
		struct inflight *i = a->inflight;
		a->inflight = i->next;
		free(i);
	}
	pthread_mutex_destroy(&a->lock);
	pthread_mutex_destroy(&a->token_lock);
	free(a);
}

void ds_api_response_release(struct ds_api_response *resp)
{
	free(resp->body);
	resp->body = NULL;
	resp->len = 0;
}

void ds_api_reject(struct ds_api *a, int status, const char *code, const char *message,
		   bool xml, struct ds_api_response *resp)
{
	struct req q = {.a = a, .code = code, .status = status};

	new_request_id(q.request_id);
	snprintf(q.message, sizeof(q.message), "%s", message);
	memset(resp, 0, sizeof(*resp));
	render_error(&q, resp, xml);
}

/* ---- helpers for actions ------------------------------------------------------ */

const char *api_param(const struct req *q, const char *key)
{
	for (size_t i = 0; i < q->n; i++)
		if (strcmp(q->p[i].key, key) == 0)
			return q->p[i].value;
	return NULL;
}

/* Reloads the policy when its file changed; a file that no longer parses
 * keeps the previous rules (and says so). Caller holds a->lock. */
static void policy_refresh(struct ds_api *a)
{
	struct policy *p;
	struct stat st;
	int64_t mtime;

	if (!a->policy_path || stat(a->policy_path, &st) < 0)
		return;
	mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	if (mtime == a->policy_mtime)
		return;
	a->policy_mtime = mtime;
	if (policy_load(a->policy_path, &p) == 0) {
		policy_free(a->policy);
		a->policy = p;
	} else {
		log_error("api: %s does not load; keeping the rules loaded before", a->policy_path);
	}
}

bool api_may(struct req *q, const char *disk_id)
{
	bool ok;

	if (q->caller->uid == 0 || q->caller->uid == q->a->owner_uid)
		return true;
	pthread_mutex_lock(&q->a->lock);
	policy_refresh(q->a);
	ok = policy_allows(q->a->policy, q->caller, q->action, disk_id);
	pthread_mutex_unlock(&q->a->lock);
	return ok;
}

int api_root(struct req *q)
{
	return q->caller->uid == 0 || q->caller->uid == q->a->owner_uid
		       ? 0
		       : api_error(q, "InvalidAction.Unauthorized");
}

int api_authorize(struct req *q, const char *disk_id)
{
	return api_may(q, disk_id) ? 0 : api_error(q, "InvalidAction.Unauthorized");
}

int api_engine_error(struct req *q, int err, const char *disk_id)
{
	switch (err) {
	case -ENOENT:
		return api_error(q, "InvalidDiskId.NotFound");
	case -EALREADY:
		return api_error(q, "IncorrectDiskStatus.CreatingSnapshot");
	case -EUSERS: {
		char limit[16];
		snprintf(limit, sizeof(limit), "%d", ds_engine_max_copies(q->a->e));
		return api_error(q, "QuotaExceed.ConcurrentSnapshotQuota", disk_id ? disk_id : "",
				 limit);
	}
	case -EDQUOT:
		return api_error(q, "QuotaExceed.Snapshot");
	case -EBUSY:
	case -ENODEV:
		return api_error(q, "IncorrectDiskStatus");
	case -ENOTSUP:
		return api_error(q, "DiskCategory.OperationNotSupported");
	case -ENOLCK:
		return api_error(q, "InstanceLockedForSecurity");
	case -ENXIO:
		return api_error(q, "InvalidResourceGroup.NotFound");
	case -ENOSPC:
		return api_error(q, "StorageFull");
	default:
		log_error("api: %s failed: %s", q->action ? q->action : "request", strerror(-err));
		return api_error(q, "InternalError");
	}
}

/* ---- dispatch ------------------------------------------------------------------- */

static bool is_tag_param(const char *k)
{
	const char *p;

	if (strncmp(k, "Tag.", 4) != 0)
		return false;
	p = k + 4;
	if (*p < '0' || *p > '9')
		return false;
	while (*p >= '0' && *p <= '9')
		p++;
	return strcmp(p, ".Key") == 0 || strcmp(p, ".Value") == 0 || strcmp(p, ".key") == 0 ||
	       strcmp(p, ".value") == 0;
}

static bool in_names(const char *const *v, const char *k)
{
	for (size_t i = 0; v && v[i]; i++)
		if (strcmp(v[i], k) == 0)
			return true;
	return false;
}

/* Well-formed parameters: unique names, printable names, values valid
 * UTF-8 without NULs or control characters, not huge. */
static int check_params(struct req *q)
{
	for (size_t i = 0; i < q->n; i++) {
		const struct ds_api_param *p = &q->p[i];
		size_t klen = strlen(p->key);

		if (klen == 0 || klen > 128 || !utf8_valid(p->key, klen, NULL))
			return api_error(q, "InvalidParameter", "(a parameter name)");
		for (size_t k = 0; k < i; k++)
			if (strcmp(q->p[k].key, p->key) == 0)
				return api_error(q, "InvalidParameter", p->key);
		if (p->len > MAX_VALUE_LEN || strlen(p->value) != p->len ||
		    !utf8_valid(p->value, p->len, NULL))
			return api_error(q, "InvalidParameter", p->key);
	}
	return 0;
}

static int check_common(struct req *q, const struct action *act)
{
	const char *v;

	for (size_t i = 0; i < q->n; i++) {
		const char *k = q->p[i].key;
		if (!in_names(common_params, k) && !in_names(act->params, k) &&
		    !(act->tags && is_tag_param(k)))
			return api_error(q, "InvalidParameter", k);
	}
	v = api_param(q, "Version");
	if (v && strcmp(v, DS_API_VERSION) != 0)
		return api_error(q, "InvalidVersion");
	v = api_param(q, "RegionId");
	if (v && strcmp(v, q->a->region) != 0)
		return api_error(q, "InvalidRegionId.NotFound");
	return 0;
}

static double now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

bool ds_api_quick(struct ds_api *a, const struct ds_api_param *params, size_t n)
{
	const char *action = NULL, *disk = NULL;
	const struct action *act;

	for (size_t i = 0; i < n; i++) {
		if (!action && strcmp(params[i].key, "Action") == 0)
			action = params[i].value;
		else if (!disk && strcmp(params[i].key, "DiskId") == 0)
			disk = params[i].value;
	}
	act = action ? action_find(action) : NULL;
	if (!act)
		return true; /* answered with an error at once */
	/* A snapshot of an attached disk may wait for the last one's merge. */
	if (act->fn == action_find("CreateSnapshot")->fn && disk)
		return !ds_disk_is_attached(a->e, disk);
	return act->quick;
}

void ds_api_handle(struct ds_api *a, const struct ds_api_caller *caller,
		   const struct ds_api_param *params, size_t n, struct ds_api_response *resp)
{
	struct req q = {.a = a, .caller = caller, .p = params, .n = n};
	const struct action *act = NULL;
	const char *format, *action;
	bool xml = false;

	new_request_id(q.request_id);
	memset(resp, 0, sizeof(*resp));
	if (check_params(&q) < 0)
		goto error;
	format = api_param(&q, "Format");
	if (format && strcasecmp(format, "XML") == 0)
		xml = true;
	else if (format && strcasecmp(format, "JSON") != 0) {
		api_error(&q, "InvalidParameter", "Format");
		goto error;
	}
	action = api_param(&q, "Action");
	if (!action) {
		api_error(&q, "MissingParameter", "Action");
		goto error;
	}
	act = action_find(action);
	if (!act) {
		api_error(&q, "InvalidAction.NotFound");
		goto error;
	}
	q.action = act->name;
	if (check_common(&q, act) < 0)
		goto error;
	if ((caller->uid != 0 || a->throttle_root) &&
	    !throttle_take(a->throttle, caller->uid, now_mono())) {
		api_error(&q, "Throttling");
		goto error;
	}
	q.out = json_object_new_object();
	if (!q.out) {
		api_error(&q, "InternalError");
		goto error;
	}
	if (act->fn(&q) < 0 || q.code)
		goto error;
	render_success(&q, resp, xml);
	json_object_put(q.out);
	return;
error:
	if (!q.code)
		api_error(&q, "InternalError");
	render_error(&q, resp, xml);
	json_object_put(q.out);
}
