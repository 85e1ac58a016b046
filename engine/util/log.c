#include <stdarg.h>
#include <stdio.h>

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
