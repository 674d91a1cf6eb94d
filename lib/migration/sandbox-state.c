/* The sandbox state a migration carries: packing, decoding and the destination's checks
 * (include/ferry/sandbox-state.h, docs/migration.md "The sandbox state"). */
#include <string.h>

#include "ferry/error.h"
#include "ferry/sandbox-state.h"

GBytes *ferry_sandbox_state_pack(const Ferry__V1__SandboxState *state)
{
  size_t size = ferry__v1__sandbox_state__get_packed_size(state);
  guint8 *buf = g_malloc(size > 0 ? size : 1);
  size_t written = ferry__v1__sandbox_state__pack(state, buf);
  return g_bytes_new_take(buf, written);
}

gboolean ferry_sandbox_state_check_schema(guint32 schema_version, GError **error)
{
  if (schema_version >= FERRY_SANDBOX_STATE_SCHEMA_MIN &&
      schema_version <= FERRY_SANDBOX_STATE_SCHEMA_VERSION)
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
              "sandbox state schema version %u is not one this shim reads (%u to %u)",
              schema_version, FERRY_SANDBOX_STATE_SCHEMA_MIN, FERRY_SANDBOX_STATE_SCHEMA_VERSION);
  return FALSE;
}

Ferry__V1__SandboxState *ferry_sandbox_state_unpack(const char *type_url, const guint8 *value,
                                                    gsize len, GError **error)
{
  if (type_url == NULL || strcmp(type_url, FERRY_SANDBOX_STATE_TYPE_URL) != 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "sandbox state: type URL \"%s\" is not " FERRY_SANDBOX_STATE_TYPE_URL,
                type_url != NULL ? type_url : "");
    return NULL;
  }
  if (len > FERRY_SANDBOX_STATE_MAX_BYTES) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "sandbox state: %" G_GSIZE_FORMAT " bytes, more than the %u accepted", len,
                FERRY_SANDBOX_STATE_MAX_BYTES);
    return NULL;
  }
  Ferry__V1__SandboxState *state =
      ferry__v1__sandbox_state__unpack(NULL, len, len > 0 ? value : (const guint8 *)"");
  if (state == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "sandbox state: %" G_GSIZE_FORMAT " bytes do not decode as ferry.v1.SandboxState",
                len);
    return NULL;
  }
  if (!ferry_sandbox_state_check_schema(state->schema_version, error) ||
      !ferry_sandbox_state_validate(state, error)) {
    ferry__v1__sandbox_state__free_unpacked(state, NULL);
    return NULL;
  }
  return state;
}

/* ------------------------------------------------------------ validation -- */

static gboolean invalid(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static gboolean invalid(GError **error, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "sandbox state: %s", msg);
  return FALSE;
}

/* A name the destination may join to a directory of its own. */
static const char *name_problem(const char *name)
{
  if (name == NULL || name[0] == '\0')
    return "is empty";
  if (strlen(name) > 255)
    return "is longer than 255 bytes";
  if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
    return "is . or ..";
  for (const char *p = name; *p != '\0'; p++) {
    if (*p == '/')
      return "holds a '/'";
    if (!g_ascii_isgraph(*p))
      return "holds a character that is not printable ASCII";
  }
  return NULL;
}

/* A ferry_mux_import_channel() precondition that a peer can break. */
static const char *channel_problem(const Ferry__V1__MuxChannelState *c)
{
  if (c->id == 0)
    return "id 0";
  if (c->send_acked > c->send_total || c->send_total - c->send_acked != c->unacked.len)
    return "unacknowledged bytes do not match the offsets";
  if (c->peer_shut && c->peer_final < c->recv_consumed)
    return "the peer's final length is below what was consumed";
  return NULL;
}

static gboolean take_port(GHashTable *ports, guint32 port, const char *container,
                          const char *exec_id, GError **error)
{
  if (port == 0)
    return TRUE;
  if (!g_hash_table_add(ports, GUINT_TO_POINTER(port)))
    return invalid(error, "container %s process \"%s\": stdio port %u is used twice", container,
                   exec_id, port);
  return TRUE;
}

static gboolean validate_process(const Ferry__V1__Container *c, size_t index, GHashTable *exec_ids,
                                 GHashTable *ports, GError **error)
{
  const Ferry__V1__Process *p = c->processes[index];
  const char *exec_id = p->exec_id != NULL ? p->exec_id : "";
  if (index == 0 && exec_id[0] != '\0')
    return invalid(error, "container %s: the first process is exec \"%s\", not the init", c->id,
                   exec_id);
  if (index > 0) {
    const char *why = name_problem(exec_id);
    if (why != NULL)
      return invalid(error, "container %s: exec id \"%s\" %s", c->id, exec_id, why);
    if (!g_hash_table_add(exec_ids, (gpointer)exec_id))
      return invalid(error, "container %s: exec id %s appears twice", c->id, exec_id);
  }
  switch (p->status) {
  case FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_CREATED:
  case FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_RUNNING:
  case FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_EXITED:
    break;
  default:
    return invalid(error,
                   "container %s process \"%s\": status %d is not created, running or exited",
                   c->id, exec_id, (int)p->status);
  }
  if (p->status != FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_EXITED && p->exit_published)
    return invalid(error, "container %s process \"%s\": an exit was published but it did not exit",
                   c->id, exec_id);
  const Ferry__V1__ProcessMigrationState *m = p->migration;
  if (m != NULL && (!take_port(ports, m->stdin_port, c->id, exec_id, error) ||
                    !take_port(ports, m->stdout_port, c->id, exec_id, error) ||
                    !take_port(ports, m->stderr_port, c->id, exec_id, error)))
    return FALSE;
  return TRUE;
}

static gboolean validate_container(const Ferry__V1__Container *c, GHashTable *digests,
                                   GHashTable *ports, GError **error)
{
  if (c->n_processes == 0)
    return invalid(error, "container %s has no init process", c->id);
  if (c->n_processes > FERRY_SANDBOX_STATE_MAX_PROCESSES)
    return invalid(error, "container %s has %zu processes, more than %u", c->id, c->n_processes,
                   FERRY_SANDBOX_STATE_MAX_PROCESSES);
  for (size_t i = 0; i < c->n_layer_digests; i++)
    if (!g_hash_table_contains(digests, c->layer_digests[i]))
      return invalid(error, "container %s: layer %s is on no disk", c->id, c->layer_digests[i]);
  g_autoptr(GHashTable) exec_ids = g_hash_table_new(g_str_hash, g_str_equal);
  for (size_t i = 0; i < c->n_processes; i++)
    if (!validate_process(c, i, exec_ids, ports, error))
      return FALSE;
  return TRUE;
}

gboolean ferry_sandbox_state_validate(const Ferry__V1__SandboxState *state, GError **error)
{
  const char *why = name_problem(state->sandbox_id);
  if (why != NULL)
    return invalid(error, "sandbox id \"%s\" %s", state->sandbox_id ? state->sandbox_id : "", why);
  if (state->compatibility == NULL)
    return invalid(error, "no compatibility data");
  if (state->n_containers > FERRY_SANDBOX_STATE_MAX_CONTAINERS)
    return invalid(error, "%zu containers, more than %u", state->n_containers,
                   FERRY_SANDBOX_STATE_MAX_CONTAINERS);

  g_autoptr(GHashTable) digests = g_hash_table_new(g_str_hash, g_str_equal);
  g_autoptr(GHashTable) addresses = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  for (size_t i = 0; i < state->n_disks; i++) {
    const Ferry__V1__Disk *d = state->disks[i];
    if ((why = name_problem(d->controller)) != NULL)
      return invalid(error, "disk %zu: controller \"%s\" %s", i, d->controller, why);
    if (d->digest == NULL || d->digest[0] == '\0' || name_problem(d->digest) != NULL)
      return invalid(error, "disk %s/%u: digest \"%s\" is not a plain name", d->controller, d->lun,
                     d->digest ? d->digest : "");
    if (!g_hash_table_add(addresses, g_strdup_printf("%s/%u", d->controller, d->lun)))
      return invalid(error, "disk %s/%u appears twice", d->controller, d->lun);
    if (!g_hash_table_add(digests, d->digest))
      return invalid(error, "digest %s is on two disks", d->digest);
  }

  g_autoptr(GHashTable) ids = g_hash_table_new(g_str_hash, g_str_equal);
  g_autoptr(GHashTable) ports = g_hash_table_new(NULL, NULL);
  for (size_t i = 0; i < state->n_containers; i++) {
    const Ferry__V1__Container *c = state->containers[i];
    if ((why = name_problem(c->id)) != NULL)
      return invalid(error, "container id \"%s\" %s", c->id ? c->id : "", why);
    if (!g_hash_table_add(ids, c->id))
      return invalid(error, "container %s appears twice", c->id);
    if (!validate_container(c, digests, ports, error))
      return FALSE;
  }

  g_autoptr(GHashTable) channels = g_hash_table_new(NULL, NULL);
  for (size_t i = 0; i < state->n_channels; i++) {
    const Ferry__V1__MuxChannelState *c = state->channels[i];
    if ((why = channel_problem(c)) != NULL)
      return invalid(error, "mux channel %u (port %u): %s", c->id, c->port, why);
    if (!g_hash_table_add(channels, GUINT_TO_POINTER(c->id)))
      return invalid(error, "mux channel %u appears twice", c->id);
  }
  return TRUE;
}

/* ------------------------------------------------------------ compatibility -- */

static const char *str_or_none(const char *s)
{
  return s != NULL && s[0] != '\0' ? s : "(none)";
}

static gboolean differs(GError **error, const char *what, const char *here, const char *there)
{
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
              "%s differs: %s here, %s in the state", what, str_or_none(here), str_or_none(there));
  return FALSE;
}

static gboolean same(const char *a, const char *b)
{
  return g_strcmp0(a != NULL ? a : "", b != NULL ? b : "") == 0;
}

gboolean ferry_sandbox_state_check_compat(const Ferry__V1__Compatibility *local,
                                          const Ferry__V1__Compatibility *remote, GError **error)
{
  if (remote == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "the sandbox state carries no compatibility data");
    return FALSE;
  }
  static const struct {
    const char *what;
    size_t offset;
  } strings[] = {
    { "QEMU version", G_STRUCT_OFFSET(Ferry__V1__Compatibility, qemu_version) },
    { "machine type", G_STRUCT_OFFSET(Ferry__V1__Compatibility, machine_type) },
    { "accelerator", G_STRUCT_OFFSET(Ferry__V1__Compatibility, accelerator) },
    { "CPU model", G_STRUCT_OFFSET(Ferry__V1__Compatibility, cpu_model) },
  };
  for (size_t i = 0; i < G_N_ELEMENTS(strings); i++) {
    const char *here = G_STRUCT_MEMBER(const char *, local, strings[i].offset);
    const char *there = G_STRUCT_MEMBER(const char *, remote, strings[i].offset);
    if (!same(here, there))
      return differs(error, strings[i].what, here, there);
  }
  for (size_t i = 0; i < remote->n_cpu_flags; i++) {
    gboolean found = FALSE;
    for (size_t j = 0; j < local->n_cpu_flags && !found; j++)
      found = same(remote->cpu_flags[i], local->cpu_flags[j]);
    if (!found) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                  "CPU flags differ: %s in the state, not here", remote->cpu_flags[i]);
      return FALSE;
    }
  }
  if (!same(local->guest_image_digest, remote->guest_image_digest))
    return differs(error, "guest image digest", local->guest_image_digest,
                   remote->guest_image_digest);
  if (local->agent_protocol_version != remote->agent_protocol_version) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "agent protocol version differs: %u here, %u in the state",
                local->agent_protocol_version, remote->agent_protocol_version);
    return FALSE;
  }
  return TRUE;
}

gboolean ferry_sandbox_state_check_layers(const Ferry__V1__SandboxState *state,
                                          FerrySandboxStateHasLayerFunc has, gpointer user_data,
                                          GError **error)
{
  for (size_t i = 0; i < state->n_disks; i++) {
    const char *digest = state->disks[i]->digest;
    if (has(digest, user_data))
      continue;
    const char *user = NULL;
    for (size_t c = 0; c < state->n_containers && user == NULL; c++)
      for (size_t l = 0; l < state->containers[c]->n_layer_digests && user == NULL; l++)
        if (g_strcmp0(state->containers[c]->layer_digests[l], digest) == 0)
          user = state->containers[c]->id;
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "rootfs layer %s (%s%s) is not on this host", digest,
                user != NULL ? "container " : "no container", user != NULL ? user : "");
    return FALSE;
  }
  return TRUE;
}

/* ------------------------------------------------------------ mux channels -- */

void ferry_sandbox_state_channel_from_mux(const FerryMuxChannelState *in,
                                          Ferry__V1__MuxChannelState *out)
{
  ferry__v1__mux_channel_state__init(out);
  out->id = in->id;
  out->port = in->port;
  out->established = in->established;
  out->recv_consumed = in->recv_consumed;
  out->recv_window = in->recv_window;
  out->peer_shut = in->peer_shut;
  out->peer_final = in->peer_final;
  out->eof_emitted = in->eof_emitted;
  out->send_acked = in->send_acked;
  out->send_total = in->send_total;
  if (in->unacked != NULL) {
    gsize len;
    out->unacked.data = (uint8_t *)g_bytes_get_data(in->unacked, &len);
    out->unacked.len = len;
  }
  out->peer_window = in->peer_window;
  out->shut = in->shut;
}

void ferry_sandbox_state_channel_to_mux(const Ferry__V1__MuxChannelState *in,
                                        FerryMuxChannelState *out)
{
  memset(out, 0, sizeof(*out));
  out->id = in->id;
  out->port = in->port;
  out->established = in->established;
  out->recv_consumed = in->recv_consumed;
  out->recv_window = in->recv_window;
  out->peer_shut = in->peer_shut;
  out->peer_final = in->peer_final;
  out->eof_emitted = in->eof_emitted;
  out->send_acked = in->send_acked;
  out->send_total = in->send_total;
  out->unacked = g_bytes_new(in->unacked.data, in->unacked.len);
  out->peer_window = in->peer_window;
  out->shut = in->shut;
}
