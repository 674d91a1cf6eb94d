/* ModifySettings requests for storage in hcsshim's shapes (ferry/guest.h, storage): its
 * internal/protocol/guestresource LCOWMappedVirtualDisk and LCOWCombinedLayers, with
 * Go's omitempty (a zero member is left out). */
#include "ferry/guest.h"

#include "ferry/json.h"

static json_t *modification(const char *resource_type, const char *request_type, json_t *settings)
{
  return json_pack("{s:s, s:s, s:o}", "ResourceType", resource_type, "RequestType", request_type,
                   "Settings", settings);
}

static void set_string(json_t *obj, const char *key, const char *value)
{
  if (value != NULL && value[0] != '\0')
    json_object_set_new(obj, key, json_string(value));
}

json_t *ferry_guest_mapped_disk_request(const char *request_type, const FerryGuestMappedDisk *disk)
{
  json_t *s = json_object();
  set_string(s, "MountPath", disk->mount_path);
  if (disk->lun != 0)
    json_object_set_new(s, "Lun", json_integer(disk->lun));
  if (disk->controller != 0)
    json_object_set_new(s, "Controller", json_integer(disk->controller));
  if (disk->partition != 0)
    json_object_set_new(s, "Partition", json_integer((json_int_t)disk->partition));
  if (disk->read_only)
    json_object_set_new(s, "ReadOnly", json_true());
  if (disk->options != NULL && disk->options[0] != NULL) {
    json_t *options = json_array();
    for (const char *const *o = disk->options; *o != NULL; o++)
      json_array_append_new(options, json_string(*o));
    json_object_set_new(s, "Options", options);
  }
  set_string(s, "Filesystem", disk->filesystem);
  return modification("MappedVirtualDisk", request_type, s);
}

json_t *ferry_guest_combined_layers_request(const char *request_type, const char *container_id,
                                            const char *root, const char *const *layers,
                                            const char *scratch, guint scratch_size_mb)
{
  json_t *s = json_object();
  set_string(s, "ContainerID", container_id);
  set_string(s, "ContainerRootPath", root);
  if (layers != NULL && layers[0] != NULL) {
    json_t *list = json_array();
    for (const char *const *l = layers; *l != NULL; l++)
      json_array_append_new(list, json_pack("{s:s}", "Path", *l));
    json_object_set_new(s, "Layers", list);
  }
  set_string(s, "ScratchPath", scratch);
  if (scratch_size_mb != 0)
    json_object_set_new(s, FERRY_BRIDGE_SCRATCH_SIZE_FIELD, json_integer(scratch_size_mb));
  return modification("CombinedLayers", request_type, s);
}

void ferry_guest_connection_map_disk(FerryGuestConnection *gc, const FerryGuestMappedDisk *disk,
                                     FerryGuestDoneFunc done, gpointer user_data)
{
  g_autoptr(json_t) request = ferry_guest_mapped_disk_request("Add", disk);
  ferry_guest_connection_modify(gc, NULL, request, done, user_data);
}

void ferry_guest_connection_unmap_disk(FerryGuestConnection *gc, const char *mount_path,
                                       FerryGuestDoneFunc done, gpointer user_data)
{
  FerryGuestMappedDisk disk = { .mount_path = mount_path };
  g_autoptr(json_t) request = ferry_guest_mapped_disk_request("Remove", &disk);
  ferry_guest_connection_modify(gc, NULL, request, done, user_data);
}

void ferry_guest_connection_combine_layers(FerryGuestConnection *gc, const char *container_id,
                                           const char *root, const char *const *layers,
                                           const char *scratch, guint scratch_size_mb,
                                           FerryGuestDoneFunc done, gpointer user_data)
{
  g_autoptr(json_t) request = ferry_guest_combined_layers_request("Add", container_id, root, layers,
                                                                  scratch, scratch_size_mb);
  ferry_guest_connection_modify(gc, NULL, request, done, user_data);
}

void ferry_guest_connection_remove_layers(FerryGuestConnection *gc, const char *root,
                                          FerryGuestDoneFunc done, gpointer user_data)
{
  g_autoptr(json_t) request =
      ferry_guest_combined_layers_request("Remove", NULL, root, NULL, NULL, 0);
  ferry_guest_connection_modify(gc, NULL, request, done, user_data);
}
