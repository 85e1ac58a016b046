/*
 * libdsnap: the dsnap engine's public API.
 *
 * Contract for every function in include/dsnap/: it returns 0 (or a
 * non-negative count where it says so) on success and a negative errno on
 * failure. A failed call changes nothing that a later call can observe,
 * unless its comment says otherwise. Handles are opaque.
 */
#ifndef DSNAP_DSNAP_H
#define DSNAP_DSNAP_H

#include <stdarg.h>

#define DS_EXPORT __attribute__((visibility("default")))

#define DS_VERSION_STRING "0.1.0"

enum ds_log_level { DS_LOG_ERROR = 0, DS_LOG_WARN = 1, DS_LOG_INFO = 2, DS_LOG_DEBUG = 3 };

/*
 * Where the engine's log lines go. The default writes ERROR and WARN lines
 * to stderr. fn == NULL restores the default. Not thread-safe against
 * concurrent logging: set it once at start-up.
 */
typedef void (*ds_log_fn)(enum ds_log_level level, const char *msg, void *opaque);
DS_EXPORT void ds_set_log(ds_log_fn fn, void *opaque, enum ds_log_level max_level);

/*
 * Where dsnapd listens and keeps its state by default, and so where dsnap
 * looks: as root /run/dsnap/dsnapd.sock and /var/lib/dsnap; otherwise
 * $XDG_RUNTIME_DIR/dsnap/dsnapd.sock (else STATE/dsnapd.sock) and
 * $XDG_DATA_HOME/dsnap (else ~/.local/share/dsnap). Either pointer may be NULL.
 */
#include <stddef.h>
DS_EXPORT void ds_default_paths(char *socket, size_t socket_size, char *state, size_t state_size);

#endif
