/*
 * The request API: the cloud snapshot API's actions (API.md), independent
 * of any transport. A listener (dsnapd's HTTP over a Unix socket) parses a
 * request into parameters, identifies the caller, and hands both here; the
 * answer comes back as the HTTP status and a rendered JSON or XML body.
 *
 * Thread-safe: one ds_api may answer many requests at once.
 */
#ifndef DSNAP_API_H
#define DSNAP_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <dsnap/dsnap.h>
#include <dsnap/engine.h>

#define DS_API_VERSION "2014-05-26"

struct ds_api;

/* Who is asking: from SO_PEERCRED on the Unix socket. */
struct ds_api_caller {
	uint32_t uid;
	uint32_t gid;
	int32_t pid;
};

/* One request parameter. value holds len bytes and a NUL after them; a
 * value with a NUL inside (len > strlen) is refused as malformed. */
struct ds_api_param {
	char *key;
	char *value;
	size_t len;
};

struct ds_api_options {
	const char *region;      /* RegionId of this store; NULL = "local" */
	const char *host_id;     /* HostId in error answers; NULL = the host name */
	const char *policy_file; /* authorization rules (doc/policy.md); NULL = root only */
	double throttle_rate;    /* requests per second per caller; 0 = 200 */
	double throttle_burst;   /* bucket size; 0 = 2 x rate */
	bool throttle_root;      /* also throttle uid 0 */
	/* Seconds since the epoch for retention; NULL = time(). Tests advance it. */
	int64_t (*clock)(void *opaque);
	void *clock_opaque;
};

DS_EXPORT int ds_api_new(struct ds_engine *e, const struct ds_api_options *o,
			 struct ds_api **out);
DS_EXPORT void ds_api_free(struct ds_api *a);

struct ds_api_response {
	int status;               /* HTTP status */
	char *body;               /* yours: release with ds_api_response_release() */
	size_t len;
	const char *content_type; /* static */
};

/*
 * Answers one request. Never fails: a bad request, a refused caller or an
 * engine error become the API's error answer; an allocation failure
 * becomes a fixed 500 answer.
 */
DS_EXPORT void ds_api_handle(struct ds_api *a, const struct ds_api_caller *caller,
			     const struct ds_api_param *params, size_t n,
			     struct ds_api_response *resp);
DS_EXPORT void ds_api_response_release(struct ds_api_response *resp);

/*
 * True when answering the request never waits on a disk or on long work
 * (describe calls, a snapshot of a disk that is not attached, a malformed
 * request): a server may answer it on a thread that serves other requests
 * too. False for the rest (restores, exports, attach, GC, ...), which
 * should get a thread of their own.
 */
DS_EXPORT bool ds_api_quick(struct ds_api *a, const struct ds_api_param *params, size_t n);

/* An error answer of the API's shape for a request that never reached an
 * action (malformed encoding, body too large, wrong method or path). */
DS_EXPORT void ds_api_reject(struct ds_api *a, int status, const char *code, const char *message,
			     bool xml, struct ds_api_response *resp);

/*
 * Parses application/x-www-form-urlencoded text (a query string or a POST
 * body) into parameters: '+' is a space, %XX a byte. Returns the number of
 * parameters (>= 0) with *out yours to free with ds_api_params_free(), or
 * -EINVAL for a malformed escape, -E2BIG past DS_API_MAX_PARAMS.
 */
#define DS_API_MAX_PARAMS 256
DS_EXPORT int ds_api_parse_form(const char *text, size_t len, struct ds_api_param **out);
DS_EXPORT void ds_api_params_free(struct ds_api_param *p, size_t n);

/* True (once) when a snapshot was released since the last call: time for
 * ds_engine_gc(). */
DS_EXPORT bool ds_api_take_gc(struct ds_api *a);

/* The actions this API answers, NULL-terminated (for help and completion). */
DS_EXPORT const char *const *ds_api_actions(void);
/* The parameters an action takes besides the common ones (NULL-terminated),
 * and whether it takes Tag.N.Key/Value; NULL for an unknown action. */
DS_EXPORT const char *const *ds_api_action_params(const char *action, bool *tags);

/* The caller's clock in seconds (the options' clock, else time()). */
DS_EXPORT int64_t ds_api_now(struct ds_api *a);

#endif
