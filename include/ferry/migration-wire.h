/*
 * The migration session's values as the messages the shim sends (docs/migration.md):
 * a log message as hcsshim's NotificationsResponse, a session's status as
 * ferry.migration.v1.StatusResponse, and a VM's phase report as a log message. Pure;
 * the messages are built in caller-provided storage and borrow their strings.
 */
#pragma once

#include <glib.h>

#include "ferry/migration-notifications.h"
#include "ferry/migration-session.h"
#include "ferry/migration/v1/status.pb-c.h"
#include "ferry/vm.h"
#include "hcsshim/migration.pb-c.h"

G_BEGIN_DECLS

/* One NotificationsResponse and everything it points to. */
typedef struct {
  NotificationsResponse response;
  Notification notification;
  BlackoutExitedEventDetails blackout;
  Google__Protobuf__Timestamp start_time;
  Google__Protobuf__Timestamp update_time;
  Google__Protobuf__Timestamp blackout_stop;
} FerryMigrationNotificationMessage;

/* Fill *out (its own pointers only) from `note` and the log's start time (both wall
 * clock, µs since the epoch). The blackout details and their stop time are set only
 * when the message has them; a time of 0 is left out. */
void ferry_migration_notification_message_init(FerryMigrationNotificationMessage *out,
                                               const FerryMigrationNotification *note,
                                               gint64 start_time_us);

/* One StatusResponse and its last error. */
typedef struct {
  Ferry__Migration__V1__StatusResponse response;
  Google__Rpc__Status last_error;
} FerryMigrationStatusMessage;

/* Fill *out from `status` (borrowed: out points at its strings and error message); the
 * phase, phase state and last message id are the latest message's of status's log. */
void ferry_migration_status_message_init(FerryMigrationStatusMessage *out,
                                         const FerryMigrationStatus *status);

/* The log message for a VM's phase report (the VM numbers its enums as hcsshim does).
 * The message id and update time are the log's to set. */
void ferry_migration_notification_from_vm(FerryMigrationNotification *out,
                                          const FerryVmNotification *vm);

G_END_DECLS
