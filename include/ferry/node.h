/*
 * The node agents of a migration between hosts (docs/migrate.md): the receiver a
 * destination runs (`ferry receive`) and the migrator a source runs (`ferry migrate`).
 * They speak ttrpc over one TLS control connection (ferry.node.v1.Receive, and hcsshim's
 * Migration and Ferry's Status forwarded to the session's destination shim) and hand a
 * second connection, the memory stream, to the two shims' QEMUs, which run TLS on it
 * themselves. What is specific to a program (how a shim starts, where a process's
 * output goes) comes from its handlers.
 *
 * Everything runs on the thread-default main context of the constructor; no handler
 * runs inside the call that started it.
 */
#pragma once

#include <gio/gio.h>

#include "ferry/migration.h"
#include "ferry/tls.h"

G_BEGIN_DECLS

/* What a memory connection sends before QEMU's own bytes: the prefix, a token, "\n". */
#define FERRY_NODE_MEMORY_PREFIX "FERRYMEM1 "

/* ------------------------------------------------------------- receiver -- */

typedef struct FerryReceiver FerryReceiver;

typedef struct {
  /* Start a destination shim for sandbox `name` in `bundle` (a new, empty directory):
   * its ttrpc address, or NULL with the error. May block for the shim's start. */
  char *(*start_shim)(FerryReceiver *r, const char *name, const char *bundle, gpointer user_data,
                      GError **error);
  /* Where a bound process's output goes here (exec_id "" for the init): stdout and
   * stderr URIs, either NULL for none. */
  void (*stdio)(FerryReceiver *r, const char *name, const char *exec_id, char **out, char **err,
                gpointer user_data);
  /* A session ended without the sandbox (it did not migrate): its shim and directory
   * go. */
  void (*discard)(FerryReceiver *r, const char *name, const char *bundle, gpointer user_data);
  /* A session began or ended (for the program's log). Optional. */
  void (*session)(FerryReceiver *r, const char *name, const char *what, const GError *error,
                  gpointer user_data);
} FerryReceiverHandlers;

typedef struct {
  const char *root;               /* sandboxes/<name>/bundle and images/ under it */
  const FerryTlsCredentials *tls; /* the server's; NULL: no TLS (tests only) */
  guint64 max_layer_bytes;        /* one travelled image at most; 0: 4 GiB */
} FerryReceiverConfig;

/* The receiver; it serves once ferry_receiver_listen() bound its address. `config` and
 * its credentials must outlive it. */
FerryReceiver *ferry_receiver_new(const FerryReceiverConfig *config,
                                  const FerryReceiverHandlers *handlers, gpointer user_data,
                                  GError **error);
/* Listen on `address` ("HOST:PORT"; port 0: any free one, ferry_receiver_port() says). */
gboolean ferry_receiver_listen(FerryReceiver *r, const char *address, GError **error);
guint16 ferry_receiver_port(FerryReceiver *r);
void ferry_receiver_free(FerryReceiver *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryReceiver, ferry_receiver_free)

/* ------------------------------------------------------------- migrator -- */

typedef struct FerryMigrator FerryMigrator;

typedef struct {
  const char *name;       /* the sandbox, as the receiver will call it */
  FerryTtrpcClient *shim; /* the sandbox's shim here (the caller's) */
  /* Where that shim's layer images are (NULL-terminated): its cache, and the layer store
   * of a sandbox that arrived here. What the receiver lacks travels from there. */
  const char *const *image_dirs;
  const char *address;              /* the receiver, "HOST:PORT" */
  const FerryTlsCredentials *tls;   /* the client's; NULL: no TLS (tests only) */
  const char *socket_dir;           /* where the memory stream is handed to the shim */
  const InitializeOptions *options; /* the source's; the TLS fields are set here */
  guint call_timeout_ms;            /* 0: lib/migration's */
} FerryMigratorConfig;

typedef struct {
  void (*progress)(FerryMigrator *m, const FerryMigrationProgress *progress, gpointer user_data);
  /* Once: as lib/migration's done; `error` says why (or, MIGRATED, what did not clean
   * up). A failure before the migration began (the receiver unreachable or refusing)
   * is RECOVERED: nothing was touched. */
  void (*done)(FerryMigrator *m, FerryMigrationOutcome outcome, const GError *error,
               gpointer user_data);
} FerryMigratorHandlers;

FerryMigrator *ferry_migrator_start(const FerryMigratorConfig *config,
                                    const FerryMigratorHandlers *handlers, gpointer user_data,
                                    GError **error);
/* As ferry_migration_cancel(); before the migration began it stops there. */
gboolean ferry_migrator_cancel(FerryMigrator *m);
void ferry_migrator_free(FerryMigrator *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryMigrator, ferry_migrator_free)

G_END_DECLS
