/*
 * api_bench: request latency of dsnapd's API under 64 concurrent clients.
 *
 *   api_bench [--dsnapd PATH] [--workdir DIR] [--clients N] [--creates N]
 *             [--describes N] [--runs R] [--disk-size BYTES] [--poll-ms MS]
 *
 * Notes on the design
 *
 * Each run starts its own dsnapd (--socket, --state and --config in a
 * fresh folder under --workdir, default $TMPDIR), with throttle_rate
 * 1000000 so that flow control never answers, registers one image file
 * (--disk-size, default 1 MiB of random bytes, so each copy is quick) per
 * client through RegisterDisk, then runs two phases with every client a
 * thread of its own:
 *   (a) CreateSnapshot of the client's own disk, --creates times. A second
 *       create of one disk while its copy runs is refused
 *       (IncorrectDiskStatus.CreatingSnapshot), so after each create the
 *       client polls DescribeSnapshots with its DiskId and
 *       SnapshotIds=["s-..."] every --poll-ms (default 250, where
 *       `dsnap create-snapshot --wait` settles) until the snapshot is no longer
 *       progressing. Only the
 *       CreateSnapshot requests are timed; requests/s is creates over the
 *       phase's wall time, copies and polling included.
 *   (b) DescribeSnapshots with MaxResults=10, --describes times back to
 *       back, over the catalog that (a) filled (clients x creates
 *       snapshots). Requests/s is requests over the phase's wall time.
 * Every request is what `curl --unix-socket` sends: a new connection, one
 * POST with a form-encoded body and Connection: close, read until the
 * daemon closes. A request's latency runs from before connect() to the
 * end of the answer. Any answer but 200 counts as an error and is shown.
 * Clients and daemon share the machine's cores, as they would in use.
 *
 * dsnapd's CPU time (utime + stime from /proc) over each phase, divided
 * by the requests, says what one request costs the daemon. The figures of
 * each run, then the median over the runs of each figure, are printed.
 *
 * Clean-up: dsnapd gets SIGTERM and the run's folder is removed on every
 * exit path: normal, error, SIGINT/SIGTERM/SIGHUP (handled), and dsnapd
 * has PR_SET_PDEATHSIG so it stops even if this program is killed.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 1024
#define MAX_RUNS 99
#define ANSWER_MAX (1 << 20)

struct opts {
	const char *dsnapd;
	const char *workdir;
	unsigned clients, creates, describes, runs;
	uint64_t disk_size;
	unsigned poll_ms;
};

static struct opts o = {
	.clients = 64, .creates = 16, .describes = 50, .runs = 3, .disk_size = 1 << 20, .poll_ms = 250,
};

/* The running daemon and its folder, for the clean-up on every path. */
static char run_dir[PATH_MAX];
static char sock_path[108];
static volatile pid_t daemon_pid;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	remove(path);
	return 0;
}

static void stop_daemon(void)
{
	pid_t pid = daemon_pid;
	int status;

	if (pid <= 0)
		return;
	kill(pid, SIGTERM);
	for (int i = 0; i < 100; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid) {
			daemon_pid = 0;
			return;
		}
		usleep(50000);
	}
	fprintf(stderr, "api_bench: dsnapd %d did not stop in 5 s; killing it\n", (int)pid);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	daemon_pid = 0;
}

static void cleanup(void)
{
	stop_daemon();
	if (run_dir[0]) {
		nftw(run_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
		run_dir[0] = '\0';
	}
}

static void on_signal(int sig)
{
	/* kill() and exit's handlers are enough here: nothing else runs
	 * after, and the folder's removal is best effort. */
	if (daemon_pid > 0)
		kill(daemon_pid, SIGTERM);
	signal(sig, SIG_DFL);
	exit(128 + sig);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "api_bench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- HTTP over the Unix socket ---------------------------------------------------- */

struct answer {
	int status;
	char *body; /* NUL-terminated; points into buf */
	char *buf;
	size_t len;
};

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One request on a new connection, as curl sends it. 0, or -1 when the
 * connection failed (errno kept). */
static int request(const char *form, struct answer *a)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char head[256];
	size_t cap = 16384;
	int fd, hl;

	memset(a, 0, sizeof(*a));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	hl = snprintf(head, sizeof(head),
		      "POST / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: api_bench\r\n"
		      "Accept: */*\r\nConnection: close\r\n"
		      "Content-Type: application/x-www-form-urlencoded\r\n"
		      "Content-Length: %zu\r\n\r\n",
		      strlen(form));
	if (write_all(fd, head, (size_t)hl) < 0 || write_all(fd, form, strlen(form)) < 0)
		goto fail;
	a->buf = malloc(cap);
	if (!a->buf)
		goto fail;
	for (;;) {
		ssize_t r;
		if (a->len + 1 == cap) {
			char *nb = cap < ANSWER_MAX ? realloc(a->buf, cap * 2) : NULL;
			if (!nb) {
				errno = EMSGSIZE;
				goto fail;
			}
			a->buf = nb;
			cap *= 2;
		}
		r = read(fd, a->buf + a->len, cap - 1 - a->len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			goto fail;
		if (r == 0)
			break;
		a->len += (size_t)r;
	}
	close(fd);
	a->buf[a->len] = '\0';
	if (sscanf(a->buf, "HTTP/1.%*d %d", &a->status) != 1)
		a->status = -1;
	a->body = strstr(a->buf, "\r\n\r\n");
	a->body = a->body ? a->body + 4 : a->buf + a->len;
	return 0;
fail:
	close(fd);
	free(a->buf);
	a->buf = NULL;
	return -1;
}

static void answer_free(struct answer *a)
{
	free(a->buf);
	a->buf = NULL;
}

/* The string value of "key":"..." in a JSON body (ids and status words
 * hold no escapes). */
static bool json_str(const char *body, const char *key, char *out, size_t size)
{
	char pat[64];
	const char *p, *e;

	snprintf(pat, sizeof(pat), "\"%s\":\"", key);
	p = strstr(body, pat);
	if (!p)
		return false;
	p += strlen(pat);
	e = strchr(p, '"');
	if (!e || (size_t)(e - p) >= size)
		return false;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = '\0';
	return true;
}

/* ---- the daemon ------------------------------------------------------------------------ */

static uint64_t daemon_cpu_ticks(void)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)daemon_pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	/* After the ")" that ends the command name: state is field 3, utime 14. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
			 &st) != 2)
		return 0;
	return ut + st;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");

	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		die("cannot write %s: %s", path, strerror(errno));
}

static void start_daemon(void)
{
	char conf[PATH_MAX + 16], state[PATH_MAX + 16], log[PATH_MAX + 16], text[PATH_MAX + 512];
	pid_t pid;

	snprintf(conf, sizeof(conf), "%s/dsnapd.conf", run_dir);
	snprintf(state, sizeof(state), "%s/state", run_dir);
	snprintf(log, sizeof(log), "%s/dsnapd.log", run_dir);
	if (strlen(run_dir) + 6 > sizeof(sock_path))
		die("%s: too long for a socket path", run_dir);
	memcpy(sock_path, run_dir, strlen(run_dir));
	memcpy(sock_path + strlen(run_dir), "/sock", 6);
	/* A caller that is not root needs a rule; root may do everything. */
	snprintf(text, sizeof(text), "uid:%u * *\n", (unsigned)getuid());
	snprintf(conf, sizeof(conf), "%s/policy", run_dir);
	write_file(conf, text);
	snprintf(text, sizeof(text),
		 "# api_bench: no flow control, no maintenance pass during the run\n"
		 "throttle_rate = 1000000\nthrottle_root = no\nmaintenance_interval = 3600\n"
		 "log_level = warning\npolicy = %s\n",
		 conf);
	snprintf(conf, sizeof(conf), "%s/dsnapd.conf", run_dir);
	write_file(conf, text);

	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(o.dsnapd, o.dsnapd, "--socket", sock_path, "--state", state, "--config", conf,
		      (char *)NULL);
		_exit(127);
	}
	daemon_pid = pid;
	/* Ready when it answers. */
	for (int i = 0; i < 200; i++) {
		struct answer a;
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			daemon_pid = 0;
			die("dsnapd exited at start (see %s, removed on exit)", log);
		}
		if (request("Action=DescribeSnapshotsUsage", &a) == 0) {
			bool ok = a.status == 200;
			answer_free(&a);
			if (ok)
				return;
		}
		usleep(50000);
	}
	die("dsnapd does not answer on %s after 10 s", sock_path);
}

/* ---- clients ------------------------------------------------------------------------------ */

struct client {
	pthread_t thread;
	unsigned idx;
	char disk[32];
	double *create_lat, *describe_lat; /* seconds */
	unsigned ncreate, ndescribe;
	unsigned errors, polls, failed_copies;
	char first_error[256];
};

static struct client *clients;
static pthread_barrier_t barrier;
static double phase_start[2], phase_end[2];
static atomic_uint done_clients;

static void note_error(struct client *c, const char *what, const struct answer *a)
{
	c->errors++;
	if (!c->first_error[0])
		snprintf(c->first_error, sizeof(c->first_error), "%s: %d %.200s", what,
			 a ? a->status : -1, a && a->body ? a->body : strerror(errno));
}

/* Polls the snapshot until it is no longer progressing. */
static void wait_copy(struct client *c, const char *snap)
{
	char form[192], status[32];

	/* DiskId narrows the catalog query to this disk's snapshots; without
	 * it every poll walks the whole catalog under the engine's lock. */
	snprintf(form, sizeof(form),
		 "Action=DescribeSnapshots&DiskId=%s&SnapshotIds=%%5B%%22%s%%22%%5D&MaxResults=1",
		 c->disk, snap);
	for (double end = now_s() + 60; now_s() < end;) {
		struct answer a;
		bool progressing = false;
		if (request(form, &a) < 0) {
			note_error(c, "DescribeSnapshots (poll)", NULL);
			return;
		}
		if (a.status != 200 || !json_str(a.body, "Status", status, sizeof(status))) {
			note_error(c, "DescribeSnapshots (poll)", &a);
			answer_free(&a);
			return;
		}
		c->polls++;
		progressing = strcmp(status, "progressing") == 0;
		if (!progressing && strcmp(status, "accomplished") != 0)
			c->failed_copies++;
		answer_free(&a);
		if (!progressing)
			return;
		usleep(o.poll_ms * 1000);
	}
	note_error(c, "copy still progressing after 60 s", NULL);
}

/* The last client to finish a phase stops its clock (main starts it). */
static void phase_done(int phase)
{
	double t = now_s();

	if (atomic_fetch_add(&done_clients, 1) + 1 == o.clients) {
		phase_end[phase] = t;
		atomic_store(&done_clients, 0);
	}
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	char form[256], snap[32];

	/* (a) CreateSnapshot of the client's own disk. */
	pthread_barrier_wait(&barrier);
	for (unsigned i = 0; i < o.creates; i++) {
		struct answer a;
		double t0;
		int r;

		snprintf(form, sizeof(form),
			 "Action=CreateSnapshot&DiskId=%s&SnapshotName=bench-%u-%u&"
			 "Description=api+bench&Tag.1.Key=bench&Tag.1.Value=api",
			 c->disk, c->idx, i);
		t0 = now_s();
		r = request(form, &a);
		if (r == 0 && a.status == 200 && json_str(a.body, "SnapshotId", snap, sizeof(snap))) {
			c->create_lat[c->ncreate++] = now_s() - t0;
			answer_free(&a);
			wait_copy(c, snap);
		} else {
			note_error(c, "CreateSnapshot", r == 0 ? &a : NULL);
			if (r == 0)
				answer_free(&a);
			usleep(10000);
		}
	}
	phase_done(0);

	/* (b) DescribeSnapshots, one page of 10. */
	pthread_barrier_wait(&barrier);
	for (unsigned i = 0; i < o.describes; i++) {
		struct answer a;
		double t0 = now_s();
		int r = request("Action=DescribeSnapshots&MaxResults=10", &a);

		if (r == 0 && a.status == 200)
			c->describe_lat[c->ndescribe++] = now_s() - t0;
		else
			note_error(c, "DescribeSnapshots", r == 0 ? &a : NULL);
		if (r == 0)
			answer_free(&a);
	}
	phase_done(1);
	return NULL;
}

/* ---- figures ---------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

#define MIN_(a, b) ((a) < (b) ? (a) : (b))

/* Nearest-rank percentile of sorted v. */
static double pct(const double *v, size_t n, double p)
{
	size_t k;

	if (n == 0)
		return 0;
	k = (size_t)(p / 100.0 * (double)n + 0.999999);
	return v[k == 0 ? 0 : MIN_(k, n) - 1];
}

struct figures {
	double p50, p99, max, mean, rps, cpu_ms; /* ms, ms, ms, ms, 1/s, ms per request */
	size_t n, errors;
};

static struct figures summarize(int phase, bool create, uint64_t cpu_ticks)
{
	struct figures f = {0};
	double *all, sum = 0;
	size_t n = 0;

	for (unsigned i = 0; i < o.clients; i++)
		n += create ? clients[i].ncreate : clients[i].ndescribe;
	all = malloc((n ? n : 1) * sizeof(*all));
	if (!all)
		die("out of memory");
	n = 0;
	for (unsigned i = 0; i < o.clients; i++) {
		struct client *c = &clients[i];
		unsigned k = create ? c->ncreate : c->ndescribe;
		memcpy(all + n, create ? c->create_lat : c->describe_lat, k * sizeof(*all));
		n += k;
	}
	qsort(all, n, sizeof(*all), cmp_double);
	for (size_t i = 0; i < n; i++)
		sum += all[i];
	f.n = n;
	f.p50 = pct(all, n, 50) * 1e3;
	f.p99 = pct(all, n, 99) * 1e3;
	f.max = n ? all[n - 1] * 1e3 : 0;
	f.mean = n ? sum / (double)n * 1e3 : 0;
	f.rps = (double)n / (phase_end[phase] - phase_start[phase]);
	f.cpu_ms = n ? (double)cpu_ticks * 1e3 / (double)sysconf(_SC_CLK_TCK) / (double)n : 0;
	free(all);
	return f;
}

static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- one run -------------------------------------------------------------------------------------- */

static void make_images(void)
{
	size_t sz = (size_t)o.disk_size;
	uint8_t *buf = malloc(sz);

	if (!buf)
		die("out of memory");
	for (unsigned i = 0; i < o.clients; i++) {
		char path[PATH_MAX + 32], form[PATH_MAX + 96];
		struct answer a;
		int fd;

		/* Random bytes: nothing to deduplicate between disks. */
		for (size_t k = 0; k < sz;) {
			ssize_t g = getrandom(buf + k, sz - k, 0);
			if (g > 0)
				k += (size_t)g;
		}
		snprintf(path, sizeof(path), "%s/disk%03u.img", run_dir, i);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || write_all(fd, (const char *)buf, sz) < 0 || close(fd) < 0)
			die("cannot write %s: %s", path, strerror(errno));
		snprintf(form, sizeof(form), "Action=RegisterDisk&Path=%s&DiskName=bench%03u", path,
			 i);
		if (request(form, &a) < 0)
			die("RegisterDisk: %s", strerror(errno));
		if (a.status != 200 ||
		    !json_str(a.body, "DiskId", clients[i].disk, sizeof(clients[i].disk)))
			die("RegisterDisk %s: %d %s", path, a.status, a.body);
		answer_free(&a);
	}
	free(buf);
}

static void one_run(unsigned run, struct figures *cr, struct figures *de)
{
	char tmpl[PATH_MAX];
	uint64_t t0, t1, t2;
	size_t errors = 0;

	snprintf(tmpl, sizeof(tmpl), "%s/api-bench.XXXXXX", o.workdir);
	if (!mkdtemp(tmpl))
		die("mkdtemp %s: %s", tmpl, strerror(errno));
	snprintf(run_dir, sizeof(run_dir), "%s", tmpl);
	start_daemon();

	clients = calloc(o.clients, sizeof(*clients));
	if (!clients)
		die("out of memory");
	for (unsigned i = 0; i < o.clients; i++) {
		clients[i].idx = i;
		clients[i].create_lat = calloc(o.creates ? o.creates : 1, sizeof(double));
		clients[i].describe_lat = calloc(o.describes ? o.describes : 1, sizeof(double));
		if (!clients[i].create_lat || !clients[i].describe_lat)
			die("out of memory");
	}
	make_images();

	pthread_barrier_init(&barrier, NULL, o.clients + 1);
	for (unsigned i = 0; i < o.clients; i++)
		if (pthread_create(&clients[i].thread, NULL, client_main, &clients[i]) != 0)
			die("pthread_create: %s", strerror(errno));
	t0 = daemon_cpu_ticks();
	pthread_barrier_wait(&barrier); /* phase (a) */
	phase_start[0] = now_s();
	pthread_barrier_wait(&barrier); /* phase (b): every client is done with (a) */
	phase_start[1] = now_s();
	t1 = daemon_cpu_ticks();
	for (unsigned i = 0; i < o.clients; i++)
		pthread_join(clients[i].thread, NULL);
	t2 = daemon_cpu_ticks();
	pthread_barrier_destroy(&barrier);

	*cr = summarize(0, true, t1 - t0);
	*de = summarize(1, false, t2 - t1);
	for (unsigned i = 0; i < o.clients; i++) {
		struct client *c = &clients[i];
		errors += c->errors + c->failed_copies;
		if (c->first_error[0])
			fprintf(stderr, "api_bench: client %u: %u error(s), first: %s\n", i,
				c->errors, c->first_error);
		if (c->failed_copies)
			fprintf(stderr, "api_bench: client %u: %u copies failed\n", i,
				c->failed_copies);
	}
	cr->errors = de->errors = errors;
	printf("run %u: CreateSnapshot    n=%zu p50=%.2f p99=%.2f max=%.2f mean=%.2f ms, "
	       "%.1f req/s, dsnapd CPU %.2f ms/req (polling included)\n",
	       run, cr->n, cr->p50, cr->p99, cr->max, cr->mean, cr->rps, cr->cpu_ms);
	printf("run %u: DescribeSnapshots n=%zu p50=%.2f p99=%.2f max=%.2f mean=%.2f ms, "
	       "%.1f req/s, dsnapd CPU %.2f ms/req; errors %zu\n",
	       run, de->n, de->p50, de->p99, de->max, de->mean, de->rps, de->cpu_ms, errors);
	fflush(stdout);

	for (unsigned i = 0; i < o.clients; i++) {
		free(clients[i].create_lat);
		free(clients[i].describe_lat);
	}
	free(clients);
	clients = NULL;
	cleanup();
}

static void usage(FILE *f)
{
	fprintf(f, "usage: api_bench [--dsnapd PATH] [--workdir DIR] [--clients N] [--creates N]\n"
		   "                 [--describes N] [--runs R] [--disk-size BYTES] [--poll-ms MS]\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{"dsnapd", required_argument, NULL, 'd'},    {"workdir", required_argument, NULL, 'w'},
		{"clients", required_argument, NULL, 'c'},   {"creates", required_argument, NULL, 'n'},
		{"describes", required_argument, NULL, 'D'}, {"runs", required_argument, NULL, 'r'},
		{"disk-size", required_argument, NULL, 's'}, {"poll-ms", required_argument, NULL, 'p'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}};
	static char self_dsnapd[PATH_MAX + 32];
	struct figures cr[MAX_RUNS], de[MAX_RUNS];
	double v[6][MAX_RUNS];
	size_t errors = 0;
	int ch;

	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case 'd': o.dsnapd = optarg; break;
		case 'w': o.workdir = optarg; break;
		case 'c': o.clients = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'n': o.creates = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'D': o.describes = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'r': o.runs = (unsigned)strtoul(optarg, NULL, 10); break;
		case 's': o.disk_size = strtoull(optarg, NULL, 10); break;
		case 'p': o.poll_ms = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || o.clients == 0 || o.clients > MAX_CLIENTS || o.runs == 0 ||
	    o.runs > MAX_RUNS || o.disk_size == 0 || o.disk_size > (1ull << 30) ||
	    o.creates > 256 || o.poll_ms == 0 || o.poll_ms > 10000) {
		usage(stderr);
		return 2;
	}
	if (!o.dsnapd) {
		/* build/bench/api_bench -> build/daemon/dsnapd */
		char self[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		char *slash;
		if (n <= 0)
			die("cannot find dsnapd: pass --dsnapd");
		self[n] = '\0';
		slash = strrchr(self, '/');
		*slash = '\0';
		snprintf(self_dsnapd, sizeof(self_dsnapd), "%s/../daemon/dsnapd", self);
		o.dsnapd = self_dsnapd;
	}
	if (access(o.dsnapd, X_OK) < 0)
		die("%s: %s", o.dsnapd, strerror(errno));
	if (!o.workdir)
		o.workdir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	atexit(cleanup);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);

	printf("api_bench: dsnapd %s, %u clients, %u creates each (1 disk of %" PRIu64
	       " bytes each), %u describes each (MaxResults=10), %u runs\n",
	       o.dsnapd, o.clients, o.creates, o.disk_size, o.describes, o.runs);
	for (unsigned r = 0; r < o.runs; r++) {
		one_run(r + 1, &cr[r], &de[r]);
		errors += cr[r].errors;
		v[0][r] = cr[r].p50;
		v[1][r] = cr[r].p99;
		v[2][r] = cr[r].rps;
		v[3][r] = de[r].p50;
		v[4][r] = de[r].p99;
		v[5][r] = de[r].rps;
	}
	printf("\nmedian of %u runs:\n", o.runs);
	printf("| request | clients | requests per run | p50 ms | p99 ms | req/s |\n");
	printf("|---|---:|---:|---:|---:|---:|\n");
	printf("| CreateSnapshot | %u | %u | %.2f | %.2f | %.1f |\n", o.clients,
	       o.clients * o.creates, median(v[0], o.runs), median(v[1], o.runs),
	       median(v[2], o.runs));
	printf("| DescribeSnapshots (MaxResults=10, %u snapshots) | %u | %u | %.2f | %.2f | %.1f |\n",
	       o.clients * o.creates, o.clients, o.clients * o.describes, median(v[3], o.runs),
	       median(v[4], o.runs), median(v[5], o.runs));
	if (errors)
		fprintf(stderr, "api_bench: %zu request(s) failed\n", errors);
	return errors ? 1 : 0;
}
