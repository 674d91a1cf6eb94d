/*
 * The bridge handlers (docs/bridge-protocol.md, bodies), ExecuteProcess aside (exec.c). Each
 * answers at once except WaitForProcess, which answers when the process has exited and
 * drained, and a UVM shutdown, which is not answered at all.
 */
#include <signal.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "gcs-impl.h"

/* Container ids reach crun's command line and paths: the runtime's rule (runtime.h). */
#define MAX_CONTAINER_ID 128

static gboolean valid_container_id(const char *id)
{
  gsize len = strlen(id);
  if (len == 0 || len > MAX_CONTAINER_ID || id[0] == '.' || id[0] == '-')
    return FALSE;
  for (gsize i = 0; i < len; i++)
    if (!g_ascii_isalnum(id[i]) && id[i] != '_' && id[i] != '-' && id[i] != '.')
      return FALSE;
  return TRUE;
}

/* The request's container, or NULL after answering 0xC037010E. */
static GcsContainer *request_container(FerryGcs *gcs, FerryBridgeRequest *request, const char *what)
{
  const char *id = ferry_bridge_request_get_container_id(request);
  GcsContainer *c = gcs_container_lookup(gcs, id);
  if (c == NULL)
    ferry_bridge_request_reply_error(request, FERRY_HR_SYSTEM_NOT_FOUND,
                                     "%s: container %s does not exist", what, id);
  return c;
}

/*
 * The process named by the request's ProcessId in the request's container (the null
 * container: processes in the UVM), or NULL after answering: E_INVALIDARG for a bad
 * ProcessId, 0xC037010E for an unknown container, 0x80070490 for an unknown process or
 * one whose serial is not the request's (a host without serials names the pid alone).
 */
static GcsProcess *request_process(FerryGcs *gcs, FerryBridgeRequest *request, const char *what)
{
  json_t *body = ferry_bridge_request_get_body(request);
  guint32 pid = 0;
  gint64 serial = 0;
  g_autoptr(GError) error = NULL;
  if (!ferry_json_get_uint32(body, "ProcessId", TRUE, &pid, &error) ||
      !ferry_json_get_int64(body, FERRY_BRIDGE_PROCESS_SERIAL, FALSE, &serial, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "%s: %s", what,
                                     error->message);
    return NULL;
  }
  const char *cid = ferry_bridge_request_get_container_id(request);
  GcsContainer *c = NULL;
  if (!gcs_is_uvm(cid) && (c = request_container(gcs, request, what)) == NULL)
    return NULL;
  GcsProcess *record = pid <= G_MAXINT ? gcs_process_lookup(gcs, (GPid)pid) : NULL;
  gboolean matches = record != NULL && (c == NULL ? record->container_id == NULL
                                                  : record->container_id != NULL &&
                                                        strcmp(record->container_id, c->id) == 0 &&
                                                        record->container_serial == c->serial);
  if (matches && serial != 0 && (serial < 0 || (guint64)serial != record->serial))
    matches = FALSE;
  if (!matches) {
    ferry_bridge_request_reply_error(request, FERRY_HR_NOT_FOUND, "%s: process %u not found in %s",
                                     what, pid, c != NULL ? c->id : "the UVM");
    return NULL;
  }
  return record;
}

/* -------------------------------------------------------------- Create -- */

static gboolean schema_at_least_2_1(json_t *config, GError **error)
{
  json_t *schema = NULL;
  guint32 major = 0, minor = 0;
  if (!ferry_json_get_object(config, "SchemaVersion", TRUE, &schema, error) ||
      !ferry_json_get_uint32(schema, "Major", TRUE, &major, error) ||
      !ferry_json_get_uint32(schema, "Minor", FALSE, &minor, error))
    return FALSE;
  if (major < 2 || (major == 2 && minor < 1)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "schema version %u.%u is not supported (2.1 or later)", major, minor);
    return FALSE;
  }
  return TRUE;
}

/* Put the OCI spec where crun reads it: the bundle's config.json. */
static gboolean write_bundle_config(const char *bundle, json_t *spec, GError **error)
{
  g_autofree char *path = g_build_filename(bundle, "config.json", NULL);
  g_autofree char *text = json_dumps(spec, JSON_COMPACT);
  if (text == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "serialize the OCI spec");
    return FALSE;
  }
  return g_file_set_contents_full(path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, error);
}

static void handle_create(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  const char *id = ferry_bridge_request_get_container_id(request);
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) config = NULL;
  if (!ferry_bridge_get_embedded(ferry_bridge_request_get_body(request), "ContainerConfig", TRUE,
                                 &config, &error) ||
      !json_is_object(config) || !schema_at_least_2_1(config, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_INVALID_JSON,
                                     "Create %s: ContainerConfig: %s", id,
                                     error != NULL ? error->message : "not an object");
    return;
  }
  if (gcs_is_uvm(id) || !valid_container_id(id)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG,
                                     "Create: invalid container id \"%s\" (letters, digits, _ - ., "
                                     "at most %d, not starting with . or -)",
                                     id, MAX_CONTAINER_ID);
    return;
  }
  if (gcs_container_lookup(gcs, id) != NULL) {
    ferry_bridge_request_reply_error(request, FERRY_HR_ALREADY_EXISTS,
                                     "Create: container %s already exists", id);
    return;
  }
  const char *bundle = NULL;
  json_t *spec = NULL;
  if (!ferry_json_get_string(config, "OciBundlePath", TRUE, &bundle, &error) ||
      !ferry_json_get_object(config, "OciSpecification", TRUE, &spec, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "Create %s: %s", id,
                                     error->message);
    return;
  }
  if (!g_path_is_absolute(bundle) || !g_file_test(bundle, G_FILE_TEST_IS_DIR)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG,
                                     "Create %s: OciBundlePath %s is not a directory", id, bundle);
    return;
  }
  guint64 oom_kills = 0;
  if (!gcs_oom_prepare(id, spec, &oom_kills, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "Create %s: %s", id,
                                     error->message);
    return;
  }
  if (!write_bundle_config(bundle, spec, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_FAIL, "Create %s: %s", id, error->message);
    return;
  }
  GcsContainer *c = g_new0(GcsContainer, 1);
  c->id = g_strdup(id);
  c->serial = ++gcs->next_serial;
  const char *activity_id = ferry_bridge_request_get_activity_id(request);
  c->activity_id = g_strdup(*activity_id != '\0' ? activity_id : FERRY_ZERO_ACTIVITY_ID);
  c->bundle = g_strdup(bundle);
  c->state = GCS_CONTAINER_CREATED;
  c->oom_kills = oom_kills;
  g_hash_table_insert(gcs->containers, c->id, c);
  ferry_log(FERRY_LOG_DEBUG, "gcs: container created", "container", id, "bundle", bundle, NULL);
  ferry_bridge_request_reply(request, NULL);
}

/* --------------------------------------------------------------- Start -- */

/* A no-op on Linux: the container starts with its first exec. */
static void handle_start(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  if (gcs_is_uvm(ferry_bridge_request_get_container_id(request)) ||
      request_container(gcs, request, "Start") != NULL)
    ferry_bridge_request_reply(request, NULL);
}

/* ------------------------------------------------------------ Shutdown -- */

static void shutdown_container(FerryGcs *gcs, FerryBridgeRequest *request, GcsShutdown how)
{
  const char *what = how == GCS_SHUTDOWN_FORCED ? "ShutdownForced" : "ShutdownGraceful";
  if (gcs_is_uvm(ferry_bridge_request_get_container_id(request))) {
    /* The whole UVM: hcsshim's guest shuts down and does not answer. */
    ferry_log(FERRY_LOG_DEBUG, "gcs: UVM shutdown requested", "how", what, NULL);
    ferry_bridge_request_drop(request);
    if (!gcs->shutting_down) {
      gcs->shutting_down = TRUE;
      if (gcs->opts.shutdown != NULL)
        gcs->opts.shutdown(gcs, gcs->opts.shutdown_data);
    }
    return;
  }
  GcsContainer *c = request_container(gcs, request, what);
  if (c == NULL)
    return;
  if (c->state != GCS_CONTAINER_STOPPED)
    c->shutdown = how;
  int signum = how == GCS_SHUTDOWN_FORCED ? SIGKILL : SIGTERM;
  switch (c->state) {
  case GCS_CONTAINER_CREATED: {
    /* Nothing runs: the container stops at once. */
    ferry_bridge_request_reply(request, NULL);
    c->state = GCS_CONTAINER_STOPPED;
    ferry_bridge_server_notify(gcs->server,
                               json_pack("{s:s, s:s, s:s, s:s, s:i}", "ContainerId", c->id,
                                         "ActivityId", c->activity_id, "Type",
                                         how == GCS_SHUTDOWN_FORCED ? "ForcedExit" : "GracefulExit",
                                         "Operation", "None", "Result", 0));
    return;
  }
  case GCS_CONTAINER_STARTING: /* exec.c signals the init as soon as it runs */
  case GCS_CONTAINER_STOPPED:
    break;
  case GCS_CONTAINER_RUNNING:
    gcs_container_signal_all(gcs, c->id, signum);
    break;
  }
  ferry_bridge_request_reply(request, NULL);
}

static void handle_shutdown_graceful(FerryBridgeRequest *request, gpointer user_data)
{
  shutdown_container(user_data, request, GCS_SHUTDOWN_GRACEFUL);
}

static void handle_shutdown_forced(FerryBridgeRequest *request, gpointer user_data)
{
  shutdown_container(user_data, request, GCS_SHUTDOWN_FORCED);
}

/* ------------------------------------------------------ WaitForProcess -- */

static void handle_wait_for_process(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  guint32 timeout_ms = FERRY_BRIDGE_INFINITE_TIMEOUT;
  g_autoptr(GError) error = NULL;
  json_t *body = ferry_bridge_request_get_body(request);
  if (json_object_get(body, "TimeoutInMs") != NULL &&
      !ferry_json_get_uint32(body, "TimeoutInMs", TRUE, &timeout_ms, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "WaitForProcess: %s",
                                     error->message);
    return;
  }
  GcsProcess *record = request_process(gcs, request, "WaitForProcess");
  if (record != NULL)
    gcs_process_wait(record, request, timeout_ms);
}

/* ------------------------------------------------------- SignalProcess -- */

static void handle_signal_process(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  json_t *body = ferry_bridge_request_get_body(request);
  json_t *options = NULL;
  guint32 signum = 0;
  g_autoptr(GError) error = NULL;
  if (!ferry_json_get_object(body, "Options", FALSE, &options, &error) ||
      !ferry_json_get_uint32(options, "Signal", FALSE, &signum, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "SignalProcess: %s",
                                     error->message);
    return;
  }
  if (signum == 0)
    signum = SIGKILL; /* hcsshim: no options (Kill) means SIGKILL */
  if (signum >= (guint32)SIGRTMAX + 1) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "SignalProcess: no signal %u",
                                     signum);
    return;
  }
  GcsProcess *record = request_process(gcs, request, "SignalProcess");
  if (record == NULL)
    return;
  if (!ferry_process_signal(record->process, (int)signum, &error)) {
    /* NOT_FOUND (it exited) answers 0x80070490, which hcsshim's host reads as "not
     * delivered, no error". */
    ferry_bridge_request_reply_gerror(request, error);
    return;
  }
  ferry_bridge_request_reply(request, NULL);
}

/* ------------------------------------------------------- ResizeConsole -- */

static void handle_resize_console(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  json_t *body = ferry_bridge_request_get_body(request);
  guint32 height = 0, width = 0;
  g_autoptr(GError) error = NULL;
  if (!ferry_json_get_uint32(body, "Height", TRUE, &height, &error) ||
      !ferry_json_get_uint32(body, "Width", TRUE, &width, &error) || height > G_MAXUINT16 ||
      width > G_MAXUINT16) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "ResizeConsole: %s",
                                     error != NULL ? error->message : "size out of range");
    return;
  }
  GcsProcess *record = request_process(gcs, request, "ResizeConsole");
  if (record == NULL)
    return;
  if (!ferry_process_resize(record->process, (guint16)height, (guint16)width, &error)) {
    ferry_bridge_request_reply_gerror(request, error);
    return;
  }
  ferry_bridge_request_reply(request, NULL);
}

/* ------------------------------------------------------- GetProperties -- */

static gint compare_pids(gconstpointer a, gconstpointer b)
{
  GPid x = *(const GPid *)a, y = *(const GPid *)b;
  return (x > y) - (x < y);
}

static json_t *process_list(FerryGcs *gcs, const GcsContainer *c)
{
  /* Every process of the container, as hcsshim's guest lists them (runc ps): its cgroup
   * knows. A container without one (local mode, crun's cgroups disabled) lists the
   * processes the agent started. */
  g_autoptr(GArray) pids = gcs_container_pids(c, NULL);
  if (pids == NULL || pids->len == 0) {
    g_clear_pointer(&pids, g_array_unref);
    pids = g_array_new(FALSE, FALSE, sizeof(GPid));
    GHashTableIter iter;
    gpointer key;
    g_hash_table_iter_init(&iter, gcs->records);
    while (g_hash_table_iter_next(&iter, &key, NULL)) {
      const GcsProcess *record = key;
      if (!record->exited && record->container_id != NULL &&
          strcmp(record->container_id, c->id) == 0 && record->container_serial == c->serial)
        g_array_append_val(pids, record->pid);
    }
  }
  g_array_sort(pids, compare_pids);
  json_t *list = json_array();
  for (guint i = 0; i < pids->len; i++)
    json_array_append_new(
        list, json_pack("{s:I}", "ProcessId", (json_int_t)g_array_index(pids, GPid, i)));
  return list;
}

static void handle_get_properties(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  if (gcs_is_uvm(ferry_bridge_request_get_container_id(request))) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG,
                                     "GetProperties is not supported against the UVM");
    return;
  }
  GcsContainer *c = request_container(gcs, request, "GetProperties");
  if (c == NULL)
    return;
  g_autoptr(json_t) query = NULL;
  g_autoptr(GError) error = NULL;
  if (!ferry_bridge_get_embedded(ferry_bridge_request_get_body(request), "Query", FALSE, &query,
                                 &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_INVALID_JSON, "GetProperties: %s",
                                     error->message);
    return;
  }
  json_t *types = json_object_get(query, "PropertyTypes");
  if (types != NULL && !json_is_array(types)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG,
                                     "GetProperties: PropertyTypes is not an array");
    return;
  }
  json_t *properties = json_object();
  gsize i;
  json_t *type;
  /* Types this guest has nothing for are left out, as hcsshim's guest does. */
  json_array_foreach(types, i, type)
  {
    if (json_is_string(type) && strcmp(json_string_value(type), "ProcessList") == 0)
      json_object_set_new(properties, "ProcessList", process_list(gcs, c));
    if (json_is_string(type) && strcmp(json_string_value(type), "Statistics") == 0) {
      json_t *metrics = gcs_container_metrics(c, &error);
      if (metrics == NULL) {
        json_decref(properties);
        ferry_bridge_request_reply_gerror(request, error);
        return;
      }
      json_object_set_new(properties, "Metrics", metrics);
    }
  }
  json_t *fields = json_object();
  ferry_bridge_set_embedded(fields, "Properties", properties);
  ferry_bridge_request_reply(request, fields);
}

/* ------------------------------------------------------ ModifySettings -- */

/* A container's resources (hcsshim's ContainerConstraints: {"Linux": LinuxResources},
 * `crun update`) or its frozen state (Ferry's FerryContainerState: {"State": "Paused" |
 * "Running"}, `crun pause` / `crun resume`). RequestType Update. */
static void modify_container(FerryGcs *gcs, FerryBridgeRequest *request, const char *type,
                             const char *request_type, json_t *settings)
{
  if (gcs_is_uvm(ferry_bridge_request_get_container_id(request))) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG,
                                     "ModifySettings %s: not for the UVM", type);
    return;
  }
  GcsContainer *c = request_container(gcs, request, "ModifySettings");
  if (c == NULL)
    return;
  if (strcmp(request_type, "Update") != 0 || !json_is_object(settings)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG,
                                     "ModifySettings %s: RequestType Update with Settings", type);
    return;
  }
  if (c->state != GCS_CONTAINER_RUNNING) {
    ferry_bridge_request_reply_error(request, FERRY_HR_INVALID_STATE,
                                     "ModifySettings %s: container %s is not running", type, c->id);
    return;
  }
  g_autoptr(GError) error = NULL;
  gboolean ok;
  if (strcmp(type, "ContainerConstraints") == 0) {
    ok = ferry_runtime_update_container(gcs->runtime, c->id, json_object_get(settings, "Linux"),
                                        &error);
  } else {
    const char *state = json_string_value(json_object_get(settings, "State"));
    if (g_strcmp0(state, "Paused") == 0) {
      ok = ferry_runtime_pause_container(gcs->runtime, c->id, &error);
    } else if (g_strcmp0(state, "Running") == 0) {
      ok = ferry_runtime_resume_container(gcs->runtime, c->id, &error);
    } else {
      ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG,
                                       "ModifySettings %s: State must be Paused or Running", type);
      return;
    }
  }
  if (!ok) {
    ferry_bridge_request_reply_gerror(request, error);
    return;
  }
  ferry_bridge_request_reply(request, NULL);
}

static void handle_modify_settings(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  json_t *req = json_object_get(ferry_bridge_request_get_body(request), "Request");
  if (!json_is_object(req)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_INVALID_JSON,
                                     "ModifySettings: Request is not an object");
    return;
  }
  const char *type = NULL, *request_type = NULL;
  g_autoptr(GError) error = NULL;
  if (!ferry_json_get_string(req, "ResourceType", TRUE, &type, &error) ||
      !ferry_json_get_string(req, "RequestType", FALSE, &request_type, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "ModifySettings: %s",
                                     error->message);
    return;
  }
  /* hcsshim's guest takes a missing RequestType as Add. */
  if (request_type == NULL || request_type[0] == '\0')
    request_type = "Add";
  if (gcs_storage_modify(gcs->storage, request, type, request_type,
                         json_object_get(req, "Settings")))
    return;
  if (strcmp(type, "ContainerConstraints") == 0 || strcmp(type, "FerryContainerState") == 0) {
    modify_container(gcs, request, type, request_type, json_object_get(req, "Settings"));
    return;
  }
  ferry_bridge_request_reply_error(
      request, FERRY_HR_E_NOTIMPL,
      "ModifySettings: resource type %s is not supported by this guest (it maps "
      "MappedVirtualDisk and CombinedLayers)",
      type);
}

/* ------------------------------------------------ DeleteContainerState -- */

static void handle_delete_container_state(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  GcsContainer *c = request_container(gcs, request, "DeleteContainerState");
  if (c == NULL)
    return;
  g_autoptr(GError) error = NULL;
  gboolean ok = c->state == GCS_CONTAINER_CREATED ||
                ferry_runtime_delete_container(gcs->runtime, c->id, &error);
  /* Forgotten even if crun failed (hcsshim does the same): the host asked us to. */
  ferry_log(FERRY_LOG_DEBUG, "gcs: container deleted", "container", c->id, NULL);
  g_hash_table_remove(gcs->containers, c->id);
  if (!ok) {
    ferry_bridge_request_reply_gerror(request, error);
    return;
  }
  ferry_bridge_request_reply(request, NULL);
}

/* ---------------------------------------------------------- DumpStacks -- */

/* The answer must stay under the host's 64 KiB message limit. */
#define MAX_DUMP (48u * 1024u)

static void handle_dump_stacks(FerryBridgeRequest *request, gpointer user_data)
{
  g_autofree char *text = ferry_gcs_dump(user_data);
  if (strlen(text) > MAX_DUMP) {
    /* Cut at a line end (the text is ASCII but for container ids, which are too). */
    char *cut = g_strrstr_len(text, MAX_DUMP, "\n");
    strcpy(cut != NULL ? cut + 1 : text, "... (truncated)\n");
  }
  ferry_bridge_request_reply(request, json_pack("{s:s}", "GuestStacks", text));
}

/* -------------------------------------------------------- registration -- */

void gcs_register_handlers(FerryGcs *gcs)
{
  static const struct {
    FerryBridgeRpc rpc;
    FerryBridgeHandler handler;
  } routes[] = {
    { FERRY_BRIDGE_RPC_CREATE, handle_create },
    { FERRY_BRIDGE_RPC_START, handle_start },
    { FERRY_BRIDGE_RPC_SHUTDOWN_GRACEFUL, handle_shutdown_graceful },
    { FERRY_BRIDGE_RPC_SHUTDOWN_FORCED, handle_shutdown_forced },
    { FERRY_BRIDGE_RPC_EXECUTE_PROCESS, gcs_handle_execute_process },
    { FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS, handle_wait_for_process },
    { FERRY_BRIDGE_RPC_SIGNAL_PROCESS, handle_signal_process },
    { FERRY_BRIDGE_RPC_RESIZE_CONSOLE, handle_resize_console },
    { FERRY_BRIDGE_RPC_GET_PROPERTIES, handle_get_properties },
    { FERRY_BRIDGE_RPC_MODIFY_SETTINGS, handle_modify_settings },
    { FERRY_BRIDGE_RPC_DUMP_STACKS, handle_dump_stacks },
    { FERRY_BRIDGE_RPC_DELETE_CONTAINER_STATE, handle_delete_container_state },
  };
  for (gsize i = 0; i < G_N_ELEMENTS(routes); i++)
    ferry_bridge_server_handle(gcs->server, ferry_bridge_request_type(routes[i].rpc),
                               FERRY_BRIDGE_PROTOCOL_V4, routes[i].handler, gcs);
}
