/* The migration session's values as the shim's messages (include/ferry/migration-wire.h). */
#include <string.h>

#include "ferry/error.h"
#include "ferry/migration-wire.h"

static void timestamp_set(Google__Protobuf__Timestamp *ts, gint64 us)
{
  google__protobuf__timestamp__init(ts);
  /* Floor division, so that a time before the epoch keeps nanos in [0, 1e9). */
  gint64 seconds = us / G_USEC_PER_SEC;
  gint64 rest = us % G_USEC_PER_SEC;
  if (rest < 0) {
    seconds--;
    rest += G_USEC_PER_SEC;
  }
  ts->seconds = seconds;
  ts->nanos = (int32_t)(rest * 1000);
}

void ferry_migration_notification_message_init(FerryMigrationNotificationMessage *out,
                                               const FerryMigrationNotification *note,
                                               gint64 start_time_us)
{
  memset(out, 0, sizeof(*out));
  notifications_response__init(&out->response);
  notification__init(&out->notification);
  out->notification.origin = (Origin)note->origin;
  out->notification.phase = (Phase)note->phase;
  out->notification.state = (PhaseState)note->state;
  if (note->has_blackout) {
    blackout_exited_event_details__init(&out->blackout);
    out->blackout.blackout_duration_milliseconds = note->blackout_duration_ms;
    if (note->blackout_stop_time_us != 0) {
      timestamp_set(&out->blackout_stop, note->blackout_stop_time_us);
      out->blackout.blackout_stop_timestamp = &out->blackout_stop;
    }
    out->notification.phase_details_case = NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED;
    out->notification.blackout_exited = &out->blackout;
  }
  out->response.message_id = note->message_id;
  out->response.notification = &out->notification;
  if (start_time_us != 0) {
    timestamp_set(&out->start_time, start_time_us);
    out->response.start_time = &out->start_time;
  }
  if (note->update_time_us != 0) {
    timestamp_set(&out->update_time, note->update_time_us);
    out->response.update_time = &out->update_time;
  }
}

void ferry_migration_status_message_init(FerryMigrationStatusMessage *out,
                                         const FerryMigrationStatus *status)
{
  memset(out, 0, sizeof(*out));
  ferry__migration__v1__status_response__init(&out->response);
  out->response.session_id = (char *)(status->session_id != NULL ? status->session_id : "");
  out->response.role = (Ferry__Migration__V1__Role)status->role;
  out->response.state = (Ferry__Migration__V1__SessionState)status->state;
  out->response.bytes_transferred = status->bytes_transferred;
  out->response.bytes_total = status->bytes_total;
  out->response.cleaned_up = status->cleaned_up;
  FerryMigrationNotification latest;
  if (status->notifications != NULL &&
      ferry_migration_notifications_latest(status->notifications, &latest)) {
    out->response.phase = (Phase)latest.phase;
    out->response.phase_state = (PhaseState)latest.state;
    out->response.last_message_id = latest.message_id;
  }
  if (status->last_error != NULL) {
    google__rpc__status__init(&out->last_error);
    out->last_error.code = ferry_error_to_status_code(status->last_error);
    out->last_error.message = status->last_error->message;
    out->response.last_error = &out->last_error;
  }
}

void ferry_migration_notification_from_vm(FerryMigrationNotification *out,
                                          const FerryVmNotification *vm)
{
  memset(out, 0, sizeof(*out));
  out->origin = (FerryMigrationOrigin)vm->origin;
  out->phase = (FerryMigrationPhase)vm->phase;
  out->state = (FerryMigrationPhaseState)vm->result;
  if (vm->phase == FERRY_VM_PHASE_BLACKOUT_EXITED) {
    out->has_blackout = TRUE;
    out->blackout_duration_ms = vm->blackout_ms;
    out->blackout_stop_time_us = vm->blackout_stop_us;
  }
}
