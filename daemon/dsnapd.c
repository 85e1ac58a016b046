/*
 * dsnapd: answers the snapshot API over HTTP/1.1 on a Unix socket.
 *
 * Notes on the design
 *
 * libmicrohttpd does HTTP, one thread per connection (a request may block
 * on a disk: ResetDisk writes a whole image). The raw request URI comes
 * from the URI log callback, so the query string is parsed here exactly as
 * sent (duplicates and binary bytes are seen, not folded by the library);
 * a form-encoded POST body is parsed the same way. The caller is the
 * peer's uid/gid from SO_PEERCRED. Everything else is engine/api/: this
 * file is only the listener, so a TCP listener for the cloud SDKs would
 * add only another way to identify the caller.
 *
 * Under systemd, the listening socket may come from socket activation
 * (LISTEN_FDS/LISTEN_PID, fd 3) and readiness is reported with READY=1 on
 * $NOTIFY_SOCKET, both from the documented protocols (sd_listen_fds(3),
 * sd_notify(3)) without libsystemd.
 *
 * A maintenance thread releases snapshots whose retention has passed and
 * collects chunks after deletions. SIGTERM or SIGINT stops it cleanly:
 * no new requests, copies running are stopped and end `failed` (their
 * point in time cannot survive the process), the store and catalog are
 * closed. SIGHUP is ignored (the policy file is reloaded when it changes).
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include <dsnap/api.h>
#include <dsnap/engine.h>
#include <dsnap/store.h>

#define MAX_BODY (64 * 1024)
#define MIN_(a, b) ((a) < (b) ? (a) : (b))

struct config {
	char socket[108];
	char state[PATH_MAX];
	char socket_group[64];
	unsigned socket_mode;
	char region[64];
	char policy[PATH_MAX];
	double throttle_rate, throttle_burst;
	bool throttle_root;
	int max_copies_per_disk;
	int max_running_copies; /* 0: one per CPU */
	int copy_max_rate; /* MiB/s, 0: unlimited */
	int copy_busy_rate; /* MiB/s, 0: the engine's default */
	long overlay_prewrite; /* MiB, -1: auto */
	uint32_t chunk_size;
	char clock_file[PATH_MAX];
	int fuse_uring; /* 0 auto, 1 on, 2 off */
	int maintenance_interval;
	int log_level;
};

static struct config cfg = {
	.socket_mode = 0660,
	.maintenance_interval = 60,
	.overlay_prewrite = -1,
	.log_level = DS_LOG_INFO,
};

static struct ds_engine *engine;
static struct ds_api *api;
static atomic_bool stopping;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "dsnapd: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void engine_log(enum ds_log_level level, const char *msg, void *opaque)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};

	fprintf(stderr, "dsnapd: %s: %s\n", names[level], msg);
}

/* ---- configuration -------------------------------------------------------------- */

static void defaults(void)
{
	ds_default_paths(cfg.socket, sizeof(cfg.socket), cfg.state, sizeof(cfg.state));
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static int set_key(const char *key, const char *val, const char *where)
{
	char *end;

#define STR(name, field)                                                             \
	if (strcmp(key, name) == 0) {                                                \
		if (strlen(val) >= sizeof(cfg.field))                                \
			goto bad;                                                    \
		snprintf(cfg.field, sizeof(cfg.field), "%s", val);                   \
		return 0;                                                            \
	}
	STR("socket", socket)
	STR("state", state)
	STR("socket_group", socket_group)
	STR("region", region)
	STR("policy", policy)
	STR("clock_file", clock_file)
#undef STR
	if (strcmp(key, "socket_mode") == 0) {
		unsigned long v = strtoul(val, &end, 8);
		if (*end || v > 0777)
			goto bad;
		cfg.socket_mode = (unsigned)v;
	} else if (strcmp(key, "throttle_rate") == 0 || strcmp(key, "throttle_burst") == 0) {
		double v = strtod(val, &end);
		if (*end || v < 0)
			goto bad;
		*(key[9] == 'r' ? &cfg.throttle_rate : &cfg.throttle_burst) = v;
	} else if (strcmp(key, "throttle_root") == 0) {
		if (strcmp(val, "yes") && strcmp(val, "no"))
			goto bad;
		cfg.throttle_root = val[0] == 'y';
	} else if (strcmp(key, "max_copies_per_disk") == 0 ||
		   strcmp(key, "maintenance_interval") == 0 || strcmp(key, "chunk_size") == 0) {
		long v = strtol(val, &end, 10);
		if (*end || v < 1 || v > 64 * 1024 * 1024)
			goto bad;
		if (key[0] == 'm' && key[1] == 'a' && key[2] == 'x')
			cfg.max_copies_per_disk = (int)v;
		else if (key[0] == 'm')
			cfg.maintenance_interval = (int)v;
		else
			cfg.chunk_size = (uint32_t)v;
	} else if (strcmp(key, "max_running_copies") == 0) {
		long v = strtol(val, &end, 10);
		if (*end || v < 1 || v > 1024)
			goto bad;
		cfg.max_running_copies = (int)v;
	} else if (strcmp(key, "copy_max_rate") == 0 || strcmp(key, "copy_busy_rate") == 0) {
		bool busy = strcmp(key, "copy_busy_rate") == 0;
		long v = strtol(val, &end, 10);
		if (*end || v < (busy ? 1 : 0) || v > 1024 * 1024)
			goto bad;
		if (busy)
			cfg.copy_busy_rate = (int)v;
		else
			cfg.copy_max_rate = (int)v;
	} else if (strcmp(key, "overlay_prewrite") == 0) {
		long v = strcmp(val, "auto") == 0 ? -1 : strtol(val, &end, 10);
		if ((v >= 0 && *end) || v < -1 || v > 1024L * 1024 * 1024)
			goto bad;
		cfg.overlay_prewrite = v;
	} else if (strcmp(key, "fuse_uring") == 0) {
		if (strcmp(val, "auto") == 0)
			cfg.fuse_uring = 0;
		else if (strcmp(val, "on") == 0)
			cfg.fuse_uring = 1;
		else if (strcmp(val, "off") == 0)
			cfg.fuse_uring = 2;
		else
			goto bad;
	} else if (strcmp(key, "log_level") == 0) {
		static const char *const levels[] = {"error", "warning", "info", "debug"};
		int found = -1;
		for (int i = 0; i < 4; i++)
			if (strcmp(val, levels[i]) == 0)
				found = i;
		if (found < 0)
			goto bad;
		cfg.log_level = found;
	} else {
		logf_("%s: unknown setting '%s'", where, key);
		return -1;
	}
	return 0;
bad:
	logf_("%s: bad value for %s: '%s'", where, key, val);
	return -1;
}

static int read_config(const char *path, bool must_exist)
{
	FILE *f = fopen(path, "re");
	char line[4096];
	int lineno = 0, r = 0;

	if (!f) {
		if (!must_exist && errno == ENOENT)
			return 0;
		logf_("cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		char where[PATH_MAX + 16], *s = trim(line), *eq;
		lineno++;
		if (!*s || *s == '#')
			continue;
		eq = strchr(s, '=');
		snprintf(where, sizeof(where), "%s:%d", path, lineno);
		if (!eq) {
			logf_("%s: want 'key = value'", where);
			r = -1;
			continue;
		}
		*eq = '\0';
		if (set_key(trim(s), trim(eq + 1), where) < 0)
			r = -1;
	}
	fclose(f);
	return r;
}

/* The clock for retention: real time, plus the offset in seconds that a
 * test writes into clock_file. */
static int64_t daemon_clock(void *opaque)
{
	int64_t now = (int64_t)time(NULL);
	long long off = 0;
	FILE *f;

	if (!cfg.clock_file[0] || !(f = fopen(cfg.clock_file, "re")))
		return now;
	if (fscanf(f, "%lld", &off) != 1)
		off = 0;
	fclose(f);
	return now + off;
}

/* ---- the socket -------------------------------------------------------------------- */

static int mkdir_parents(const char *path)
{
	char tmp[PATH_MAX];

	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return 0;
}

static int listen_socket(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, probe;

	if (strlen(cfg.socket) >= sizeof(sa.sun_path)) {
		logf_("socket path too long: %s", cfg.socket);
		return -1;
	}
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", cfg.socket);
	if (mkdir_parents(cfg.socket) < 0) {
		logf_("cannot create the folder of %s: %s", cfg.socket, strerror(errno));
		return -1;
	}
	/* A socket file left by a dead dsnapd is replaced; a live one is not. */
	probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(probe);
		logf_("another dsnapd answers on %s", cfg.socket);
		return -1;
	}
	if (probe >= 0)
		close(probe);
	unlink(cfg.socket);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		logf_("cannot bind %s: %s", cfg.socket, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (cfg.socket_group[0]) {
		struct group *g = getgrnam(cfg.socket_group);
		if (!g || chown(cfg.socket, (uid_t)-1, g->gr_gid) < 0) {
			logf_("cannot give %s to group %s", cfg.socket, cfg.socket_group);
			close(fd);
			return -1;
		}
	}
	if (chmod(cfg.socket, cfg.socket_mode) < 0 || listen(fd, 256) < 0) {
		logf_("cannot set up %s: %s", cfg.socket, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Socket activation: the first passed fd, when it is a listening Unix
 * stream socket meant for this process. -1 when none was passed. */
static int activated_socket(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	int type = 0, listening = 0;
	socklen_t len = sizeof(type);
	struct sockaddr_un sa;
	socklen_t salen = sizeof(sa);

	if (!pid || !fds || strtol(pid, NULL, 10) != (long)getpid() || strtol(fds, NULL, 10) < 1)
		return -1;
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM ||
	    getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening ||
	    getsockname(3, (struct sockaddr *)&sa, &salen) < 0 || sa.sun_family != AF_UNIX) {
		logf_("LISTEN_FDS given, but fd 3 is not a listening Unix stream socket");
		return -1;
	}
	fcntl(3, F_SETFD, FD_CLOEXEC);
	if (salen > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0]) {
		size_t plen = strnlen(sa.sun_path, MIN_(sizeof(sa.sun_path),
							salen - offsetof(struct sockaddr_un, sun_path)));
		if (plen < sizeof(cfg.socket)) {
			memcpy(cfg.socket, sa.sun_path, plen);
			cfg.socket[plen] = '\0';
		}
	}
	return 3;
}

/* sd_notify(3): one datagram to $NOTIFY_SOCKET ('@' = abstract name). */
static void notify(const char *msg)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t len;
	int fd;

	if (!path || !*path || strlen(path) >= sizeof(sa.sun_path))
		return;
	memcpy(sa.sun_path, path, strlen(path));
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
		logf_("cannot notify the service manager: %s", strerror(errno));
	close(fd);
}

/* ---- requests ------------------------------------------------------------------------- */

struct request {
	char *uri;     /* as sent: path and query */
	char *body;
	size_t len;
	bool too_big;
	bool started; /* the first call (headers only) has been seen */
	/* A request that is not ds_api_quick is answered on a thread of its
	 * own while its connection is suspended, so that a restore or an
	 * attach never holds up the pool's other connections. */
	struct MHD_Connection *conn;
	struct ds_api_param *params;
	size_t n;
	struct ds_api_caller caller;
	struct ds_api_response resp;
	bool answered; /* resp is ready: the next call sends it */
};

/* Requests on threads of their own; the stop waits for them. */
static pthread_mutex_t slow_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cond = PTHREAD_COND_INITIALIZER;
static int slow_running;

static void *uri_logger(void *cls, const char *uri, struct MHD_Connection *c)
{
	struct request *rq = calloc(1, sizeof(*rq));

	if (rq && !(rq->uri = strdup(uri ? uri : "/"))) {
		free(rq);
		rq = NULL; /* the handler answers MHD_NO: the connection is closed */
	}
	return rq;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	struct request *rq = *con_cls;

	if (rq) {
		free(rq->uri);
		free(rq->body);
		ds_api_params_free(rq->params, rq->n);
		if (rq->answered)
			ds_api_response_release(&rq->resp);
		free(rq);
	}
	*con_cls = NULL;
}

static enum MHD_Result send_answer(struct MHD_Connection *c, struct ds_api_response *resp)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(resp->len, resp->body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		ds_api_response_release(resp);
		return MHD_NO;
	}
	resp->body = NULL;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
	ret = MHD_queue_response(c, (unsigned)resp->status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reject(struct MHD_Connection *c, int status, const char *code,
			      const char *message)
{
	struct ds_api_response resp;

	ds_api_reject(api, status, code, message, false, &resp);
	return send_answer(c, &resp);
}

static bool peer(struct MHD_Connection *c, struct ds_api_caller *caller)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	struct ucred uc;
	socklen_t len = sizeof(uc);

	if (!ci || getsockopt(ci->connect_fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0)
		return false;
	caller->uid = uc.uid;
	caller->gid = uc.gid;
	caller->pid = uc.pid;
	return true;
}

/* Appends the parameters of form text to *all. */
static int add_form(const char *text, size_t len, struct ds_api_param **all, size_t *n)
{
	struct ds_api_param *p = NULL, *v;
	int k = ds_api_parse_form(text, len, &p);

	if (k <= 0)
		return k; /* an empty form adds nothing */
	if (*n + (size_t)k > DS_API_MAX_PARAMS) {
		ds_api_params_free(p, (size_t)k);
		return -E2BIG;
	}
	v = realloc(*all, (*n + (size_t)k + 1) * sizeof(*v));
	if (!v) {
		ds_api_params_free(p, (size_t)k);
		return -ENOMEM;
	}
	memcpy(v + *n, p, (size_t)k * sizeof(*p));
	free(p);
	*all = v;
	*n += (size_t)k;
	return 0;
}

static void *slow_request(void *arg)
{
	struct request *rq = arg;

	ds_api_handle(api, &rq->caller, rq->params, rq->n, &rq->resp);
	rq->answered = true;
	/* rq belongs to the connection again from here on. */
	MHD_resume_connection(rq->conn);
	pthread_mutex_lock(&slow_lock);
	slow_running--;
	pthread_cond_broadcast(&slow_cond);
	pthread_mutex_unlock(&slow_lock);
	return NULL;
}

/* Suspends the connection and answers on a new thread (or, without one,
 * here); the answer is sent when MHD calls handle() again. */
static void answer_slow(struct request *rq, struct MHD_Connection *c)
{
	pthread_attr_t attr;
	pthread_t t;
	bool started;

	rq->conn = c;
	MHD_suspend_connection(c);
	pthread_mutex_lock(&slow_lock);
	slow_running++;
	pthread_mutex_unlock(&slow_lock);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	started = pthread_create(&t, &attr, slow_request, rq) == 0;
	pthread_attr_destroy(&attr);
	if (!started)
		slow_request(rq);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_size, void **con_cls)
{
	struct request *rq = *con_cls;
	struct ds_api_param *params = NULL;
	struct ds_api_response resp;
	struct ds_api_caller caller;
	const char *query, *ctype;
	size_t n = 0;
	bool post = strcmp(method, "POST") == 0;
	int r = 0;

	if (!rq)
		return MHD_NO;
	if (rq->answered) {
		rq->answered = false;
		return send_answer(c, &rq->resp);
	}
	/* The first call brings the headers; the body, if any, follows. */
	if (!rq->started) {
		rq->started = true;
		return MHD_YES;
	}
	if (*upload_size > 0) {
		/* Body bytes: kept up to MAX_BODY, then counted as too big. */
		if (!rq->too_big && rq->len + *upload_size <= MAX_BODY) {
			char *b = realloc(rq->body, rq->len + *upload_size + 1);
			if (!b)
				return MHD_NO;
			memcpy(b + rq->len, upload, *upload_size);
			rq->body = b;
			rq->len += *upload_size;
		} else {
			rq->too_big = true;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (!post && strcmp(method, "GET") != 0)
		return reject(c, 405, "InvalidParameter", "Only GET and POST are supported.");
	if (strcmp(url, "/") != 0)
		return reject(c, 404, "InvalidAction.NotFound",
			      "Specified api is not found, please check your url and method.");
	if (rq->too_big)
		return reject(c, 413, "InvalidParameter", "The request body is too large.");
	if (!peer(c, &caller))
		return reject(c, 403, "InvalidAction.Unauthorized",
			      "The caller cannot be identified.");
	query = strchr(rq->uri, '?');
	if (query)
		r = add_form(query + 1, strlen(query + 1), &params, &n);
	if (r == 0 && post && rq->len > 0) {
		ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						    MHD_HTTP_HEADER_CONTENT_TYPE);
		if (ctype && strncasecmp(ctype, "application/x-www-form-urlencoded", 33) != 0) {
			ds_api_params_free(params, n);
			return reject(c, 415, "InvalidParameter",
				      "The body must be application/x-www-form-urlencoded.");
		}
		r = add_form(rq->body, rq->len, &params, &n);
	}
	if (r == -EINVAL || r == -E2BIG) {
		ds_api_params_free(params, n);
		return reject(c, 400, "InvalidParameter",
			      r == -EINVAL ? "The parameters are not validly URL-encoded."
					   : "Too many parameters.");
	}
	if (r < 0) {
		ds_api_params_free(params, n);
		return reject(c, 500, "InternalError",
			      "The request processing has failed due to some unknown error.");
	}
	if (!ds_api_quick(api, params, n)) {
		rq->params = params;
		rq->n = n;
		rq->caller = caller;
		answer_slow(rq, c);
		return MHD_YES;
	}
	ds_api_handle(api, &caller, params, n, &resp);
	ds_api_params_free(params, n);
	return send_answer(c, &resp);
}

/* ---- maintenance ------------------------------------------------------------------------- */

static void *maintenance(void *arg)
{
	while (!atomic_load(&stopping)) {
		int released = 0, r;

		for (int i = 0; i < cfg.maintenance_interval * 10 && !atomic_load(&stopping); i++)
			usleep(100000);
		if (atomic_load(&stopping))
			break;
		r = ds_engine_expire(engine, ds_api_now(api), &released);
		if (r < 0)
			logf_("retention pass failed: %s", strerror(-r));
		else if (released > 0)
			logf_("released %d expired snapshot(s)", released);
		if (released == 0 && ds_api_take_gc(api)) {
			struct ds_gc_stats st;
			r = ds_engine_gc(engine, &st);
			if (r < 0)
				logf_("garbage collection failed: %s", strerror(-r));
			else
				logf_("collected %llu chunk(s), %llu bytes freed",
				      (unsigned long long)st.chunks_removed,
				      (unsigned long long)st.bytes_freed);
		}
	}
	return NULL;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(f, "usage: dsnapd [--socket PATH] [--state DIR] [--config FILE]\n"
		   "Answers the dsnap API on a Unix socket. Defaults: as root /run/dsnap/dsnapd.sock\n"
		   "and /var/lib/dsnap (config /etc/dsnap/dsnapd.conf when present); otherwise\n"
		   "$XDG_RUNTIME_DIR/dsnap/dsnapd.sock and ~/.local/share/dsnap. See dsnapd.conf(5).\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
					      {"state", required_argument, NULL, 'S'},
					      {"config", required_argument, NULL, 'c'},
					      {"help", no_argument, NULL, 'h'},
					      {"version", no_argument, NULL, 'V'},
					      {NULL, 0, NULL, 0}};
	const char *socket_arg = NULL, *state_arg = NULL, *config = NULL;
	struct ds_engine_options eo = {0};
	struct ds_api_options ao = {0};
	struct MHD_Daemon *d;
	pthread_t maint;
	sigset_t sigs;
	bool activated;
	int c, fd, sig, r;

	while ((c = getopt_long(argc, argv, "s:S:c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 's': socket_arg = optarg; break;
		case 'S': state_arg = optarg; break;
		case 'c': config = optarg; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("dsnapd %s\n", DS_VERSION_STRING); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	defaults();
	if (config ? read_config(config, true) < 0
		   : geteuid() == 0 && read_config("/etc/dsnap/dsnapd.conf", false) < 0)
		return 2;
	if ((socket_arg && set_key("socket", socket_arg, "--socket") < 0) ||
	    (state_arg && set_key("state", state_arg, "--state") < 0))
		return 2;
	ds_set_log(engine_log, NULL, (enum ds_log_level)cfg.log_level);

	/* Signals are taken by sigwait below; every thread inherits the mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (mkdir_parents(cfg.state) < 0 || (mkdir(cfg.state, 0750) < 0 && errno != EEXIST)) {
		logf_("cannot create %s: %s", cfg.state, strerror(errno));
		return 1;
	}
	/* FUSE over io_uring is offered by the kernel only once enabled. */
	if (cfg.fuse_uring != 2 && geteuid() == 0 && ds_fuse_uring_enable(true) < 0)
		logf_("cannot turn on FUSE over io_uring; attached disks use /dev/fuse");
	eo.fuse_transport = cfg.fuse_uring;
	eo.chunk_size = cfg.chunk_size;
	eo.max_copies_per_disk = cfg.max_copies_per_disk;
	eo.copy_max_rate = (uint64_t)cfg.copy_max_rate << 20;
	eo.copy_busy_rate = (uint64_t)cfg.copy_busy_rate << 20;
	eo.overlay_prewrite = cfg.overlay_prewrite < 0 ? 0
			      : cfg.overlay_prewrite == 0 ? -1 : (int64_t)cfg.overlay_prewrite << 20;
	eo.max_running_copies = cfg.max_running_copies;
	r = ds_engine_open(cfg.state, &eo, &engine);
	if (r < 0) {
		logf_("cannot open state folder %s: %s", cfg.state, strerror(-r));
		return 1;
	}
	ao.region = cfg.region[0] ? cfg.region : NULL;
	ao.policy_file = cfg.policy[0] ? cfg.policy : NULL;
	ao.throttle_rate = cfg.throttle_rate;
	ao.throttle_burst = cfg.throttle_burst;
	ao.throttle_root = cfg.throttle_root;
	ao.clock = daemon_clock;
	r = ds_api_new(engine, &ao, &api);
	if (r < 0) {
		logf_("cannot start the API (policy %s): %s", cfg.policy, strerror(-r));
		ds_engine_close(engine);
		return 1;
	}
	fd = activated_socket();
	activated = fd >= 0;
	if (fd < 0)
		fd = listen_socket();
	if (fd < 0) {
		ds_api_free(api);
		ds_engine_close(engine);
		return 1;
	}
	/* One thread answers quick requests; the rest get one each
	 * (answer_slow). A thread per connection cost more than a
	 * CreateSnapshot itself (clone, and a TLB shootdown when its stack is
	 * given back). A pool of threads bought nothing either: quick requests
	 * spend most of their time under the engine's lock, and threads
	 * handing it to each other starved one another (a waiter woken and
	 * not yet on a CPU loses the lock again, for up to 12 ms), so 64
	 * simultaneous creates took 29-39 ms with 2 or 4 threads and 23-24 ms
	 * with one (medians of 9 runs, bench/RESULTS.md, issue 4). */
	d = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_INTERNAL_POLLING_THREAD |
				     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG,
			     0, NULL, NULL, handle, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
			     MHD_OPTION_URI_LOG_CALLBACK, uri_logger, NULL,
			     MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
			     MHD_OPTION_CONNECTION_LIMIT, 512u, MHD_OPTION_CONNECTION_TIMEOUT, 60u,
			     /* 32 KiB: larger pools are mmapped afresh for every
			      * connection (page faults, then an unmap): 80 ms p50
			      * at 64 clients. Query strings fit (a value is at
			      * most 4 KiB); longer URIs get 414 from MHD, and
			      * bodies (up to MAX_BODY) are copied out as read. */
			     MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024), MHD_OPTION_END);
	if (!d) {
		logf_("cannot start the HTTP server");
		close(fd);
		if (!activated)
			unlink(cfg.socket);
		ds_api_free(api);
		ds_engine_close(engine);
		return 1;
	}
	if (pthread_create(&maint, NULL, maintenance, NULL) != 0) {
		logf_("cannot start the maintenance thread");
		MHD_stop_daemon(d);
		if (!activated)
			unlink(cfg.socket);
		ds_api_free(api);
		ds_engine_close(engine);
		return 1;
	}
	logf_("listening on %s%s (state %s, pid %d)", cfg.socket,
	      activated ? " (socket activation)" : "", cfg.state, (int)getpid());
	notify("READY=1\nSTATUS=answering requests");

	do {
		if (sigwait(&sigs, &sig) != 0)
			sig = SIGTERM;
		if (sig == SIGHUP)
			logf_("SIGHUP: the policy file is reloaded when it changes; nothing to do");
	} while (sig == SIGHUP);
	logf_("stopping (%s)", strsignal(sig)); /* each copy stopped logs its own end */
	notify("STOPPING=1");
	atomic_store(&stopping, true);
	/* First stop the copies, so neither a request nor GC waits for one. */
	ds_engine_cancel_copies(engine);
	/* MHD must not be stopped with suspended connections. */
	pthread_mutex_lock(&slow_lock);
	while (slow_running > 0)
		pthread_cond_wait(&slow_cond, &slow_lock);
	pthread_mutex_unlock(&slow_lock);
	MHD_stop_daemon(d); /* closes the listening socket too */
	/* An activated socket belongs to the service manager, which keeps it. */
	if (!activated)
		unlink(cfg.socket);
	pthread_join(maint, NULL);
	ds_api_free(api);
	ds_engine_close(engine);
	logf_("stopped");
	return 0;
}
