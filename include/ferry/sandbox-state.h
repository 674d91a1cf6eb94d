/*
 * The sandbox state a migration carries (ferry.v1.SandboxState, proto/ferry/v1/
 * sandbox_state.proto; docs/migration.md, "The sandbox state"): packing it into the
 * google.protobuf.Any of PrepareAndExportSandbox, and the checks a destination makes
 * before it starts anything. Pure: bytes and messages in, messages or errors out.
 */
#pragma once

#include <glib.h>

#include "ferry/mux.h"
#include "ferry/v1/mux.pb-c.h"
#include "ferry/v1/sandbox_state.pb-c.h"

G_BEGIN_DECLS

/* The schema this build writes, and the oldest one it reads (docs/migration.md,
 * versioning). */
#define FERRY_SANDBOX_STATE_SCHEMA_VERSION 1u
#define FERRY_SANDBOX_STATE_SCHEMA_MIN 1u
/* The Any's type URL. */
#define FERRY_SANDBOX_STATE_TYPE_URL "type.googleapis.com/ferry.v1.SandboxState"
/* The largest encoded state accepted (the mux's unacknowledged bytes are at most 1 MiB
 * per channel, docs/mux.md; a sandbox with many stdio channels stays far below this). */
#define FERRY_SANDBOX_STATE_MAX_BYTES (64u * 1024 * 1024)
/* Bounds on what one state may hold. */
#define FERRY_SANDBOX_STATE_MAX_CONTAINERS 1024
#define FERRY_SANDBOX_STATE_MAX_PROCESSES 4096 /* per container */

/* Encode `state` (borrowed) as the Any's value. New bytes. */
GBytes *ferry_sandbox_state_pack(const Ferry__V1__SandboxState *state);

/*
 * Decode an Any's `type_url` and `value` into a new state (free with
 * ferry__v1__sandbox_state__free_unpacked(state, NULL)). Refuses, naming why: another
 * type URL, more than FERRY_SANDBOX_STATE_MAX_BYTES, bytes that do not decode
 * (INVALID_ARGUMENT); a schema version this build does not read
 * (FAILED_PRECONDITION); then whatever ferry_sandbox_state_validate() refuses.
 */
Ferry__V1__SandboxState *ferry_sandbox_state_unpack(const char *type_url, const guint8 *value,
                                                    gsize len, GError **error);

/* FAILED_PRECONDITION unless FERRY_SANDBOX_STATE_SCHEMA_MIN <= version <= _VERSION:
 * "sandbox state schema version 2 is not one this shim reads (1 to 1)". */
gboolean ferry_sandbox_state_check_schema(guint32 schema_version, GError **error);

/*
 * What a destination requires of a decoded state before it trusts it (INVALID_ARGUMENT
 * naming the item): a sandbox id and compatibility data; container, exec and disk names
 * that are plain names (no '/', not "." or "..", printable, at most 255 bytes), each
 * once; the init process first in each container and only there; exited processes
 * only with status EXITED; stdio ports unique across the sandbox; every layer digest
 * on a disk; every mux channel consistent (its unacknowledged bytes match its offsets),
 * each id once.
 */
gboolean ferry_sandbox_state_validate(const Ferry__V1__SandboxState *state, GError **error);

/*
 * Can a VM described by `remote` (the state's compatibility data) run here, described by
 * `local`? FAILED_PRECONDITION naming the first difference, in this order: QEMU version,
 * machine type, accelerator, CPU model, CPU flags (every flag of the state must be here),
 * guest image digest, agent protocol version. For example "QEMU version differs: 7.2.0
 * here, 8.0.0 in the state". Both borrowed; NULL `remote` is FAILED_PRECONDITION too.
 */
gboolean ferry_sandbox_state_check_compat(const Ferry__V1__Compatibility *local,
                                          const Ferry__V1__Compatibility *remote, GError **error);

/* Does this host have the layer image with `digest`? */
typedef gboolean (*FerrySandboxStateHasLayerFunc)(const char *digest, gpointer user_data);

/* Every disk's layer image must be here (asked of `has` in the state's disk order):
 * FAILED_PRECONDITION naming the first missing one and a container using it,
 * "rootfs layer sha256:... (container c1) is not on this host". */
gboolean ferry_sandbox_state_check_layers(const Ferry__V1__SandboxState *state,
                                          FerrySandboxStateHasLayerFunc has, gpointer user_data,
                                          GError **error);

/* Between the mux's exported channel state (include/ferry/mux.h) and its message.
 * from_mux: `out` is initialised here and borrows `in`'s unacknowledged bytes (keep
 * `in` alive while `out` is used). to_mux: `out` gets a new reference to a copy of the
 * bytes (ferry_mux_channel_state_clear() it); the values are not checked here
 * (ferry_mux_import_channel() does). */
void ferry_sandbox_state_channel_from_mux(const FerryMuxChannelState *in,
                                          Ferry__V1__MuxChannelState *out);
void ferry_sandbox_state_channel_to_mux(const Ferry__V1__MuxChannelState *in,
                                        FerryMuxChannelState *out);

G_END_DECLS
