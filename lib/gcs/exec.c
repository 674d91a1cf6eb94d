/*
 * ExecuteProcess: read the ProcessParameters, dial the stdio ports the host listens on,
 * then start the process (in the UVM, as a container's init, or in a running container)
 * and relay its stdio. The ports are dialed before anything starts, so a failed dial
 * leaves nothing to clean up but the channels already dialed.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "gcs-impl.h"

enum { STDIN_IDX, STDOUT_IDX, STDERR_IDX, N_STDIO };

static const char *const pipe_fields[N_STDIO] = { "CreateStdInPipe", "CreateStdOutPipe",
                                                  "CreateStdErrPipe" };
static const char *const port_fields[N_STDIO] = { "StdIn", "StdOut", "StdErr" };

/* What to start, from the request. */
typedef struct {
  GStrv argv; /* NULL: a container's init keeps config.json's */
  GStrv env;
  char *cwd;
  gboolean has_user;
  guint32 uid, gid;
  gboolean terminal;
  guint16 rows, cols;
  guint32 ports[N_STDIO]; /* 0: no pipe */
} ExecPlan;

typedef struct GcsExec GcsExec;

typedef struct {
  GcsExec *exec;
  int index;
} DialSlot;

struct GcsExec {
  FerryGcs *gcs; /* NULL once the agent let go (it is being freed) */
  FerryBridgeRequest *request;
  char *container_id; /* NULL: in the UVM */
  guint64 container_serial;
  gboolean is_init;
  ExecPlan plan;
  DialSlot slots[N_STDIO];
  FerryChannel *channels[N_STDIO];
  guint dials_pending;
  GError *dial_error; /* the first failure */
};

static void plan_clear(ExecPlan *plan)
{
  g_strfreev(plan->argv);
  g_strfreev(plan->env);
  g_free(plan->cwd);
}

static gboolean fail(GError **error, guint32 hresult, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean fail(GError **error, guint32 hresult, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *message = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error_literal(error, FERRY_BRIDGE_ERROR, (gint)hresult, message);
  return FALSE;
}

/* Re-home a FERRY_ERROR about a field as E_INVALIDARG. */
static gboolean invalid(GError **error, GError *cause)
{
  fail(error, FERRY_HR_E_INVALIDARG, "ExecuteProcess: %s", cause->message);
  g_error_free(cause);
  return FALSE;
}

/* ------------------------------------------------------------- parsing -- */

/* An array of strings as a NULL-terminated vector; NULL with *out when absent. */
static gboolean get_strv(json_t *obj, const char *key, GStrv *out, GError **error)
{
  *out = NULL;
  json_t *array = json_object_get(obj, key);
  if (array == NULL || json_is_null(array))
    return TRUE;
  if (!json_is_array(array))
    return fail(error, FERRY_HR_E_INVALIDARG, "ExecuteProcess: field %s: not an array", key);
  g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
  gsize i;
  json_t *item;
  json_array_foreach(array, i, item)
  {
    if (!json_is_string(item))
      return fail(error, FERRY_HR_E_INVALIDARG,
                  "ExecuteProcess: field %s: item %zu is not a string", key, i);
    g_strv_builder_add(builder, json_string_value(item));
  }
  *out = g_strv_builder_end(builder);
  return TRUE;
}

/* hcsshim's CommandLine is a Windows-style command line; this guest splits it on spaces
 * and tabs, without quoting rules (docs/agent.md). */
static GStrv split_command_line(const char *line)
{
  g_auto(GStrv) parts = g_strsplit_set(line, " \t", -1);
  g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
  for (char **p = parts; *p != NULL; p++)
    if (**p != '\0')
      g_strv_builder_add(builder, *p);
  return g_strv_builder_end(builder);
}

/* Environment {"K": "V"} as "K=V" strings. */
static gboolean get_environment(json_t *params, GStrv *out, GError **error)
{
  *out = NULL;
  json_t *env = json_object_get(params, "Environment");
  if (env == NULL || json_is_null(env))
    return TRUE;
  if (!json_is_object(env))
    return fail(error, FERRY_HR_E_INVALIDARG, "ExecuteProcess: Environment is not an object");
  g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
  const char *key;
  json_t *value;
  json_object_foreach(env, key, value)
  {
    if (!json_is_string(value) || *key == '\0' || strchr(key, '=') != NULL)
      return fail(error, FERRY_HR_E_INVALIDARG,
                  "ExecuteProcess: Environment entry \"%s\" is invalid", key);
    g_autofree char *entry = g_strdup_printf("%s=%s", key, json_string_value(value));
    g_strv_builder_add(builder, entry);
  }
  *out = g_strv_builder_end(builder);
  return TRUE;
}

/* User "uid" or "uid:gid", numeric only: names would need NSS, which the static agent
 * keeps out. */
static gboolean parse_user(const char *user, ExecPlan *plan, GError **error)
{
  if (user == NULL || *user == '\0')
    return TRUE;
  g_auto(GStrv) parts = g_strsplit(user, ":", 2);
  guint64 uid, gid;
  if (!g_ascii_string_to_unsigned(parts[0], 10, 0, G_MAXUINT32 - 1, &uid, NULL) ||
      (parts[1] != NULL &&
       !g_ascii_string_to_unsigned(parts[1], 10, 0, G_MAXUINT32 - 1, &gid, NULL)))
    return fail(error, FERRY_HR_E_INVALIDARG,
                "ExecuteProcess: User \"%s\": only a numeric uid[:gid] is supported", user);
  plan->has_user = TRUE;
  plan->uid = (guint32)uid;
  plan->gid = parts[1] != NULL ? (guint32)gid : (guint32)uid;
  return TRUE;
}

static gboolean get_size(json_t *obj, const char *key, guint16 *out, GError **error)
{
  guint32 v = 0;
  GError *local = NULL;
  if (!ferry_json_get_uint32(obj, key, FALSE, &v, &local))
    return invalid(error, local);
  if (v > G_MAXUINT16)
    return fail(error, FERRY_HR_E_INVALIDARG, "ExecuteProcess: %s %u is too large", key, v);
  *out = (guint16)v;
  return TRUE;
}

/* The OCI process object of a container exec: it replaces the top-level fields. */
static gboolean parse_oci_process(json_t *oci, ExecPlan *plan, GError **error)
{
  g_strfreev(g_steal_pointer(&plan->argv));
  g_strfreev(g_steal_pointer(&plan->env));
  g_clear_pointer(&plan->cwd, g_free);
  plan->has_user = FALSE;
  const char *cwd = NULL;
  json_t *user = NULL, *size = NULL;
  GError *local = NULL;
  if (!get_strv(oci, "args", &plan->argv, error) || !get_strv(oci, "env", &plan->env, error))
    return FALSE;
  if (!ferry_json_get_string(oci, "cwd", FALSE, &cwd, &local) ||
      !ferry_json_get_bool(oci, "terminal", FALSE, &plan->terminal, &local) ||
      !ferry_json_get_object(oci, "user", FALSE, &user, &local) ||
      !ferry_json_get_object(oci, "consoleSize", FALSE, &size, &local))
    return invalid(error, local);
  plan->cwd = g_strdup(cwd);
  if (user != NULL) {
    if (!ferry_json_get_uint32(user, "uid", FALSE, &plan->uid, &local) ||
        !ferry_json_get_uint32(user, "gid", FALSE, &plan->gid, &local))
      return invalid(error, local);
    plan->has_user = TRUE;
  }
  if (size != NULL && (!get_size(size, "height", &plan->rows, error) ||
                       !get_size(size, "width", &plan->cols, error)))
    return FALSE;
  return TRUE;
}

/*
 * Read an ExecuteProcess body into `plan`. Errors are FERRY_BRIDGE_ERROR with the
 * HRESULT to answer: 0xC037010D when Settings is missing or not an object or when
 * ProcessParameters is not JSON (as hcsshim's guest, which fails to decode the request or
 * its empty ProcessParameters), E_INVALIDARG for a field that is wrong.
 */
static gboolean plan_parse(json_t *body, gboolean in_container, ExecPlan *plan, GError **error)
{
  json_t *settings = NULL, *relay = NULL, *oci = NULL, *size = NULL;
  GError *local = NULL;
  if (!ferry_json_get_object(body, "Settings", TRUE, &settings, &local)) {
    fail(error, FERRY_HR_INVALID_JSON, "ExecuteProcess: %s", local->message);
    g_error_free(local);
    return FALSE;
  }
  g_autoptr(json_t) params = NULL;
  if (!ferry_bridge_get_embedded(settings, "ProcessParameters", TRUE, &params, &local)) {
    fail(error, FERRY_HR_INVALID_JSON, "ExecuteProcess: %s", local->message);
    g_error_free(local);
    return FALSE;
  }
  if (!json_is_object(params))
    return fail(error, FERRY_HR_INVALID_JSON, "ExecuteProcess: ProcessParameters is not an object");

  const char *command_line = NULL, *cwd = NULL, *user = NULL;
  if (!get_strv(params, "CommandArgs", &plan->argv, error) ||
      !get_environment(params, &plan->env, error))
    return FALSE;
  if (!ferry_json_get_string(params, "CommandLine", FALSE, &command_line, &local) ||
      !ferry_json_get_string(params, "WorkingDirectory", FALSE, &cwd, &local) ||
      !ferry_json_get_string(params, "User", FALSE, &user, &local) ||
      !ferry_json_get_bool(params, "EmulateConsole", FALSE, &plan->terminal, &local) ||
      !ferry_json_get_object(settings, "VsockStdioRelaySettings", FALSE, &relay, &local) ||
      !ferry_json_get_object(params, "OciProcess", FALSE, &oci, &local))
    return invalid(error, local);
  if (plan->argv == NULL && command_line != NULL)
    plan->argv = split_command_line(command_line);
  if (plan->argv != NULL && plan->argv[0] == NULL)
    g_strfreev(g_steal_pointer(&plan->argv));
  plan->cwd = g_strdup(cwd != NULL && *cwd != '\0' ? cwd : NULL);
  if (!parse_user(user, plan, error))
    return FALSE;
  size = json_object_get(params, "ConsoleSize");
  if (size != NULL && !json_is_null(size)) {
    json_t *h = json_array_get(size, 0), *w = json_array_get(size, 1);
    if (!json_is_array(size) || json_array_size(size) != 2 || !json_is_integer(h) ||
        !json_is_integer(w) || json_integer_value(h) < 0 || json_integer_value(h) > G_MAXUINT16 ||
        json_integer_value(w) < 0 || json_integer_value(w) > G_MAXUINT16)
      return fail(error, FERRY_HR_E_INVALIDARG,
                  "ExecuteProcess: ConsoleSize must be [height, width]");
    plan->rows = (guint16)json_integer_value(h);
    plan->cols = (guint16)json_integer_value(w);
  }
  if (in_container && oci != NULL && !parse_oci_process(oci, plan, error))
    return FALSE;

  for (int i = 0; i < N_STDIO; i++) {
    gboolean want = FALSE;
    guint32 port = 0;
    if (!ferry_json_get_bool(params, pipe_fields[i], FALSE, &want, &local) ||
        !ferry_json_get_uint32(relay, port_fields[i], FALSE, &port, &local))
      return invalid(error, local);
    /* The Create*Pipe flags decide which ports are honoured (hcsshim). */
    if (want && port == 0)
      return fail(error, FERRY_HR_E_INVALIDARG, "ExecuteProcess: %s without a %s port",
                  pipe_fields[i], port_fields[i]);
    plan->ports[i] = want ? port : 0;
  }
  return TRUE;
}

/* -------------------------------------------------------------- start -- */

static void exec_free(GcsExec *exec)
{
  for (int i = 0; i < N_STDIO; i++)
    if (exec->channels[i] != NULL) {
      ferry_channel_close(exec->channels[i]);
      ferry_channel_unref(exec->channels[i]);
    }
  if (exec->request != NULL)
    ferry_bridge_request_drop(exec->request);
  plan_clear(&exec->plan);
  g_clear_error(&exec->dial_error);
  g_free(exec->container_id);
  g_free(exec);
}

/* Answer an error; the container's init did not start. */
static void exec_fail(GcsExec *exec, const GError *error)
{
  FerryGcs *gcs = exec->gcs;
  if (exec->is_init) {
    GcsContainer *c = gcs_container_lookup(gcs, exec->container_id);
    if (c != NULL && c->serial == exec->container_serial && c->state == GCS_CONTAINER_STARTING)
      c->state = GCS_CONTAINER_CREATED;
  }
  ferry_bridge_request_reply_gerror(g_steal_pointer(&exec->request), error);
  g_hash_table_remove(gcs->execs, exec);
  exec_free(exec);
}

static FerryProcess *exec_start(GcsExec *exec, GcsContainer *c, FerryProcessStdio *stdio,
                                GError **error)
{
  const ExecPlan *plan = &exec->plan;
  FerryProcessSpec spec = {
    .argv = (const char *const *)plan->argv,
    .env = (const char *const *)plan->env,
    .cwd = plan->cwd,
    .has_user = plan->has_user,
    .uid = plan->uid,
    .gid = plan->gid,
    .stdin_mode = plan->ports[STDIN_IDX] != 0 ? FERRY_STDIO_PIPE : FERRY_STDIO_NONE,
    .stdout_mode = plan->ports[STDOUT_IDX] != 0 ? FERRY_STDIO_PIPE : FERRY_STDIO_NONE,
    .stderr_mode = plan->ports[STDERR_IDX] != 0 ? FERRY_STDIO_PIPE : FERRY_STDIO_NONE,
    .terminal = plan->terminal,
    .rows = plan->rows,
    .cols = plan->cols,
  };
  FerryRuntime *runtime = exec->gcs->runtime;
  if (c == NULL)
    return ferry_process_spawn(&spec, stdio, error);
  if (exec->is_init)
    return ferry_runtime_run_container(runtime, c->id, c->bundle, &spec, stdio, error);
  return ferry_runtime_exec_in_container(runtime, c->id, &spec, stdio, error);
}

static void exec_relay_fds(GcsExec *exec, GcsProcess *record, FerryProcessStdio *stdio)
{
  FerryGcs *gcs = exec->gcs;
  FerryChannel **ch = exec->channels;
  if (stdio->terminal_fd >= 0) {
    /* One pty: input and output each get their own copy of the master, so that either
     * side can end without cutting the other off. */
    if (ch[STDIN_IDX] != NULL) {
      int copy = fcntl(stdio->terminal_fd, F_DUPFD_CLOEXEC, 3);
      if (copy >= 0)
        gcs_relay_input_new(gcs, ch[STDIN_IDX], copy);
      else
        ferry_channel_close(ch[STDIN_IDX]);
    }
    /* Read even when nobody listens, or the process blocks on a full terminal. */
    g_ptr_array_add(record->outputs, gcs_relay_output_new(gcs, record, ch[STDOUT_IDX],
                                                          ferry_fd_steal(&stdio->terminal_fd)));
    if (ch[STDERR_IDX] != NULL)
      ferry_channel_shutdown_write(ch[STDERR_IDX]); /* a terminal has no stderr */
    return;
  }
  if (ch[STDIN_IDX] != NULL)
    gcs_relay_input_new(gcs, ch[STDIN_IDX], ferry_fd_steal(&stdio->stdin_fd));
  if (ch[STDOUT_IDX] != NULL)
    g_ptr_array_add(record->outputs, gcs_relay_output_new(gcs, record, ch[STDOUT_IDX],
                                                          ferry_fd_steal(&stdio->stdout_fd)));
  if (ch[STDERR_IDX] != NULL)
    g_ptr_array_add(record->outputs, gcs_relay_output_new(gcs, record, ch[STDERR_IDX],
                                                          ferry_fd_steal(&stdio->stderr_fd)));
}

/* Hand the process's fds (taken out of *stdio) and the channels to relays. */
static void exec_relay(GcsExec *exec, GcsProcess *record, FerryProcessStdio *stdio)
{
  exec_relay_fds(exec, record, stdio);
  /* The relays hold their own references; dropping ours lets a channel nobody relays
   * (a terminal's stderr) finish. */
  for (int i = 0; i < N_STDIO; i++)
    g_clear_pointer(&exec->channels[i], ferry_channel_unref);
}

/* Every port is dialed: start the process, answer its pid. */
static void exec_run(GcsExec *exec)
{
  FerryGcs *gcs = exec->gcs;
  if (exec->dial_error != NULL) {
    g_autoptr(GError) error = g_error_new(FERRY_BRIDGE_ERROR, (gint)FERRY_HR_E_FAIL,
                                          "ExecuteProcess: stdio: %s", exec->dial_error->message);
    exec_fail(exec, error);
    return;
  }
  GcsContainer *c = NULL;
  if (exec->container_id != NULL) {
    c = gcs_container_lookup(gcs, exec->container_id);
    if (c == NULL || c->serial != exec->container_serial) {
      g_autoptr(GError) error =
          g_error_new(FERRY_BRIDGE_ERROR, (gint)FERRY_HR_SYSTEM_NOT_FOUND,
                      "ExecuteProcess: container %s was deleted", exec->container_id);
      exec_fail(exec, error);
      return;
    }
  }
  FerryProcessStdio stdio;
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryProcess) process = exec_start(exec, c, &stdio, &error);
  if (process == NULL) {
    g_prefix_error(&error, "ExecuteProcess: ");
    exec_fail(exec, error);
    return;
  }
  GcsProcess *record =
      gcs_process_add(gcs, process, exec->container_id, exec->container_serial, exec->is_init);
  exec_relay(exec, record, &stdio);
  ferry_process_stdio_close(&stdio);
  GPid pid = record->pid;
  g_autofree char *pid_str = g_strdup_printf("%d", (int)pid);
  ferry_log(FERRY_LOG_DEBUG, "gcs: process started", "pid", pid_str, "container",
            exec->container_id, "init", exec->is_init ? "true" : "false", NULL);
  ferry_bridge_request_reply(g_steal_pointer(&exec->request),
                             json_pack("{s:I, s:I}", "ProcessId", (json_int_t)pid,
                                       FERRY_BRIDGE_PROCESS_SERIAL, (json_int_t)record->serial));
  if (exec->is_init) {
    c->state = GCS_CONTAINER_RUNNING;
    c->init_pid = pid;
    /* A shutdown that came while the init's ports were being dialed. */
    if (c->shutdown != GCS_SHUTDOWN_NONE)
      gcs_container_signal_all(gcs, c->id, c->shutdown == GCS_SHUTDOWN_FORCED ? SIGKILL : SIGTERM);
  }
  g_hash_table_remove(gcs->execs, exec);
  exec_free(exec);
}

static void on_stdio_dialed(FerryTransport *transport, FerryChannel *channel, const GError *error,
                            gpointer user_data)
{
  DialSlot *slot = user_data;
  GcsExec *exec = slot->exec;
  if (channel != NULL)
    exec->channels[slot->index] = channel;
  else if (exec->dial_error == NULL)
    exec->dial_error =
        g_error_new(error->domain, error->code, "dial %s port %u: %s", port_fields[slot->index],
                    exec->plan.ports[slot->index], error->message);
  if (--exec->dials_pending > 0)
    return;
  if (exec->gcs == NULL)
    exec_free(exec);
  else
    exec_run(exec);
}

void gcs_handle_execute_process(FerryBridgeRequest *request, gpointer user_data)
{
  FerryGcs *gcs = user_data;
  const char *cid = ferry_bridge_request_get_container_id(request);
  gboolean in_container = !gcs_is_uvm(cid);
  GcsContainer *c = NULL;
  if (in_container) {
    c = gcs_container_lookup(gcs, cid);
    if (c == NULL) {
      ferry_bridge_request_reply_error(request, FERRY_HR_SYSTEM_NOT_FOUND,
                                       "ExecuteProcess: container %s does not exist", cid);
      return;
    }
    if (c->state == GCS_CONTAINER_STOPPED) {
      ferry_bridge_request_reply_error(request, FERRY_HR_ALREADY_STOPPED,
                                       "ExecuteProcess: container %s has stopped", cid);
      return;
    }
    if (c->state == GCS_CONTAINER_STARTING) {
      ferry_bridge_request_reply_error(request, FERRY_HR_INVALID_STATE,
                                       "ExecuteProcess: container %s is still starting its init",
                                       cid);
      return;
    }
  }
  GcsExec *exec = g_new0(GcsExec, 1);
  exec->gcs = gcs;
  exec->request = request;
  g_autoptr(GError) error = NULL;
  if (!plan_parse(ferry_bridge_request_get_body(request), in_container, &exec->plan, &error)) {
    ferry_bridge_request_reply_gerror(g_steal_pointer(&exec->request), error);
    exec_free(exec);
    return;
  }
  if (c != NULL) {
    exec->container_id = g_strdup(c->id);
    exec->container_serial = c->serial;
    exec->is_init = c->state == GCS_CONTAINER_CREATED;
  }
  if (exec->plan.argv == NULL && !exec->is_init) {
    ferry_bridge_request_reply_error(g_steal_pointer(&exec->request), FERRY_HR_E_INVALIDARG,
                                     "ExecuteProcess: no CommandArgs, CommandLine or OciProcess "
                                     "args");
    exec_free(exec);
    return;
  }
  if (exec->is_init)
    c->state = GCS_CONTAINER_STARTING;
  g_hash_table_add(gcs->execs, exec);
  for (int i = 0; i < N_STDIO; i++)
    if (exec->plan.ports[i] != 0)
      exec->dials_pending++;
  if (exec->dials_pending == 0) {
    exec_run(exec);
    return;
  }
  /* Count first: a dial may complete (from the main loop) only after all are issued. */
  for (int i = 0; i < N_STDIO; i++) {
    if (exec->plan.ports[i] == 0)
      continue;
    exec->slots[i] = (DialSlot){ exec, i };
    ferry_transport_dial(gcs->transport, exec->plan.ports[i], on_stdio_dialed, &exec->slots[i]);
  }
}

void gcs_execs_abandon(FerryGcs *gcs)
{
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, gcs->execs);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    GcsExec *exec = key;
    exec->gcs = NULL;
    ferry_bridge_request_drop(g_steal_pointer(&exec->request));
  }
  g_hash_table_remove_all(gcs->execs);
}
