#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "util/util.h"

static ds_log_fn log_fn;
static void *log_opaque;
static enum ds_log_level log_max = DS_LOG_WARN;

void ds_set_log(ds_log_fn fn, void *opaque, enum ds_log_level max_level)
{
	log_fn = fn;
	log_opaque = opaque;
	log_max = max_level;
}

void ds_log(enum ds_log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	char msg[1024];
	va_list ap;

	if (level > log_max)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log_fn)
		log_fn(level, msg, log_opaque);
	else
		fprintf(stderr, "dsnap: %s: %s\n", names[level], msg);
}

void ds_default_paths(char *socket, size_t socket_size, char *state, size_t state_size)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR"), *data = getenv("XDG_DATA_HOME"),
		   *home = getenv("HOME");
	char st[4096];

	if (geteuid() == 0) {
		snprintf(st, sizeof(st), "/var/lib/dsnap");
		if (socket)
			snprintf(socket, socket_size, "/run/dsnap/dsnapd.sock");
	} else {
		if (data && *data)
			snprintf(st, sizeof(st), "%s/dsnap", data);
		else
			snprintf(st, sizeof(st), "%s/.local/share/dsnap", home ? home : ".");
		if (socket && xdg && *xdg)
			snprintf(socket, socket_size, "%s/dsnap/dsnapd.sock", xdg);
		else if (socket)
			snprintf(socket, socket_size, "%.4000s/dsnapd.sock", st);
	}
	if (state)
		snprintf(state, state_size, "%s", st);
}
