/* The API layer's shared pieces: the request context, errors, validation. */
#ifndef DSNAP_API_PRIV_H
#define DSNAP_API_PRIV_H
#ifndef DSNAP_INTERNAL
#error "engine/api/api_priv.h is private to libdsnap"
#endif

#include <pthread.h>
#include <stdatomic.h>

#include <json-c/json.h>

#include <dsnap/api.h>

/* ---- authorization and throttling (policy.c) ---- */

struct policy;
int policy_load(const char *path, struct policy **out);
void policy_free(struct policy *p);
/* Whether caller may run action on disk_id (NULL: an action on no disk,
 * which needs a rule for every disk). Root may do everything. */
bool policy_allows(const struct policy *p, const struct ds_api_caller *c, const char *action,
		   const char *disk_id);

struct throttle;
struct throttle *throttle_new(double rate, double burst);
void throttle_free(struct throttle *t);
/* Takes one token from uid's bucket; false when it is empty. */
bool throttle_take(struct throttle *t, uint32_t uid, double now);

/* ---- the API object ---- */

struct inflight {
	uint32_t uid;
	char token[65];
	struct inflight *next;
};

struct ds_api {
	struct ds_engine *e;
	char region[64];
	char host_id[256];
	char *policy_path;
	struct policy *policy;   /* under lock; reloaded when the file changes */
	int64_t policy_mtime;
	struct throttle *throttle;
	bool throttle_root;
	int64_t (*clock)(void *opaque);
	void *clock_opaque;
	pthread_mutex_t lock;       /* the policy; never held while calling the engine */
	pthread_mutex_t token_lock; /* in-flight tokens; taken before the engine's lock */
	uint32_t owner_uid;         /* the process's own user: allowed like root */
	struct inflight *inflight;
	atomic_bool gc_wanted;   /* a snapshot was released since the last GC */
};

/* ---- one request ---- */

struct req {
	struct ds_api *a;
	const struct ds_api_caller *caller;
	const struct ds_api_param *p;
	size_t n;
	const char *action;
	char request_id[40];
	json_object *out; /* the answer's fields, RequestId added when rendered */
	/* the error, when code is set */
	const char *code;
	int status;
	char message[512];
};

/* Sets the request's error from the table; fmt args fill the message's %s. */
int api_error(struct req *q, const char *code, ...);
/* An engine errno for an action on a disk, as its API code. */
int api_engine_error(struct req *q, int err, const char *disk_id);

/* The value of key (NULL when absent). */
const char *api_param(const struct req *q, const char *key);

/* Checks for the action, in order: the caller may run it on disk_id;
 * returns 0 or the error already set. */
int api_authorize(struct req *q, const char *disk_id);
bool api_may(struct req *q, const char *disk_id);
/* Only root (or the process's own user) may: actions that open or write
 * paths as dsnapd's user. */
int api_root(struct req *q);

/* ---- validation (validate.c) ---- */

/* Valid UTF-8 with no NUL and no control characters but tab/newline;
 * *chars gets the number of characters. */
bool utf8_valid(const char *s, size_t len, size_t *chars);
/* SnapshotName / DiskName rules of API.md. */
bool valid_name(const char *s);
bool valid_description(const char *s);
bool valid_tag_key(const char *s);
bool valid_tag_value(const char *s);
bool valid_client_token(const char *s);
/* Decimal integer in [lo, hi] with nothing else. */
bool parse_int(const char *s, long lo, long hi, long *out);
/* "true" / "false" (any case). */
bool parse_bool(const char *s, bool *out);
/* A JSON array of strings ("[\"s-1\",\"s-2\"]"), at most max; ids[] yours. */
int parse_id_array(const char *s, size_t max, char ***ids, size_t *n);
void free_id_array(char **ids, size_t n);

/* ---- rendering (render.c) ---- */

void render_success(const struct req *q, struct ds_api_response *resp, bool xml);
void render_error(const struct req *q, struct ds_api_response *resp, bool xml);
void new_request_id(char out[40]);
void format_iso8601(int64_t t, char out[32]);

/* ---- actions (actions.c) ---- */

struct action {
	const char *name;
	const char *const *params; /* allowed parameters besides the common ones */
	bool tags;                 /* Tag.N.Key / Tag.N.Value allowed */
	int (*fn)(struct req *q);
	bool quick; /* never waits on disks or long work (ds_api_quick) */
};
const struct action *action_find(const char *name);

#endif
