/*
 * The actions of API.md.
 *
 * Each handler checks its parameters' syntax first, then whether the
 * caller may act on the disk, then the state, and changes something only
 * after all of that passed.
 *
 * ClientToken (CreateSnapshot, CreateDisk): a token is keyed by the
 * caller's uid. The request's fingerprint is a hash of its own parameters
 * (sorted, the token and the common parameters left out). While a request
 * with a token is being answered the token is "in flight" and any other
 * request with it gets IdempotentProcessing; once answered, a repeat with
 * the same fingerprint gets the same result id and changes nothing, a
 * repeat with another gets IdempotentParameterMismatch. The in-flight
 * check and the catalog lookup happen under one lock (token_lock, taken
 * before the engine's own), so concurrent requests with one token create
 * at most one resource.
 */
#include <stdio.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <dsnap/store.h>

#include "api/api_priv.h"
#include "util/util.h"

#define MAX_RESULTS_DEFAULT 10
#define MAX_RESULTS_MAX 100

static const char *const token_skip[] = {
	"ClientToken", "Action", "Format", "Version", "RegionId", "AccessKeyId", "Signature",
	"SignatureMethod", "SignatureVersion", "SignatureNonce", "SignatureType", "Timestamp",
	"SecurityToken", "OwnerId", "OwnerAccount", "ResourceOwnerId", "ResourceOwnerAccount", NULL,
};

static bool skipped(const char *k)
{
	for (size_t i = 0; token_skip[i]; i++)
		if (strcmp(token_skip[i], k) == 0)
			return true;
	return false;
}

static int cmp_param(const void *a, const void *b)
{
	return strcmp((*(const struct ds_api_param *const *)a)->key,
		      (*(const struct ds_api_param *const *)b)->key);
}

/* Hash of the action and its parameters in name order. */
static int fingerprint(const struct req *q, char out[65])
{
	const struct ds_api_param **v = calloc(q->n ? q->n : 1, sizeof(*v));
	XXH3_state_t st;
	XXH128_hash_t h;
	size_t k = 0;

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < q->n; i++)
		if (!skipped(q->p[i].key))
			v[k++] = &q->p[i];
	qsort(v, k, sizeof(*v), cmp_param);
	XXH3_128bits_reset(&st);
	XXH3_128bits_update(&st, q->action, strlen(q->action) + 1);
	for (size_t i = 0; i < k; i++) {
		XXH3_128bits_update(&st, v[i]->key, strlen(v[i]->key) + 1);
		XXH3_128bits_update(&st, v[i]->value, v[i]->len + 1);
	}
	h = XXH3_128bits_digest(&st);
	snprintf(out, 65, "%016llx%016llx", (unsigned long long)h.high64,
		 (unsigned long long)h.low64);
	free(v);
	return 0;
}

struct token_ctx {
	const char *token;
	char fp[65];
	bool held; /* in flight, ours to release */
};

/*
 * Starts an idempotent request. Returns 0 to go on (t->held set when a
 * token is in flight), 1 with *result set when the token was answered
 * before with these parameters, or -1 with the error set.
 */
static int token_begin(struct req *q, struct token_ctx *t, char result[64])
{
	struct ds_api *a = q->a;
	char act[64], fp[65];
	int r;

	t->held = false;
	if (!t->token)
		return 0;
	if (fingerprint(q, t->fp) < 0)
		return api_error(q, "InternalError");
	pthread_mutex_lock(&a->token_lock);
	for (struct inflight *i = a->inflight; i; i = i->next) {
		if (i->uid == q->caller->uid && strcmp(i->token, t->token) == 0) {
			pthread_mutex_unlock(&a->token_lock);
			return api_error(q, "IdempotentProcessing");
		}
	}
	r = ds_token_get(a->e, q->caller->uid, t->token, act, fp, result);
	if (r == 0) {
		pthread_mutex_unlock(&a->token_lock);
		if (strcmp(act, q->action) != 0 || strcmp(fp, t->fp) != 0)
			return api_error(q, "IdempotentParameterMismatch");
		return 1;
	}
	if (r != -ENOENT) {
		pthread_mutex_unlock(&a->token_lock);
		return api_engine_error(q, r, NULL);
	}
	struct inflight *i = calloc(1, sizeof(*i));
	if (!i) {
		pthread_mutex_unlock(&a->token_lock);
		return api_error(q, "InternalError");
	}
	i->uid = q->caller->uid;
	snprintf(i->token, sizeof(i->token), "%s", t->token);
	i->next = a->inflight;
	a->inflight = i;
	t->held = true;
	pthread_mutex_unlock(&a->token_lock);
	return 0;
}

/* Records the result (when there is one) and releases the token. */
static void token_end(struct req *q, struct token_ctx *t, const char *result)
{
	struct ds_api *a = q->a;

	if (!t->held)
		return;
	pthread_mutex_lock(&a->token_lock);
	if (result && ds_token_put(a->e, q->caller->uid, t->token, q->action, t->fp, result) < 0)
		log_error("api: cannot record ClientToken of %s", result);
	for (struct inflight **pi = &a->inflight; *pi; pi = &(*pi)->next) {
		if ((*pi)->uid == q->caller->uid && strcmp((*pi)->token, t->token) == 0) {
			struct inflight *i = *pi;
			*pi = i->next;
			free(i);
			break;
		}
	}
	pthread_mutex_unlock(&a->token_lock);
	t->held = false;
}

static int need(struct req *q, const char *key, const char **out)
{
	*out = api_param(q, key);
	if (!*out || !**out)
		return api_error(q, "MissingParameter", key);
	return 0;
}

static void add_str(json_object *o, const char *k, const char *v)
{
	json_object_object_add(o, k, json_object_new_string(v ? v : ""));
}

static void add_int(json_object *o, const char *k, int64_t v)
{
	json_object_object_add(o, k, json_object_new_int64(v));
}

static void add_bool(json_object *o, const char *k, bool v)
{
	json_object_object_add(o, k, json_object_new_boolean(v));
}

static int64_t gib_up(uint64_t bytes)
{
	return (int64_t)((bytes + (1ull << 30) - 1) >> 30);
}

/* Tag.N.Key / Tag.N.Value (and the lowercase aliases) in N order. */
static int parse_tags(struct req *q, struct ds_tag *tags, bool *has_value, int *ntags)
{
	int highest = 0;
	bool seen[DS_MAX_TAGS + 1] = {0};

	*ntags = 0;
	for (size_t i = 0; i < q->n; i++) {
		const char *k = q->p[i].key;
		long n;
		char num[16], *dot;
		size_t len;

		if (strncmp(k, "Tag.", 4) != 0)
			continue;
		dot = strchr(k + 4, '.');
		len = dot ? (size_t)(dot - (k + 4)) : 0;
		if (!dot || len == 0 || len >= sizeof(num))
			return api_error(q, "InvalidParameter", k);
		memcpy(num, k + 4, len);
		num[len] = '\0';
		if (num[0] == '0' || !parse_int(num, 1, 1000000, &n))
			return api_error(q, "InvalidParameter", k);
		if (n > DS_MAX_TAGS)
			return api_error(q, "QuotaExceed.Tags",
					 "The maximum number of tags is 20 (Tag.1 to Tag.20).");
		highest = MAX(highest, (int)n);
		seen[n] = true;
	}
	for (int n = 1; n <= highest; n++) {
		char kk[32], kv[32], lk[32], lv[32];
		const char *key, *value;

		if (!seen[n])
			continue;
		snprintf(kk, sizeof(kk), "Tag.%d.Key", n);
		snprintf(lk, sizeof(lk), "Tag.%d.key", n);
		snprintf(kv, sizeof(kv), "Tag.%d.Value", n);
		snprintf(lv, sizeof(lv), "Tag.%d.value", n);
		key = api_param(q, kk);
		if (key && api_param(q, lk))
			return api_error(q, "InvalidParameter", lk);
		if (!key)
			key = api_param(q, lk);
		value = api_param(q, kv);
		if (value && api_param(q, lv))
			return api_error(q, "InvalidParameter", lv);
		if (!value)
			value = api_param(q, lv);
		if (!key || !valid_tag_key(key))
			return api_error(q, "InvalidTagKey.Malformed");
		if (value && !valid_tag_value(value))
			return api_error(q, "InvalidTagValue.Malformed");
		for (int k = 0; k < *ntags; k++)
			if (strcmp(tags[k].key, key) == 0)
				return api_error(q, "Duplicate.TagKey");
		snprintf(tags[*ntags].key, sizeof(tags[0].key), "%s", key);
		snprintf(tags[*ntags].value, sizeof(tags[0].value), "%s", value ? value : "");
		if (has_value)
			has_value[*ntags] = value != NULL;
		(*ntags)++;
	}
	return 0;
}

/* ---- CreateSnapshot ----------------------------------------------------------- */

static int create_snapshot(struct req *q)
{
	const char *disk_id, *name = api_param(q, "SnapshotName"),
			     *desc = api_param(q, "Description"),
			     *ret = api_param(q, "RetentionDays"), *cat = api_param(q, "Category"),
			     *ia = api_param(q, "InstantAccess"),
			     *iaret = api_param(q, "InstantAccessRetentionDays"),
			     *token = api_param(q, "ClientToken"),
			     *rg = api_param(q, "ResourceGroupId");
	struct ds_snapshot_params p = {0};
	struct ds_tag tags[DS_MAX_TAGS];
	struct token_ctx t = {0};
	char id[64];
	long v;
	int r;

	if (need(q, "DiskId", &disk_id) < 0)
		return -1;
	if (name && !valid_name(name))
		return api_error(q, "InvalidSnapshotName.Malformed");
	if (desc && !valid_description(desc))
		return api_error(q, "InvalidDescription.Malformed");
	if (ret) {
		if (!parse_int(ret, 1, 65536, &v))
			return api_error(q, "InvalidRetentionDays.Malformed");
		p.retention_days = (int)v;
	}
	if (cat && strcmp(cat, "Standard") != 0 && strcmp(cat, "Flash") != 0)
		return api_error(q, "InvalidSnapshotCategory.Malformed");
	if (cat && ia)
		return api_error(q, "InvalidCategoryAndInstantAccess.Malformed");
	if (ia && !parse_bool(ia, &p.instant_access))
		return api_error(q, "InvalidParameter", "InstantAccess");
	if (iaret) {
		if (!parse_int(iaret, 1, 65535, &v))
			return api_error(q, "InvalidInstantAccessRetentionDays.Malformed");
		p.ia_retention_days = p.instant_access ? (int)v : 0;
	} else if (p.instant_access) {
		p.ia_retention_days = p.retention_days;
	}
	if (token && *token && !valid_client_token(token))
		return api_error(q, "InvalidClientToken.Malformed");
	if (parse_tags(q, tags, NULL, &p.ntags) < 0)
		return -1;
	if (api_param(q, "StorageLocationArn"))
		return api_error(q, "InvalidStorageLocationArn.Malformed");
	if (api_authorize(q, disk_id) < 0)
		return -1;
	if (rg && *rg && ds_rg_exists(q->a->e, rg) < 0)
		return api_error(q, "InvalidResourceGroup.NotFound");

	t.token = token && *token ? token : NULL;
	r = token_begin(q, &t, id);
	if (r < 0)
		return -1;
	if (r == 1) {
		add_str(q->out, "SnapshotId", id);
		return 0;
	}
	p.name = name;
	p.description = desc;
	p.category = cat;
	p.resource_group = rg && *rg ? rg : NULL;
	p.tags = tags;
	r = ds_snapshot_create(q->a->e, disk_id, &p, id);
	token_end(q, &t, r == 0 ? id : NULL);
	if (r < 0)
		return api_engine_error(q, r, disk_id);
	add_str(q->out, "SnapshotId", id);
	return 0;
}

/* ---- DescribeSnapshots ------------------------------------------------------------ */

static json_object *snapshot_json(const struct ds_snapshot_info *s)
{
	json_object *o = json_object_new_object(), *tags, *arr;
	char t[32], buf[32];

	if (!o)
		return NULL;
	add_str(o, "SnapshotId", s->id);
	add_str(o, "SnapshotName", s->name);
	add_str(o, "Description", s->description);
	add_str(o, "Status", s->status);
	snprintf(buf, sizeof(buf), "%d%%", s->progress);
	add_str(o, "Progress", buf);
	/* Instant access: readable (export, CreateDisk, AttachSnapshot) from
	 * the moment the point in time is fixed, which is when the snapshot is
	 * recorded progressing. */
	add_bool(o, "Available", strcmp(s->status, "accomplished") == 0 ||
				     strcmp(s->status, "progressing") == 0);
	add_str(o, "SourceDiskId", s->disk_id);
	snprintf(buf, sizeof(buf), "%lld", (long long)gib_up(s->disk_size));
	add_str(o, "SourceDiskSize", buf);
	add_str(o, "SourceDiskType", "data");
	format_iso8601(s->created, t);
	add_str(o, "CreationTime", t);
	format_iso8601(s->modified, t);
	add_str(o, "LastModifiedTime", t);
	add_int(o, "RetentionDays", s->retention_days); /* 0: kept until deleted */
	add_str(o, "Usage", "none");
	add_str(o, "SnapshotType", s->automatic ? "auto" : "user");
	add_str(o, "Category", s->category[0] ? s->category : "Standard");
	add_bool(o, "InstantAccess", s->instant_access);
	if (s->ia_retention_days > 0)
		add_int(o, "InstantAccessRetentionDays", s->ia_retention_days);
	add_str(o, "ResourceGroupId", s->resource_group);
	/* Not in the cloud API: why a failed snapshot failed. */
	if (s->error[0] && strcmp(s->status, "failed") == 0)
		add_str(o, "FailedReason", s->error);
	tags = json_object_new_object();
	arr = json_object_new_array();
	for (int i = 0; tags && arr && i < s->ntags; i++) {
		json_object *tag = json_object_new_object();
		add_str(tag, "TagKey", s->tags[i].key);
		add_str(tag, "TagValue", s->tags[i].value);
		json_object_array_add(arr, tag);
	}
	json_object_object_add(tags, "Tag", arr);
	json_object_object_add(o, "Tags", tags);
	return o;
}

struct snap_filter {
	struct req *q;
	const char *name, *status, *type, *rg;
	char **ids;
	size_t nids;
	struct ds_tag tags[DS_MAX_TAGS];
	bool has_value[DS_MAX_TAGS]; /* a tag filter without a value matches any value */
	int ntags;
	size_t offset, max, matched; /* the page, and matches seen so far */
	json_object *list; /* the page's entries, in creation order */
};

static bool tags_match(const struct snap_filter *f, const struct ds_snapshot_info *s)
{
	for (int i = 0; i < f->ntags; i++) {
		bool found = false;
		for (int k = 0; k < s->ntags && !found; k++)
			found = strcmp(s->tags[k].key, f->tags[i].key) == 0 &&
				(!f->has_value[i] || strcmp(s->tags[k].value, f->tags[i].value) == 0);
		if (!found)
			return false;
	}
	return true;
}

static int snap_match(const struct ds_snapshot_info *s, void *opaque)
{
	struct snap_filter *f = opaque;
	bool ok = true;

	if (f->name && strcmp(s->name, f->name) != 0)
		ok = false;
	if (ok && f->status && strcmp(f->status, "all") != 0 && strcmp(f->status, s->status) != 0)
		ok = false;
	if (ok && f->type && strcmp(f->type, "all") != 0 &&
	    strcmp(f->type, s->automatic ? "auto" : "user") != 0)
		ok = false;
	if (ok && f->rg && strcmp(f->rg, s->resource_group) != 0)
		ok = false;
	if (ok && f->ids) {
		bool in = false;
		for (size_t i = 0; i < f->nids && !in; i++)
			in = strcmp(f->ids[i], s->id) == 0;
		ok = in;
	}
	if (ok)
		ok = tags_match(f, s) && api_may(f->q, s->disk_id);
	if (!ok)
		return 0;
	/* Every match is counted; only the page's are rendered. */
	if (f->matched >= f->offset && f->matched < f->offset + f->max) {
		json_object *o = snapshot_json(s);
		if (!o)
			return -ENOMEM;
		json_object_array_add(f->list, o);
	}
	f->matched++;
	return 0;
}

static int by_creation(const void *a, const void *b)
{
	const struct ds_snapshot_info *x = *(const struct ds_snapshot_info *const *)a,
				      *y = *(const struct ds_snapshot_info *const *)b;

	return x->created != y->created ? (x->created < y->created ? -1 : 1) : strcmp(x->id, y->id);
}

/*
 * SnapshotIds given (at most 100): each is looked up by id rather than
 * every snapshot being walked (how clients poll one snapshot); the others
 * filters apply as in a list, in creation order.
 */
static int snapshots_by_id(struct req *q, struct snap_filter *f, const char *disk_id)
{
	struct ds_snapshot_info **v = calloc(f->nids ? f->nids : 1, sizeof(*v));
	size_t n = 0;
	int r = v ? 0 : -ENOMEM;

	for (size_t i = 0; r == 0 && i < f->nids; i++) {
		bool dup = false;
		for (size_t k = 0; k < i && !dup; k++)
			dup = strcmp(f->ids[k], f->ids[i]) == 0;
		if (dup)
			continue;
		v[n] = malloc(sizeof(*v[n]));
		if (!v[n]) {
			r = -ENOMEM;
			break;
		}
		r = ds_snapshot_get(q->a->e, f->ids[i], v[n]);
		if (r == -ENOENT || (r == 0 && disk_id && *disk_id && strcmp(v[n]->disk_id, disk_id))) {
			free(v[n]);
			r = 0;
			continue;
		}
		if (r == 0)
			n++;
		else
			free(v[n]);
	}
	if (r == 0)
		qsort(v, n, sizeof(*v), by_creation);
	for (size_t i = 0; i < n; i++) {
		if (r == 0)
			r = snap_match(v[i], f);
		free(v[i]);
	}
	free(v);
	return r;
}

/* MaxResults and NextToken: the token is the offset of the next entry. */
static int paging(struct req *q, size_t *offset, size_t *max)
{
	const char *m = api_param(q, "MaxResults"), *t = api_param(q, "NextToken");
	long v;

	*offset = 0;
	*max = MAX_RESULTS_DEFAULT;
	if (m) {
		if (!parse_int(m, 1, MAX_RESULTS_MAX, &v))
			return api_error(q, "InvalidMaxResults.Malformed");
		*max = (size_t)v;
	}
	if (t && *t) {
		if (!parse_int(t, 1, 1000000000, &v))
			return api_error(q, "InvalidNextToken.Malformed");
		*offset = (size_t)v;
	}
	return 0;
}

/* Puts page (the entries [offset, offset + max) of total) under
 * out.<outer>.<inner>, with TotalCount and NextToken when more remain.
 * Takes page. */
static void page_put(struct req *q, json_object *page, size_t total, size_t offset, size_t max,
		     const char *outer, const char *inner)
{
	json_object *wrap = json_object_new_object();
	char next[32];

	add_int(q->out, "TotalCount", (int64_t)total);
	if (offset + max < total) {
		snprintf(next, sizeof(next), "%zu", offset + max);
		add_str(q->out, "NextToken", next);
	} else {
		add_str(q->out, "NextToken", "");
	}
	add_int(q->out, "MaxResults", (int64_t)max);
	json_object_object_add(wrap, inner, page);
	json_object_object_add(q->out, outer, wrap);
}

/* Puts list[offset, offset + max) under out.<outer>.<inner>, with TotalCount
 * and NextToken when more remain. Takes list. */
static void page_out(struct req *q, json_object *list, size_t offset, size_t max,
		     const char *outer, const char *inner)
{
	size_t total = json_object_array_length(list);
	json_object *page = json_object_new_array();

	for (size_t i = offset; page && i < total && i < offset + max; i++)
		json_object_array_add(page, json_object_get(json_object_array_get_idx(list, i)));
	page_put(q, page, total, offset, max, outer, inner);
	json_object_put(list);
}

static int describe_snapshots(struct req *q)
{
	struct snap_filter f = {.q = q};
	const char *disk_id = api_param(q, "DiskId"), *ids = api_param(q, "SnapshotIds");
	size_t offset, max;
	int r;

	f.name = api_param(q, "SnapshotName");
	f.status = api_param(q, "Status");
	f.type = api_param(q, "SnapshotType");
	f.rg = api_param(q, "ResourceGroupId");
	if (f.status && strcmp(f.status, "progressing") != 0 &&
	    strcmp(f.status, "accomplished") != 0 && strcmp(f.status, "failed") != 0 &&
	    strcmp(f.status, "all") != 0)
		return api_error(q, "InvalidStatus.ValueNotSupported");
	if (f.type && strcmp(f.type, "auto") != 0 && strcmp(f.type, "user") != 0 &&
	    strcmp(f.type, "all") != 0)
		return api_error(q, "InvalidSnapshotType.ValueNotSupported");
	if (paging(q, &offset, &max) < 0)
		return -1;
	if (parse_tags(q, f.tags, f.has_value, &f.ntags) < 0)
		return -1;
	if (ids && parse_id_array(ids, MAX_RESULTS_MAX, &f.ids, &f.nids) < 0)
		return api_error(q, "InvalidSnapshotIds.Malformed");
	if (disk_id && api_authorize(q, disk_id) < 0) {
		free_id_array(f.ids, f.nids);
		return -1;
	}
	f.list = json_object_new_array();
	f.offset = offset;
	f.max = max;
	if (f.list && f.ids)
		r = snapshots_by_id(q, &f, disk_id);
	else
		r = f.list ? ds_snapshot_list(q->a->e, disk_id && *disk_id ? disk_id : NULL,
					      snap_match, &f)
			   : -ENOMEM;
	free_id_array(f.ids, f.nids);
	if (r < 0) {
		json_object_put(f.list);
		return api_engine_error(q, r, NULL);
	}
	page_put(q, f.list, f.matched, offset, max, "Snapshots", "Snapshot");
	return 0;
}

/* ---- snapshot by id ----------------------------------------------------------------- */

/* Loads a snapshot and checks the caller may run the action on its disk. */
static int snapshot_for(struct req *q, struct ds_snapshot_info *s, const char **id)
{
	int r;

	if (need(q, "SnapshotId", id) < 0)
		return -1;
	r = ds_snapshot_get(q->a->e, *id, s);
	if (r == -ENOENT)
		return api_error(q, "InvalidSnapshotId.NotFound");
	if (r < 0)
		return api_engine_error(q, r, NULL);
	if (api_authorize(q, s->disk_id) < 0)
		return -1;
	/* An administrator lock refuses every operation on the disk's snapshots too. */
	struct ds_disk_info *d = malloc(sizeof(*d));
	if (!d)
		return api_error(q, "InternalError");
	r = ds_disk_get(q->a->e, s->disk_id, d);
	r = r == 0 && d->locked ? api_error(q, "InstanceLockedForSecurity") : 0;
	free(d);
	return r;
}

static int delete_snapshot(struct req *q)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	const char *id, *force = api_param(q, "Force");
	bool f;
	int r;

	if (!s)
		return api_error(q, "InternalError");
	if (force && !parse_bool(force, &f)) {
		free(s);
		return api_error(q, "InvalidParameter", "Force");
	}
	if (snapshot_for(q, s, &id) < 0) {
		free(s);
		return -1;
	}
	free(s);
	r = ds_snapshot_delete(q->a->e, id);
	if (r == -EBUSY)
		return api_error(q, "IncorrectSnapshotStatus");
	if (r == -ENOENT)
		return api_error(q, "InvalidSnapshotId.NotFound");
	if (r < 0)
		return api_engine_error(q, r, NULL);
	/* Its chunks are collected by the daemon's next maintenance pass. */
	atomic_store(&q->a->gc_wanted, true);
	return 0;
}

static int modify_snapshot(struct req *q)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	const char *id, *name = api_param(q, "SnapshotName"), *desc = api_param(q, "Description"),
			*ret = api_param(q, "RetentionDays"), *dia = api_param(q, "DisableInstantAccess");
	long v = -1;
	bool b;
	int r;

	if (!s)
		return api_error(q, "InternalError");
	r = -1;
	if (name && !valid_name(name))
		api_error(q, "InvalidSnapshotName.Malformed");
	else if (desc && !valid_description(desc))
		api_error(q, "InvalidDescription.Malformed");
	else if (ret && !parse_int(ret, 1, 65536, &v))
		api_error(q, "InvalidRetentionDays.Malformed");
	else if (dia && !parse_bool(dia, &b))
		api_error(q, "InvalidParameter", "DisableInstantAccess");
	else
		r = snapshot_for(q, s, &id);
	free(s);
	if (r < 0)
		return -1;
	r = ds_snapshot_modify(q->a->e, id, name, desc, ret ? (int)v : -1);
	if (r == -ENOENT)
		return api_error(q, "InvalidSnapshotId.NotFound");
	return r < 0 ? api_engine_error(q, r, NULL) : 0;
}

static int describe_usage(struct req *q)
{
	uint64_t count, bytes;
	int r;

	if (api_authorize(q, NULL) < 0)
		return -1;
	r = ds_snapshot_usage(q->a->e, &count, &bytes);
	if (r < 0)
		return api_engine_error(q, r, NULL);
	add_int(q->out, "SnapshotCount", (int64_t)count);
	add_int(q->out, "SnapshotSize", (int64_t)bytes);
	return 0;
}

static int reset_disk(struct req *q)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	struct ds_disk_info *d = malloc(sizeof(*d));
	const char *disk_id, *snap_id;
	int r = -1;

	if (!s || !d) {
		api_error(q, "InternalError");
		goto out;
	}
	if (need(q, "DiskId", &disk_id) < 0 || need(q, "SnapshotId", &snap_id) < 0)
		goto out;
	if (api_authorize(q, disk_id) < 0)
		goto out;
	r = ds_disk_get(q->a->e, disk_id, d);
	if (r == -ENOENT) {
		r = api_error(q, "InvalidDiskId.NotFound");
		goto out;
	} else if (r < 0) {
		r = api_engine_error(q, r, disk_id);
		goto out;
	}
	r = ds_snapshot_get(q->a->e, snap_id, s);
	if (r == -ENOENT) {
		r = api_error(q, "InvalidSnapshotId.NotFound");
		goto out;
	}
	if (r == 0 && strcmp(s->status, "accomplished") != 0) {
		r = api_error(q, "IncorrectSnapshotStatus");
		goto out;
	}
	/* A disk is rolled back to one of its own snapshots (API.md); another
	 * disk's snapshot would also reveal that disk. */
	if (r == 0 && strcmp(s->disk_id, disk_id) != 0) {
		r = api_error(q, "InvalidParameter", "SnapshotId");
		goto out;
	}
	if (r == 0)
		r = ds_disk_reset(q->a->e, disk_id, snap_id);
	if (r == -ENOSPC)
		r = api_error(q, "InvalidDiskSize.TooSmall");
	else if (r < 0)
		r = api_engine_error(q, r, disk_id);
out:
	free(s);
	free(d);
	return r;
}

/* ---- disks ------------------------------------------------------------------------- */

static int create_disk(struct req *q)
{
	const char *size = api_param(q, "Size"), *snap = api_param(q, "SnapshotId"),
		   *name = api_param(q, "DiskName"), *token = api_param(q, "ClientToken");
	struct token_ctx t = {0};
	char id[64];
	long gib = 0;
	int r;

	if (!size && !snap)
		return api_error(q, "MissingParameter", "Size");
	if (size && snap)
		return api_error(q, "InvalidParameter", "Size");
	if (size && !parse_int(size, 1, 65536, &gib))
		return api_error(q, "InvalidDiskSize.ValueNotSupported");
	if (name && !valid_name(name))
		return api_error(q, "InvalidDiskName.Malformed");
	if (token && *token && !valid_client_token(token))
		return api_error(q, "InvalidClientToken.Malformed");
	if (api_authorize(q, NULL) < 0)
		return -1;
	t.token = token && *token ? token : NULL;
	r = token_begin(q, &t, id);
	if (r < 0)
		return -1;
	if (r == 1) {
		add_str(q->out, "DiskId", id);
		return 0;
	}
	r = size ? ds_disk_create(q->a->e, (uint64_t)gib << 30, name, id)
		 : ds_disk_create_from_snapshot(q->a->e, snap, name, id);
	token_end(q, &t, r == 0 ? id : NULL);
	if (r == -ENOENT)
		return api_error(q, "InvalidSnapshotId.NotFound");
	if (r == -EBUSY || r == -ENODATA)
		return api_error(q, "IncorrectSnapshotStatus");
	if (r < 0)
		return api_engine_error(q, r, NULL);
	add_str(q->out, "DiskId", id);
	return 0;
}

static int register_disk(struct req *q)
{
	const char *path, *name = api_param(q, "DiskName");
	char id[64];
	int r;

	if (need(q, "Path", &path) < 0)
		return -1;
	if (path[0] != '/')
		return api_error(q, "InvalidPath.Malformed");
	if (name && !valid_name(name))
		return api_error(q, "InvalidDiskName.Malformed");
	/* Registering opens any path as dsnapd's user: root's own call. */
	if (api_root(q) < 0)
		return -1;
	r = ds_disk_register(q->a->e, path, name, id);
	if (r == -ENOENT || r == -ENOTDIR)
		return api_error(q, "InvalidPath.NotFound");
	if (r == -ENOTSUP)
		return api_error(q, "DiskCategory.OperationNotSupported");
	if (r < 0 && r != -EEXIST)
		return api_engine_error(q, r, NULL);
	/* Registering a registered disk again answers its id: idempotent. */
	add_str(q->out, "DiskId", id);
	return 0;
}

static json_object *disk_json(const struct ds_disk_info *d)
{
	json_object *o = json_object_new_object();
	char t[32];

	if (!o)
		return NULL;
	add_str(o, "DiskId", d->id);
	add_str(o, "DiskName", d->name);
	add_str(o, "Status", d->status);
	add_int(o, "Size", gib_up(d->size));
	add_int(o, "SizeBytes", (int64_t)d->size);
	/* The block device users open: the loop device while attached, else
	 * the registered device itself (an image file has none). */
	add_str(o, "Device", d->device[0] ? d->device : d->kind == DS_DISK_FILE ? "" : d->path);
	if (d->transport[0])
		add_str(o, "Transport", d->transport);
	add_str(o, "SourcePath", d->path);
	add_str(o, "FsType", d->fs_type);
	add_str(o, "FsUuid", d->fs_uuid);
	format_iso8601(d->created, t);
	add_str(o, "CreationTime", t);
	add_str(o, "Type", "data");
	add_bool(o, "Present", d->present);
	add_bool(o, "Locked", d->locked);
	return o;
}

struct disk_filter {
	struct req *q;
	char **ids;
	size_t nids;
	const char *name;
	json_object *list;
};

static int disk_match(const struct ds_disk_info *d, void *opaque)
{
	struct disk_filter *f = opaque;
	bool ok = !f->name || strcmp(f->name, d->name) == 0;

	if (ok && f->ids) {
		bool in = false;
		for (size_t i = 0; i < f->nids && !in; i++)
			in = strcmp(f->ids[i], d->id) == 0;
		ok = in;
	}
	if (ok && api_may(f->q, d->id)) {
		json_object *o = disk_json(d);
		if (!o)
			return -ENOMEM;
		json_object_array_add(f->list, o);
	}
	return 0;
}

static int describe_disks(struct req *q)
{
	struct disk_filter f = {.q = q, .name = api_param(q, "DiskName")};
	const char *ids = api_param(q, "DiskIds");
	size_t offset, max;
	int r;

	if (paging(q, &offset, &max) < 0)
		return -1;
	if (ids && parse_id_array(ids, MAX_RESULTS_MAX, &f.ids, &f.nids) < 0)
		return api_error(q, "InvalidDiskIds.Malformed");
	f.list = json_object_new_array();
	r = f.list ? ds_disk_list(q->a->e, disk_match, &f) : -ENOMEM;
	free_id_array(f.ids, f.nids);
	if (r < 0) {
		json_object_put(f.list);
		return api_engine_error(q, r, NULL);
	}
	page_out(q, f.list, offset, max, "Disks", "Disk");
	return 0;
}

static int delete_disk(struct req *q)
{
	const char *disk_id;
	int r;

	if (need(q, "DiskId", &disk_id) < 0 || api_authorize(q, disk_id) < 0)
		return -1;
	r = ds_disk_delete(q->a->e, disk_id);
	return r < 0 ? api_engine_error(q, r, disk_id) : 0;
}

static int attach_disk(struct req *q)
{
	const char *disk_id;
	char dev[32];
	int r;

	if (need(q, "DiskId", &disk_id) < 0 || api_authorize(q, disk_id) < 0)
		return -1;
	r = ds_disk_attach(q->a->e, disk_id, dev);
	if (r == -EPERM)
		return api_error(q, "OperationDenied.NeedRoot");
	if (r == -EOPNOTSUPP)
		return api_error(q, "DiskCategory.OperationNotSupported");
	if (r < 0)
		return api_engine_error(q, r, disk_id);
	add_str(q->out, "Device", dev);
	return 0;
}

static int detach_disk(struct req *q)
{
	const char *disk_id;
	int r;

	if (need(q, "DiskId", &disk_id) < 0 || api_authorize(q, disk_id) < 0)
		return -1;
	r = ds_disk_detach(q->a->e, disk_id);
	if (r == -EINVAL)
		return api_error(q, "IncorrectDiskStatus.NotAttached");
	if (r == -EBUSY)
		return api_error(q, "IncorrectDiskStatus.InUse");
	return r < 0 ? api_engine_error(q, r, disk_id) : 0;
}

/* ---- resource groups -------------------------------------------------------------- */

static int create_rg(struct req *q)
{
	const char *name;
	char id[64];
	size_t chars;
	int r;

	if (need(q, "Name", &name) < 0)
		return -1;
	if (!utf8_valid(name, strlen(name), &chars) || chars > 128)
		return api_error(q, "InvalidResourceGroupName.Malformed");
	if (api_authorize(q, NULL) < 0)
		return -1;
	r = ds_rg_create(q->a->e, name, id);
	if (r < 0)
		return api_engine_error(q, r, NULL);
	add_str(q->out, "ResourceGroupId", id);
	return 0;
}

static int rg_one(const char *id, const char *name, int64_t created, void *opaque)
{
	json_object *o = json_object_new_object();
	char t[32];

	if (!o)
		return -ENOMEM;
	add_str(o, "Id", id);
	add_str(o, "Name", name);
	format_iso8601(created, t);
	add_str(o, "CreateDate", t);
	json_object_array_add(opaque, o);
	return 0;
}

static int list_rgs(struct req *q)
{
	json_object *list = json_object_new_array();
	size_t offset, max;
	int r;

	if (!list)
		return api_error(q, "InternalError");
	if (paging(q, &offset, &max) < 0 || api_authorize(q, NULL) < 0) {
		json_object_put(list);
		return -1;
	}
	r = ds_rg_list(q->a->e, rg_one, list);
	if (r < 0) {
		json_object_put(list);
		return api_engine_error(q, r, NULL);
	}
	page_out(q, list, offset, max, "ResourceGroups", "ResourceGroup");
	return 0;
}

static int delete_rg(struct req *q)
{
	const char *id;
	int r;

	if (need(q, "ResourceGroupId", &id) < 0 || api_authorize(q, NULL) < 0)
		return -1;
	r = ds_rg_delete(q->a->e, id);
	if (r == -ENOENT)
		return api_error(q, "InvalidResourceGroup.NotFound");
	if (r == -ENOTEMPTY)
		return api_error(q, "ResourceGroup.NotEmpty");
	return r < 0 ? api_engine_error(q, r, NULL) : 0;
}

/* ---- local actions: export, verify, collect ----------------------------------------------- */

/* Writes a snapshot into a new image file at an absolute Path. The daemon
 * writes as its own user, so this needs a rule for every disk (root). */
static int export_snapshot(struct req *q)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	const char *id, *path;
	int r = -1;

	if (!s)
		return api_error(q, "InternalError");
	if (need(q, "Path", &path) < 0)
		;
	else if (path[0] != '/')
		api_error(q, "InvalidPath.Malformed");
	else if (snapshot_for(q, s, &id) == 0 && api_root(q) == 0)
		r = 0;
	free(s);
	if (r < 0)
		return -1;
	r = ds_snapshot_export(q->a->e, id, path);
	if (r == -EEXIST)
		return api_error(q, "InvalidParameter", "Path");
	if (r == -ENOENT)
		return api_error(q, "InvalidPath.NotFound");
	if (r == -EBUSY || r == -ENODATA)
		return api_error(q, "IncorrectSnapshotStatus");
	return r < 0 ? api_engine_error(q, r, NULL) : 0;
}

static int attach_snapshot(struct req *q)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	const char *id;
	char dev[32];
	int r = s ? snapshot_for(q, s, &id) : api_error(q, "InternalError");

	free(s);
	if (r < 0)
		return -1;
	r = ds_snapshot_attach(q->a->e, id, dev);
	if (r == -EPERM)
		return api_error(q, "OperationDenied.NeedRoot");
	if (r == -ENOENT)
		return api_error(q, "InvalidSnapshotId.NotFound");
	if (r == -EEXIST)
		return api_error(q, "IncorrectSnapshotStatus.Attached");
	if (r == -EBUSY || r == -ENODATA || r == -EAGAIN)
		return api_error(q, "IncorrectSnapshotStatus");
	if (r < 0)
		return api_engine_error(q, r, NULL);
	add_str(q->out, "Device", dev);
	return 0;
}

static int detach_snapshot(struct req *q)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	const char *id;
	int r = s ? snapshot_for(q, s, &id) : api_error(q, "InternalError");

	free(s);
	if (r < 0)
		return -1;
	r = ds_snapshot_detach(q->a->e, id);
	if (r == -EINVAL)
		return api_error(q, "IncorrectSnapshotStatus.NotAttached");
	if (r == -EBUSY)
		return api_error(q, "IncorrectSnapshotStatus.InUse");
	if (r == -EAGAIN)
		return api_error(q, "IncorrectSnapshotStatus");
	return r < 0 ? api_engine_error(q, r, NULL) : 0;
}

static int verify_snapshot(struct req *q)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	const char *id;
	int64_t bad;
	int r;

	if (!s)
		return api_error(q, "InternalError");
	r = snapshot_for(q, s, &id);
	free(s);
	if (r < 0)
		return -1;
	bad = ds_snapshot_verify(q->a->e, id);
	if (bad == -EBUSY || bad == -ENODATA)
		return api_error(q, "IncorrectSnapshotStatus");
	if (bad < 0)
		return api_engine_error(q, (int)bad, NULL);
	add_int(q->out, "BadChunks", bad);
	return 0;
}

static int collect_garbage(struct req *q)
{
	struct ds_gc_stats st;
	int r;

	if (api_authorize(q, NULL) < 0)
		return -1;
	r = ds_engine_gc(q->a->e, &st);
	if (r < 0)
		return api_engine_error(q, r, NULL);
	add_int(q->out, "ChunksRemoved", (int64_t)st.chunks_removed);
	add_int(q->out, "PacksRewritten", (int64_t)st.packs_rewritten);
	add_int(q->out, "BytesFreed", (int64_t)st.bytes_freed);
	return 0;
}

/* ---- the table ------------------------------------------------------------------------ */

static const char *const p_create_snapshot[] = {
	"DiskId", "SnapshotName", "Description", "RetentionDays", "Category", "InstantAccess",
	"InstantAccessRetentionDays", "ClientToken", "ResourceGroupId", "StorageLocationArn",
	NULL};
static const char *const p_describe_snapshots[] = {
	"DiskId", "SnapshotIds", "SnapshotName", "Status", "SnapshotType", "ResourceGroupId",
	"MaxResults", "NextToken", NULL};
static const char *const p_delete_snapshot[] = {"SnapshotId", "Force", NULL};
static const char *const p_modify_snapshot[] = {"SnapshotId", "SnapshotName", "Description",
						"RetentionDays", "DisableInstantAccess", NULL};
static const char *const p_none[] = {NULL};
static const char *const p_reset_disk[] = {"DiskId", "SnapshotId", NULL};
static const char *const p_create_disk[] = {"Size", "SnapshotId", "DiskName", "ClientToken",
					    NULL};
static const char *const p_register_disk[] = {"Path", "DiskName", NULL};
static const char *const p_describe_disks[] = {"DiskIds", "DiskName", "MaxResults", "NextToken",
					       NULL};
static const char *const p_disk[] = {"DiskId", NULL};
static const char *const p_create_rg[] = {"Name", NULL};
static const char *const p_list_rgs[] = {"MaxResults", "NextToken", NULL};
static const char *const p_rg[] = {"ResourceGroupId", NULL};
static const char *const p_export[] = {"SnapshotId", "Path", NULL};
static const char *const p_snapshot[] = {"SnapshotId", NULL};

static const struct action actions[] = {
	{"CreateSnapshot", p_create_snapshot, true, create_snapshot, true},
	{"DescribeSnapshots", p_describe_snapshots, true, describe_snapshots, true},
	{"DeleteSnapshot", p_delete_snapshot, false, delete_snapshot, true},
	{"ModifySnapshotAttribute", p_modify_snapshot, false, modify_snapshot, true},
	{"DescribeSnapshotsUsage", p_none, false, describe_usage, false},
	{"ResetDisk", p_reset_disk, false, reset_disk, false},
	{"CreateDisk", p_create_disk, false, create_disk, false},
	{"RegisterDisk", p_register_disk, false, register_disk, false},
	{"DescribeDisks", p_describe_disks, false, describe_disks, false},
	{"DeleteDisk", p_disk, false, delete_disk, false},
	{"AttachDisk", p_disk, false, attach_disk, false},
	{"DetachDisk", p_disk, false, detach_disk, false},
	{"CreateResourceGroup", p_create_rg, false, create_rg, true},
	{"ListResourceGroups", p_list_rgs, false, list_rgs, true},
	{"DeleteResourceGroup", p_rg, false, delete_rg, true},
	/* local: not in the cloud API */
	{"ExportSnapshot", p_export, false, export_snapshot, false},
	{"VerifySnapshot", p_snapshot, false, verify_snapshot, false},
	{"AttachSnapshot", p_snapshot, false, attach_snapshot, false},
	{"DetachSnapshot", p_snapshot, false, detach_snapshot, false},
	{"CollectGarbage", p_none, false, collect_garbage, false},
};

const struct action *action_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		if (strcmp(actions[i].name, name) == 0)
			return &actions[i];
	return NULL;
}

static const char *action_names[ARRAY_SIZE(actions) + 1];
static pthread_once_t action_names_once = PTHREAD_ONCE_INIT;

static void fill_action_names(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		action_names[i] = actions[i].name;
}

const char *const *ds_api_actions(void)
{
	pthread_once(&action_names_once, fill_action_names);
	return action_names;
}

const char *const *ds_api_action_params(const char *action, bool *tags)
{
	const struct action *a = action_find(action);

	if (!a)
		return NULL;
	if (tags)
		*tags = a->tags;
	return a->params;
}
