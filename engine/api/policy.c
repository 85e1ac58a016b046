/*
 * Authorization rules (doc/policy.md) and per-caller throttling.
 *
 * A policy file has one rule a line:  WHO  ACTIONS  DISKS
 *   WHO      user:NAME | uid:N | group:NAME | gid:N | *
 *   ACTIONS  comma-separated action names, or *
 *   DISKS    comma-separated disk ids, or *
 * '#' starts a comment. A caller may run an action on a disk when some rule
 * names the caller (its uid, or a group it is in), the action and the disk.
 * An action on no particular disk needs a rule whose DISKS is *. Root (uid
 * 0) may do everything. A line that does not parse is reported and the
 * whole file refused, so a typo never widens access.
 */
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/api_priv.h"
#include "util/util.h"

struct rule {
	enum { WHO_ANY, WHO_UID, WHO_GID } who;
	uint32_t id;
	char **actions; /* NULL = all */
	size_t nactions;
	char **disks;   /* NULL = all */
	size_t ndisks;
};

struct policy {
	struct rule *rules;
	size_t n;
};

static void free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++) {
		free_list(p->rules[i].actions, p->rules[i].nactions);
		free_list(p->rules[i].disks, p->rules[i].ndisks);
	}
	free(p->rules);
	free(p);
}

/* "a,b,c" -> list; "*" -> NULL (all). */
static int parse_list(const char *s, char ***out, size_t *n)
{
	char *copy, *save = NULL, *tok;
	char **v = NULL;
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (strcmp(s, "*") == 0)
		return 0;
	copy = strdup(s);
	if (!copy)
		return -ENOMEM;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char **nv = realloc(v, (k + 1) * sizeof(*v));
		if (!nv || !(nv[k] = strdup(tok))) {
			free_list(nv ? nv : v, k);
			free(copy);
			return -ENOMEM;
		}
		v = nv;
		k++;
	}
	free(copy);
	if (k == 0)
		return -EINVAL;
	*out = v;
	*n = k;
	return 0;
}

static int parse_who(const char *s, struct rule *r)
{
	char *end;

	if (strcmp(s, "*") == 0) {
		r->who = WHO_ANY;
	} else if (strncmp(s, "uid:", 4) == 0 || strncmp(s, "gid:", 4) == 0) {
		unsigned long v = strtoul(s + 4, &end, 10);
		if (!s[4] || *end || v > UINT32_MAX)
			return -EINVAL;
		r->who = s[0] == 'u' ? WHO_UID : WHO_GID;
		r->id = (uint32_t)v;
	} else if (strncmp(s, "user:", 5) == 0) {
		struct passwd pw, *res = NULL;
		char buf[4096];
		if (getpwnam_r(s + 5, &pw, buf, sizeof(buf), &res) != 0 || !res)
			return -ENOENT;
		r->who = WHO_UID;
		r->id = pw.pw_uid;
	} else if (strncmp(s, "group:", 6) == 0) {
		struct group gr, *res = NULL;
		char buf[16384];
		if (getgrnam_r(s + 6, &gr, buf, sizeof(buf), &res) != 0 || !res)
			return -ENOENT;
		r->who = WHO_GID;
		r->id = gr.gr_gid;
	} else {
		return -EINVAL;
	}
	return 0;
}

int policy_load(const char *path, struct policy **out)
{
	struct policy *p = calloc(1, sizeof(*p));
	FILE *f;
	char line[4096];
	int lineno = 0, r = 0;

	if (!p)
		return -ENOMEM;
	f = fopen(path, "re");
	if (!f) {
		r = -errno;
		free(p);
		return r;
	}
	while (r == 0 && fgets(line, sizeof(line), f)) {
		char who[512], actions[2048], disks[2048], extra[2];
		struct rule rule = {0};
		struct rule *nv = NULL;
		char *hash = strchr(line, '#');
		int k;

		lineno++;
		/* A line longer than the buffer would be read as two: refused
		 * whole, so a long line can never become a rule of its own. */
		if (!strchr(line, '\n') && !feof(f)) {
			log_error("policy %s:%d: line too long", path, lineno);
			r = -EINVAL;
			break;
		}
		if (hash)
			*hash = '\0';
		k = sscanf(line, "%511s %2047s %2047s %1s", who, actions, disks, extra);
		if (k <= 0)
			continue;
		if (k != 3) {
			log_error("policy %s:%d: want WHO ACTIONS DISKS", path, lineno);
			r = -EINVAL;
			break;
		}
		r = parse_who(who, &rule);
		if (r == -ENOENT)
			log_error("policy %s:%d: no such user or group '%s'", path, lineno, who);
		else if (r < 0)
			log_error("policy %s:%d: bad WHO '%s'", path, lineno, who);
		if (r == 0)
			r = parse_list(actions, &rule.actions, &rule.nactions);
		if (r == 0)
			r = parse_list(disks, &rule.disks, &rule.ndisks);
		if (r == 0 && !(nv = realloc(p->rules, (p->n + 1) * sizeof(*nv))))
			r = -ENOMEM;
		if (r < 0) {
			free_list(rule.actions, rule.nactions);
			free_list(rule.disks, rule.ndisks);
			break;
		}
		p->rules = nv;
		p->rules[p->n++] = rule;
	}
	fclose(f);
	if (r < 0) {
		policy_free(p);
		return r;
	}
	*out = p;
	return 0;
}

static bool in_list(char **v, size_t n, const char *s)
{
	if (!v)
		return true;
	for (size_t i = 0; s && i < n; i++)
		if (strcmp(v[i], s) == 0)
			return true;
	return false;
}

/* Whether uid is in group gid (primary or supplementary). */
static bool in_group(const struct ds_api_caller *c, uint32_t gid)
{
	struct passwd pw, *res = NULL;
	char buf[4096];
	gid_t groups[256];
	int n = (int)ARRAY_SIZE(groups);

	if (c->gid == gid)
		return true;
	if (getpwuid_r(c->uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
		return false;
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
		return false;
	for (int i = 0; i < n; i++)
		if (groups[i] == gid)
			return true;
	return false;
}

bool policy_allows(const struct policy *p, const struct ds_api_caller *c, const char *action,
		   const char *disk_id)
{
	if (c->uid == 0)
		return true;
	for (size_t i = 0; p && i < p->n; i++) {
		const struct rule *r = &p->rules[i];
		bool who = r->who == WHO_ANY || (r->who == WHO_UID && r->id == c->uid) ||
			   (r->who == WHO_GID && in_group(c, r->id));
		if (!who || !in_list(r->actions, r->nactions, action))
			continue;
		if (disk_id ? in_list(r->disks, r->ndisks, disk_id) : r->disks == NULL)
			return true;
	}
	return false;
}

/* ---- throttling: a token bucket per uid -------------------------------------- */

struct bucket {
	uint32_t uid;
	double tokens, last;
};

struct throttle {
	pthread_mutex_t lock;
	double rate, burst;
	struct bucket *b;
	size_t n, cap;
};

struct throttle *throttle_new(double rate, double burst)
{
	struct throttle *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	pthread_mutex_init(&t->lock, NULL);
	t->rate = rate;
	t->burst = burst;
	return t;
}

void throttle_free(struct throttle *t)
{
	if (!t)
		return;
	pthread_mutex_destroy(&t->lock);
	free(t->b);
	free(t);
}

bool throttle_take(struct throttle *t, uint32_t uid, double now)
{
	struct bucket *b = NULL;
	bool ok;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n && !b; i++)
		if (t->b[i].uid == uid)
			b = &t->b[i];
	if (!b) {
		if (t->n == t->cap) {
			size_t cap = t->cap ? t->cap * 2 : 16;
			struct bucket *v = realloc(t->b, cap * sizeof(*v));
			if (!v) {
				pthread_mutex_unlock(&t->lock);
				return true; /* no memory to count with: let it through */
			}
			t->b = v;
			t->cap = cap;
		}
		b = &t->b[t->n++];
		*b = (struct bucket){uid, t->burst, now};
	}
	b->tokens = MIN(t->burst, b->tokens + (now - b->last) * t->rate);
	b->last = now;
	ok = b->tokens >= 1.0;
	if (ok)
		b->tokens -= 1.0;
	pthread_mutex_unlock(&t->lock);
	return ok;
}
