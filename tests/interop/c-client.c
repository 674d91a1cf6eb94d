/*
 * The C side of the interop test as a client: a battery of cases against a server of
 * ferry.test.v1.Interop written with containerd's Go ttrpc 1.1.1 (tests/interop/go,
 * "ferrypeer server"). Prints TAP on stdout, one line per case.
 *
 *   interop-c-client -socket PATH
 *
 * Each case opens its own connection. A case that hangs is ended by SIGALRM, which
 * ends the program; run.sh reports the cases that never printed a line.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <ferry/error.h>
#include <ferry/fd.h>
#include <ferry/ttrpc.h>

#include "interop-service.h"

#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "ttrpc/envelope.pb-c.h"

#define SERVICE "ferry.test.v1.Interop"
#define NS_PER_MS G_GINT64_CONSTANT(1000000)
#define CASE_TIMEOUT_S 60u
/* What Go's channel.recv answers to a frame one byte over the limit (channel.go). */
#define GO_OVERSIZE_MESSAGE "message length 4194305 exceed maximum message size of 4194304"

#define CASE_ERROR (g_quark_from_static_string("interop-case"))

static gboolean case_fail(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static gboolean case_fail(GError **error, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *message = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error_literal(error, CASE_ERROR, 0, message);
  return FALSE;
}

/* A TAP diagnostic line about what the peer did, printed before the case's result. */
static void note(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static void note(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *line = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_strdelimit(line, "\r\n", ' ');
  printf("# %s\n", line);
}

static char *describe_error(const GError *error)
{
  if (error->domain == FERRY_ERROR)
    return g_strdup_printf("code %d (%s) \"%s\"", error->code, ferry_status_code_name(error->code),
                           error->message);
  return g_strdup_printf("%s %d \"%s\"", g_quark_to_string(error->domain), error->code,
                         error->message);
}

/* Checks that `got` is FERRY_ERROR `code` with exactly `message` (NULL: any message). */
static gboolean expect_status(const GError *got, int code, const char *message, GError **error)
{
  if (got == NULL)
    return case_fail(error, "call succeeded, want code %d", code);
  if (got->domain != FERRY_ERROR || got->code != code ||
      (message != NULL && g_strcmp0(got->message, message) != 0)) {
    g_autofree char *described = describe_error(got);
    return case_fail(error, "got %s, want code %d \"%s\"", described, code,
                     message != NULL ? message : "*");
  }
  return TRUE;
}

/* A blocking call whose request and answer are StringValues; returns the answer's
 * value or NULL with the call's error. */
static char *call_string(FerryTtrpcClient *client, const char *service, const char *method,
                         const char *value, const FerryTtrpcCallOptions *options, GError **error)
{
  Google__Protobuf__StringValue request = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  request.value = (char *)value;
  ProtobufCMessage *response =
      ferry_ttrpc_client_call_sync(client, service, method, &request.base,
                                   &google__protobuf__string_value__descriptor, options, error);
  if (response == NULL)
    return NULL;
  char *result = g_strdup(((Google__Protobuf__StringValue *)response)->value);
  protobuf_c_message_free_unpacked(response, NULL);
  return result;
}

/* Checks that the connection still answers an ordinary Echo. */
static gboolean expect_echo(FerryTtrpcClient *client, const char *value, GError **error)
{
  const FerryTtrpcCallOptions options = { .timeout_ns = 10000 * NS_PER_MS };
  g_autoptr(GError) call_error = NULL;
  g_autofree char *got = call_string(client, SERVICE, "Echo", value, &options, &call_error);
  if (got == NULL) {
    g_autofree char *described = describe_error(call_error);
    return case_fail(error, "Echo after the failure: %s", described);
  }
  g_autofree char *want = g_strconcat(value, "|md=", NULL);
  if (!g_str_equal(got, want))
    return case_fail(error, "Echo after the failure: got \"%s\", want \"%s\"", got, want);
  return TRUE;
}

/* ------------------------------------------------------------------- cases -- */

static gboolean case_echo_metadata(const char *socket_path, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  const FerryTtrpcMetadata metadata[] = { { "x-test", "hello-md" }, { "x-other", "ignored" } };
  const FerryTtrpcCallOptions options = {
    .timeout_ns = 10000 * NS_PER_MS,
    .metadata = metadata,
    .n_metadata = G_N_ELEMENTS(metadata),
  };
  g_autofree char *got = call_string(client, SERVICE, "Echo", "ping", &options, error);
  if (got == NULL)
    return FALSE;
  if (!g_str_equal(got, "ping|md=hello-md"))
    return case_fail(error, "got \"%s\", want \"ping|md=hello-md\"", got);

  g_autofree char *plain = call_string(client, SERVICE, "Echo", "plain", NULL, error);
  if (plain == NULL)
    return FALSE;
  if (!g_str_equal(plain, "plain|md="))
    return case_fail(error, "without metadata: got \"%s\", want \"plain|md=\"", plain);
  return TRUE;
}

static char *call_deadline(FerryTtrpcClient *client, const FerryTtrpcCallOptions *options,
                           GError **error)
{
  Google__Protobuf__Empty request = GOOGLE__PROTOBUF__EMPTY__INIT;
  ProtobufCMessage *response =
      ferry_ttrpc_client_call_sync(client, SERVICE, "Deadline", &request.base,
                                   &google__protobuf__string_value__descriptor, options, error);
  if (response == NULL)
    return NULL;
  char *result = g_strdup(((Google__Protobuf__StringValue *)response)->value);
  protobuf_c_message_free_unpacked(response, NULL);
  return result;
}

static gboolean case_deadline_propagation(const char *socket_path, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  const FerryTtrpcCallOptions options = { .timeout_ns = 5000 * NS_PER_MS };
  g_autofree char *got = call_deadline(client, &options, error);
  if (got == NULL)
    return FALSE;
  gint64 ms = 0;
  if (!g_ascii_string_to_signed(got, 10, G_MININT64, G_MAXINT64, &ms, NULL))
    return case_fail(error, "server answered \"%s\", want milliseconds", got);
  if (ms <= 4000 || ms > 5000)
    return case_fail(error, "server saw %" G_GINT64_FORMAT " ms left, want (4000, 5000]", ms);
  return TRUE;
}

static gboolean case_deadline_none(const char *socket_path, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  g_autofree char *got = call_deadline(client, NULL, error);
  if (got == NULL)
    return FALSE;
  if (!g_str_equal(got, "none"))
    return case_fail(error, "got \"%s\", want \"none\"", got);
  return TRUE;
}

static gboolean fail_round_trip(const char *socket_path, const char *value, int code,
                                const char *message, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  Google__Protobuf__StringValue request = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  request.value = (char *)value;
  const FerryTtrpcCallOptions options = { .timeout_ns = 10000 * NS_PER_MS };
  g_autoptr(GError) call_error = NULL;
  ProtobufCMessage *response =
      ferry_ttrpc_client_call_sync(client, SERVICE, "Fail", &request.base,
                                   &google__protobuf__empty__descriptor, &options, &call_error);
  if (response != NULL) {
    protobuf_c_message_free_unpacked(response, NULL);
    return case_fail(error, "Fail \"%s\" succeeded", value);
  }
  if (!expect_status(call_error, code, message, error))
    return FALSE;
  return expect_echo(client, "after-fail", error);
}

static gboolean case_fail_not_found(const char *socket_path, GError **error)
{
  return fail_round_trip(socket_path, "5:no such thing", FERRY_ERROR_NOT_FOUND, "no such thing",
                         error);
}

static gboolean case_fail_failed_precondition(const char *socket_path, GError **error)
{
  return fail_round_trip(socket_path, "9:not now: try later", FERRY_ERROR_FAILED_PRECONDITION,
                         "not now: try later", error);
}

static gboolean unknown_call(const char *socket_path, const char *service, const char *method,
                             const char *message, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  const FerryTtrpcCallOptions options = { .timeout_ns = 10000 * NS_PER_MS };
  g_autoptr(GError) call_error = NULL;
  g_autofree char *got = call_string(client, service, method, "x", &options, &call_error);
  if (got != NULL)
    return case_fail(error, "%s/%s succeeded: \"%s\"", service, method, got);
  if (!expect_status(call_error, FERRY_ERROR_UNIMPLEMENTED, message, error))
    return FALSE;
  return expect_echo(client, "after-unknown", error);
}

static gboolean case_unknown_method(const char *socket_path, GError **error)
{
  return unknown_call(socket_path, SERVICE, "Nope", "method Nope", error);
}

static gboolean case_unknown_service(const char *socket_path, GError **error)
{
  return unknown_call(socket_path, "no.Such", "Echo", "service no.Such", error);
}

/* Quits `loop` when it fires; *fired tells the waiter it timed out. */
typedef struct {
  GMainLoop *loop;
  gboolean fired;
} LoopTimeout;

static gboolean on_loop_timeout(gpointer user_data)
{
  LoopTimeout *timeout = user_data;
  timeout->fired = TRUE;
  g_main_loop_quit(timeout->loop);
  return G_SOURCE_REMOVE;
}

/* Runs `loop` until something quits it or `seconds` pass; FALSE on timeout. */
static gboolean run_loop_with_timeout(GMainLoop *loop, guint seconds)
{
  LoopTimeout timeout = { .loop = loop };
  guint id = g_timeout_add_seconds(seconds, on_loop_timeout, &timeout);
  g_main_loop_run(loop);
  if (!timeout.fired)
    g_source_remove(id);
  return !timeout.fired;
}

/*
 * Server streaming against a unary-only peer: Go ttrpc 1.1.1 ignores the Request's
 * flags and, Count not being registered, answers with a Response frame, which must
 * end the stream with that status.
 */
typedef struct {
  GMainLoop *loop;
  guint messages;
  gboolean done;
  GError *error;
} StreamResult;

static void on_stream_message(FerryTtrpcClient *client, const ProtobufCMessage *message,
                              gpointer user_data)
{
  StreamResult *result = user_data;
  result->messages++;
}

static void on_stream_done(FerryTtrpcClient *client, const ProtobufCMessage *response,
                           const GError *error, gpointer user_data)
{
  StreamResult *result = user_data;
  result->done = TRUE;
  if (error != NULL)
    result->error = g_error_copy(error);
  g_main_loop_quit(result->loop);
}

static gboolean case_stream_to_unary_peer(const char *socket_path, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
  StreamResult result = { .loop = loop };
  Google__Protobuf__StringValue request = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  request.value = "3";
  guint32 sid = ferry_ttrpc_client_stream(client, SERVICE, "Count", &request.base,
                                          &google__protobuf__string_value__descriptor, NULL,
                                          on_stream_message, on_stream_done, &result);
  if (!run_loop_with_timeout(loop, 10)) {
    ferry_ttrpc_client_cancel(client, sid);
    return case_fail(error, "no end of stream within 10 s");
  }
  g_autoptr(GError) stream_error = g_steal_pointer(&result.error);
  if (result.messages != 0)
    return case_fail(error, "got %u messages from a peer without streaming", result.messages);
  if (!expect_status(stream_error, FERRY_ERROR_UNIMPLEMENTED, "method Count", error))
    return FALSE;
  return expect_echo(client, "after-stream", error);
}

/*
 * 1000 calls in flight at once on one connection: first a 600 ms Sleep, then Sleeps
 * with varied short delays and Echos whose answers are unique per call (value and
 * metadata). Every call must get its own answer, and the slow first call must not
 * finish before the fast ones: the Go server answers out of order.
 */
#define PIPELINE_CALLS 1000u

typedef struct {
  GMainLoop *loop;
  guint outstanding;
  guint completed;
  guint slow_order;
  guint n_failures;
  GString *failures;
} Pipeline;

typedef struct {
  Pipeline *pipeline;
  guint32 sid;
  gboolean slow;
  gboolean answered;
  char *value;
  char *metadata_value;
  char *expected;
} PipelineCall;

static void on_pipeline_reply(FerryTtrpcClient *client, const ProtobufCMessage *response,
                              const GError *error, gpointer user_data)
{
  PipelineCall *call = user_data;
  Pipeline *pipeline = call->pipeline;

  call->answered = TRUE;
  pipeline->completed++;
  if (call->slow)
    pipeline->slow_order = pipeline->completed;

  const char *got =
      response != NULL ? ((const Google__Protobuf__StringValue *)response)->value : NULL;
  if (error != NULL || got == NULL || !g_str_equal(got, call->expected)) {
    if (pipeline->n_failures++ < 5) {
      g_autofree char *described =
          error != NULL ? describe_error(error) : g_strdup(got ? got : "nothing");
      g_string_append_printf(pipeline->failures, "%s%s: got %s",
                             pipeline->failures->len ? "; " : "", call->value, described);
    }
  }
  if (--pipeline->outstanding == 0)
    g_main_loop_quit(pipeline->loop);
}

static gboolean case_pipelined(const char *socket_path, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
  g_autoptr(GString) failures = g_string_new(NULL);
  Pipeline pipeline = { .loop = loop, .failures = failures };
  PipelineCall *calls = g_new0(PipelineCall, PIPELINE_CALLS);

  for (guint i = 0; i < PIPELINE_CALLS; i++) {
    PipelineCall *call = &calls[i];
    call->pipeline = &pipeline;
    const char *method;
    if (i == 0) {
      method = "Sleep";
      call->slow = TRUE;
      call->value = g_strdup("600");
      call->expected = g_strdup(call->value);
    } else if (i % 2 == 0) {
      method = "Sleep";
      call->value = g_strdup_printf("%u", (i * 7) % 50);
      call->expected = g_strdup(call->value);
    } else {
      method = "Echo";
      call->value = g_strdup_printf("echo-%u", i);
      call->metadata_value = g_strdup_printf("m%u", i);
      call->expected = g_strdup_printf("%s|md=%s", call->value, call->metadata_value);
    }
    const FerryTtrpcMetadata metadata[] = { { "x-test", call->metadata_value } };
    const FerryTtrpcCallOptions options = {
      .timeout_ns = 30000 * NS_PER_MS,
      .metadata = call->metadata_value != NULL ? metadata : NULL,
      .n_metadata = call->metadata_value != NULL ? 1 : 0,
    };
    Google__Protobuf__StringValue request = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    request.value = call->value;
    pipeline.outstanding++;
    call->sid = ferry_ttrpc_client_call(client, SERVICE, method, &request.base,
                                        &google__protobuf__string_value__descriptor, &options,
                                        on_pipeline_reply, call);
  }
  guint in_flight = ferry_ttrpc_client_pending(client);

  gboolean finished = run_loop_with_timeout(loop, 40);
  for (guint i = 0; i < PIPELINE_CALLS; i++) {
    if (!calls[i].answered)
      ferry_ttrpc_client_cancel(client, calls[i].sid);
    g_free(calls[i].value);
    g_free(calls[i].metadata_value);
    g_free(calls[i].expected);
  }
  g_free(calls);

  if (!finished)
    return case_fail(error, "%u of %u calls unanswered after 40 s", pipeline.outstanding,
                     PIPELINE_CALLS);
  if (pipeline.n_failures > 0)
    return case_fail(error, "%u wrong answers: %s", pipeline.n_failures, failures->str);
  if (in_flight != PIPELINE_CALLS)
    return case_fail(error, "only %u of %u calls were pending at once", in_flight, PIPELINE_CALLS);
  if (pipeline.slow_order < PIPELINE_CALLS / 2)
    return case_fail(error, "the 600 ms Sleep finished as call %u of %u: not out of order",
                     pipeline.slow_order, PIPELINE_CALLS);
  return TRUE;
}

/*
 * A request over the 4 MiB limit never leaves the client: against a peer that never
 * reads (a socketpair) it still fails at once with RESOURCE_EXHAUSTED, not with the
 * deadline; against the Go server it fails the same way and the connection stays
 * usable.
 */
static gboolean case_oversize_request_local(const char *socket_path, GError **error)
{
  g_autofree char *huge = g_malloc(FERRY_TTRPC_MAX_DATA + 1);
  memset(huge, 'a', FERRY_TTRPC_MAX_DATA);
  huge[FERRY_TTRPC_MAX_DATA] = '\0';
  const FerryTtrpcCallOptions options = { .timeout_ns = 5000 * NS_PER_MS };

  int fds[2];
  if (!ferry_socketpair(fds, TRUE, error))
    return FALSE;
  /* The peer end stays open and unread until the case ends. */
  g_auto(FerryFd) silent_peer G_GNUC_UNUSED = fds[1];
  g_autoptr(FerryTtrpcClient) local = ferry_ttrpc_client_new(fds[0], error);
  if (local == NULL)
    return FALSE;
  g_autoptr(GError) local_error = NULL;
  g_autofree char *local_got = call_string(local, SERVICE, "Echo", huge, &options, &local_error);
  if (local_got != NULL)
    return case_fail(error, "a 4 MiB request to a silent peer was answered");
  g_autofree char *local_described = describe_error(local_error);
  note("4 MiB request to a silent peer: %s", local_described);
  if (!expect_status(local_error, FERRY_ERROR_RESOURCE_EXHAUSTED, NULL, error))
    return FALSE;

  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;
  g_autoptr(GError) call_error = NULL;
  g_autofree char *got = call_string(client, SERVICE, "Echo", huge, &options, &call_error);
  if (got != NULL)
    return case_fail(error, "a 4 MiB request was answered");
  if (!expect_status(call_error, FERRY_ERROR_RESOURCE_EXHAUSTED, NULL, error))
    return FALSE;
  return expect_echo(client, "after-oversize-request", error);
}

/* ---- raw frames for the oversize-frame case ---- */

static int connect_raw(const char *path, GError **error)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof addr.sun_path) {
    case_fail(error, "socket path too long: %s", path);
    return -1;
  }
  strcpy(addr.sun_path, path);

  g_auto(FerryFd) fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ferry_error_set_errno(error, errno, "socket");
    return -1;
  }
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    ferry_error_set_errno(error, errno, "connect to %s", path);
    return -1;
  }
  /* Nothing here may hang the battery. */
  const struct timeval timeout = { .tv_sec = 30 };
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  return ferry_fd_steal(&fd);
}

/* Reads until the parser yields one whole frame; returns its data (maybe empty). */
static GBytes *read_frame(int fd, FerryTtrpcParser *parser, FerryTtrpcHeader *header,
                          GError **error)
{
  for (;;) {
    const guint8 *data = NULL;
    switch (ferry_ttrpc_parser_next(parser, header, &data)) {
    case FERRY_TTRPC_PARSE_FRAME:
      return g_bytes_new(data, header->length);
    case FERRY_TTRPC_PARSE_OVERSIZE:
      case_fail(error, "answer frame claims %u bytes", header->length);
      return NULL;
    case FERRY_TTRPC_PARSE_NEED_MORE:
      break;
    }
    guint8 buf[65536];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      ferry_error_set_errno(error, errno, "read answer");
      return NULL;
    }
    if (n == 0) {
      case_fail(error, "the server closed the connection");
      return NULL;
    }
    ferry_ttrpc_parser_feed(parser, buf, (gsize)n);
  }
}

/* Reads one Response frame on stream `sid` and decodes its envelope. */
static Ttrpc__Response *read_response(int fd, FerryTtrpcParser *parser, guint32 sid, GError **error)
{
  FerryTtrpcHeader header;
  g_autoptr(GBytes) data = read_frame(fd, parser, &header, error);
  if (data == NULL)
    return NULL;
  if (header.type != FERRY_TTRPC_TYPE_RESPONSE || header.stream_id != sid || header.flags != 0) {
    case_fail(error, "got frame type %u stream %u flags 0x%x, want a Response on stream %u",
              header.type, header.stream_id, header.flags, sid);
    return NULL;
  }
  gsize len = 0;
  const guint8 *bytes = g_bytes_get_data(data, &len);
  Ttrpc__Response *response = ttrpc__response__unpack(NULL, len, bytes);
  if (response == NULL)
    case_fail(error, "undecodable Response (%" G_GSIZE_FORMAT " bytes)", len);
  return response;
}

static void response_free(Ttrpc__Response *response)
{
  ttrpc__response__free_unpacked(response, NULL);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Ttrpc__Response, response_free)

/*
 * The Go server's answer to a frame whose header claims 4 MiB + 1: it discards the
 * body and answers RESOURCE_EXHAUSTED on that stream id; the connection stays usable.
 */
static gboolean case_oversize_frame_raw(const char *socket_path, GError **error)
{
  g_auto(FerryFd) fd = connect_raw(socket_path, error);
  if (fd < 0)
    return FALSE;
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();

  const guint32 claimed = FERRY_TTRPC_MAX_DATA + 1;
  const FerryTtrpcHeader oversize = { .length = claimed,
                                      .stream_id = 1,
                                      .type = FERRY_TTRPC_TYPE_REQUEST };
  guint8 header[FERRY_TTRPC_HEADER_SIZE];
  ferry_ttrpc_header_encode(&oversize, header);
  if (!ferry_write_all(fd, header, sizeof header, error))
    return FALSE;
  /* Go reads (and drops) the whole body before it answers. */
  g_autofree guint8 *zeros = g_malloc0(65536);
  for (guint32 left = claimed; left > 0;) {
    guint32 chunk = MIN(left, 65536u);
    if (!ferry_write_all(fd, zeros, chunk, error))
      return FALSE;
    left -= chunk;
  }

  g_autoptr(Ttrpc__Response) response = read_response(fd, parser, 1, error);
  if (response == NULL)
    return FALSE;
  if (response->status == NULL)
    return case_fail(error, "the oversize frame was answered OK");
  if (response->status->code != FERRY_ERROR_RESOURCE_EXHAUSTED ||
      g_strcmp0(response->status->message, GO_OVERSIZE_MESSAGE) != 0)
    return case_fail(error, "got code %d \"%s\", want code 8 \"%s\"", response->status->code,
                     response->status->message, GO_OVERSIZE_MESSAGE);

  /* The same raw connection still serves an ordinary Echo on the next stream id. */
  Google__Protobuf__StringValue value = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  value.value = "after-oversize";
  gsize payload_len = protobuf_c_message_get_packed_size(&value.base);
  g_autofree guint8 *payload = g_malloc(MAX(payload_len, 1));
  protobuf_c_message_pack(&value.base, payload);

  Ttrpc__Request request = TTRPC__REQUEST__INIT;
  request.service = SERVICE;
  request.method = "Echo";
  request.payload.data = payload;
  request.payload.len = payload_len;
  gsize request_len = protobuf_c_message_get_packed_size(&request.base);
  g_autofree guint8 *packed = g_malloc(request_len);
  protobuf_c_message_pack(&request.base, packed);
  g_autoptr(GBytes) frame =
      ferry_ttrpc_frame_encode(3, FERRY_TTRPC_TYPE_REQUEST, 0, packed, request_len, error);
  if (frame == NULL)
    return FALSE;
  gsize frame_len = 0;
  const guint8 *frame_data = g_bytes_get_data(frame, &frame_len);
  if (!ferry_write_all(fd, frame_data, frame_len, error))
    return FALSE;

  g_autoptr(Ttrpc__Response) echo = read_response(fd, parser, 3, error);
  if (echo == NULL)
    return FALSE;
  if (echo->status != NULL && echo->status->code != 0)
    return case_fail(error, "Echo after the oversize frame: code %d \"%s\"", echo->status->code,
                     echo->status->message);
  Google__Protobuf__StringValue *answer =
      google__protobuf__string_value__unpack(NULL, echo->payload.len, echo->payload.data);
  if (answer == NULL)
    return case_fail(error, "Echo after the oversize frame: undecodable payload");
  gboolean right = g_str_equal(answer->value, "after-oversize|md=");
  g_autofree char *got = g_strdup(answer->value);
  google__protobuf__string_value__free_unpacked(answer, NULL);
  if (!right)
    return case_fail(error, "Echo after the oversize frame: got \"%s\"", got);
  return TRUE;
}

/*
 * Big 5000000: Go ttrpc 1.1.1 does not check the size of what it sends, so the Go
 * server writes a Response frame of 5000010 bytes (over the 4 MiB limit). The C
 * client skips that frame's body without buffering it, fails the call with
 * RESOURCE_EXHAUSTED, and keeps the connection.
 */
static gboolean case_big_response(const char *socket_path, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  const FerryTtrpcCallOptions options = { .timeout_ns = 20000 * NS_PER_MS };
  g_autoptr(GError) call_error = NULL;
  g_autofree char *got = call_string(client, SERVICE, "Big", "5000000", &options, &call_error);
  if (got != NULL)
    return case_fail(error, "Big 5000000 succeeded with %" G_GSIZE_FORMAT " bytes", strlen(got));
  g_autofree char *described = describe_error(call_error);
  note("Big 5000000 from Go: %s", described);
  if (!expect_status(call_error, FERRY_ERROR_RESOURCE_EXHAUSTED, NULL, error))
    return FALSE;
  return expect_echo(client, "after-big", error);
}

static gboolean case_deadline_expiry(const char *socket_path, GError **error)
{
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, error);
  if (client == NULL)
    return FALSE;

  const FerryTtrpcCallOptions options = { .timeout_ns = 200 * NS_PER_MS };
  g_autoptr(GError) call_error = NULL;
  gint64 start = g_get_monotonic_time();
  g_autofree char *got = call_string(client, SERVICE, "Sleep", "2000", &options, &call_error);
  gint64 elapsed_ms = (g_get_monotonic_time() - start) / 1000;
  if (got != NULL)
    return case_fail(error, "Sleep 2000 with a 200 ms deadline succeeded");
  g_autofree char *described = describe_error(call_error);
  note("Sleep 2000 with 200 ms: %s after %" G_GINT64_FORMAT " ms", described, elapsed_ms);
  /* The local timer normally wins; should the Go server's own answer at its deadline
   * arrive first, it carries the same code. */
  if (!expect_status(call_error, FERRY_ERROR_DEADLINE_EXCEEDED, NULL, error))
    return FALSE;
  if (elapsed_ms > 1500)
    return case_fail(error, "the call took %" G_GINT64_FORMAT " ms, the deadline was 200 ms",
                     elapsed_ms);
  return expect_echo(client, "after-deadline", error);
}

/* -------------------------------------------------------------------- main -- */

typedef struct {
  const char *name;
  gboolean (*run)(const char *socket_path, GError **error);
} InteropCase;

static const InteropCase cases[] = {
  { "echo-metadata", case_echo_metadata },
  { "deadline-propagation", case_deadline_propagation },
  { "deadline-none", case_deadline_none },
  { "fail-not-found", case_fail_not_found },
  { "fail-failed-precondition", case_fail_failed_precondition },
  { "unknown-method", case_unknown_method },
  { "unknown-service", case_unknown_service },
  { "stream-call-to-unary-only-peer", case_stream_to_unary_peer },
  { "pipelined-1000-calls-one-connection", case_pipelined },
  { "oversize-request-fails-locally", case_oversize_request_local },
  { "oversize-frame-answered-on-its-stream", case_oversize_frame_raw },
  { "big-response-skipped-connection-survives", case_big_response },
  { "deadline-expiry-local", case_deadline_expiry },
};

int main(int argc, char **argv)
{
  const char *socket_path = ferry_test_socket_arg(argc, argv, 1);
  if (socket_path == NULL) {
    fprintf(stderr, "usage: %s -socket PATH\n", argv[0]);
    return 2;
  }

  printf("1..%zu\n", G_N_ELEMENTS(cases));
  fflush(stdout);
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    alarm(CASE_TIMEOUT_S);
    gboolean ok = cases[i].run(socket_path, &error);
    alarm(0);
    if (ok) {
      printf("ok %zu - c-client/%s\n", i + 1, cases[i].name);
    } else {
      g_autofree char *reason = g_strdup(error != NULL ? error->message : "failed");
      g_strdelimit(reason, "\r\n", ' ');
      printf("not ok %zu - c-client/%s # %s\n", i + 1, cases[i].name, reason);
    }
    fflush(stdout);
  }
  return 0;
}
