/* The stdio ports of a guest connection, bound to a host transport. */
#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/source.h"

typedef struct {
  guint32 port;
  FerryChannel *channel; /* NULL until the guest dials (or it was adopted) */
  gboolean listening;
  FerryPortChannelFunc func;
  gpointer user_data;
} Port;

typedef struct {
  struct FerryStdioPorts *ports;
  guint32 port;
  FerryPortChannelFunc func;
  gpointer user_data;
  GSource *source;
} Later;

struct FerryStdioPorts {
  GMainContext *context; /* thread-default at creation */
  FerryTransport *transport;
  GHashTable *ports;   /* port -> Port */
  GHashTable *adopted; /* port -> FerryChannel (a reference) */
  GList *later;        /* Later: when_ready calls not yet run */
};

static void port_free(gpointer p)
{
  Port *port = p;
  g_clear_pointer(&port->channel, ferry_channel_unref);
  g_free(port);
}

FerryStdioPorts *ferry_stdio_ports_new(FerryTransport *transport)
{
  FerryStdioPorts *ports = g_new0(FerryStdioPorts, 1);
  ports->context = g_main_context_ref_thread_default();
  ports->transport = ferry_transport_ref(transport);
  ports->ports = g_hash_table_new_full(NULL, NULL, NULL, port_free);
  ports->adopted = g_hash_table_new_full(NULL, NULL, NULL, (GDestroyNotify)ferry_channel_unref);
  return ports;
}

void ferry_stdio_ports_free(FerryStdioPorts *ports)
{
  if (ports == NULL)
    return;
  GHashTableIter it;
  gpointer key, value;
  g_hash_table_iter_init(&it, ports->ports);
  while (g_hash_table_iter_next(&it, &key, &value))
    if (((Port *)value)->listening)
      ferry_transport_unlisten(ports->transport, GPOINTER_TO_UINT(key));
  for (GList *l = ports->later; l != NULL; l = l->next) {
    ferry_source_clear(&((Later *)l->data)->source);
    g_free(l->data);
  }
  g_list_free(ports->later);
  g_hash_table_unref(ports->ports);
  g_hash_table_unref(ports->adopted);
  ferry_transport_unref(ports->transport);
  g_main_context_unref(ports->context);
  g_free(ports);
}

void ferry_stdio_ports_adopt(FerryStdioPorts *ports, guint32 port, FerryChannel *channel)
{
  g_hash_table_replace(ports->adopted, GUINT_TO_POINTER(port), ferry_channel_ref(channel));
}

static void notify(Port *p)
{
  FerryPortChannelFunc func = g_steal_pointer(&p->func);
  if (func != NULL)
    func(p->port, p->channel, NULL, p->user_data);
}

static void on_accept(FerryTransport *t, FerryChannel *channel, gpointer ud)
{
  FerryStdioPorts *ports = ud;
  guint32 port = ferry_channel_get_port(channel);
  Port *p = g_hash_table_lookup(ports->ports, GUINT_TO_POINTER(port));
  if (p == NULL || p->channel != NULL) {
    /* A second dial of a stdio port (each accepts one): refuse it. */
    ferry_channel_close(channel);
    ferry_channel_unref(channel);
    return;
  }
  p->channel = channel;
  p->listening = FALSE;
  ferry_transport_unlisten(t, port);
  notify(p);
}

static gboolean hook_listen(guint32 port, gpointer ud, GError **error)
{
  FerryStdioPorts *ports = ud;
  if (g_hash_table_contains(ports->ports, GUINT_TO_POINTER(port))) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "stdio port %u is in use", port);
    return FALSE;
  }
  Port *p = g_new0(Port, 1);
  p->port = port;
  gpointer adopted;
  if (g_hash_table_steal_extended(ports->adopted, GUINT_TO_POINTER(port), NULL, &adopted)) {
    p->channel = adopted;
  } else {
    if (!ferry_transport_listen(ports->transport, port, on_accept, ports, error)) {
      g_free(p);
      return FALSE;
    }
    p->listening = TRUE;
  }
  g_hash_table_insert(ports->ports, GUINT_TO_POINTER(port), p);
  return TRUE;
}

static void hook_release(guint32 port, gpointer ud)
{
  FerryStdioPorts *ports = ud;
  Port *p = g_hash_table_lookup(ports->ports, GUINT_TO_POINTER(port));
  if (p == NULL)
    return;
  if (p->listening)
    ferry_transport_unlisten(ports->transport, port);
  FerryPortChannelFunc func = g_steal_pointer(&p->func);
  gpointer ud2 = p->user_data;
  g_hash_table_steal(ports->ports, GUINT_TO_POINTER(port));
  if (func != NULL) {
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED,
                                          "stdio port %u released before the guest dialed", port);
    func(port, NULL, error, ud2);
  }
  port_free(p);
}

static void hook_close_write(guint32 port, gpointer ud)
{
  FerryStdioPorts *ports = ud;
  Port *p = g_hash_table_lookup(ports->ports, GUINT_TO_POINTER(port));
  if (p != NULL && p->channel != NULL)
    ferry_channel_shutdown_write(p->channel);
}

static const FerryGuestPortHooks port_hooks = { hook_listen, hook_release, hook_close_write };

const FerryGuestPortHooks *ferry_stdio_ports_hooks(void)
{
  return &port_hooks;
}

static gboolean on_later(gpointer data)
{
  Later *l = data;
  l->ports->later = g_list_remove(l->ports->later, l);
  ferry_source_clear(&l->source);
  Port *p = g_hash_table_lookup(l->ports->ports, GUINT_TO_POINTER(l->port));
  if (p == NULL) {
    g_autoptr(GError) error =
        g_error_new(FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no stdio port %u", l->port);
    l->func(l->port, NULL, error, l->user_data);
  } else {
    p->func = l->func;
    p->user_data = l->user_data;
    if (p->channel != NULL)
      notify(p);
  }
  g_free(l);
  return G_SOURCE_REMOVE;
}

void ferry_stdio_ports_when_ready(FerryStdioPorts *ports, guint32 port, FerryPortChannelFunc func,
                                  gpointer user_data)
{
  /* From the main loop always, so the caller is never called back from inside. */
  Later *l = g_new0(Later, 1);
  l->ports = ports;
  l->port = port;
  l->func = func;
  l->user_data = user_data;
  l->source = ferry_idle_new(ports->context, on_later, l);
  ports->later = g_list_prepend(ports->later, l);
}

FerryChannel *ferry_stdio_ports_get(FerryStdioPorts *ports, guint32 port)
{
  Port *p = g_hash_table_lookup(ports->ports, GUINT_TO_POINTER(port));
  return p != NULL ? p->channel : NULL;
}

static gint compare_ports(gconstpointer a, gconstpointer b)
{
  guint32 x = *(const guint32 *)a, y = *(const guint32 *)b;
  return x < y ? -1 : x > y;
}

GArray *ferry_stdio_ports_list(FerryStdioPorts *ports)
{
  GArray *out = g_array_new(FALSE, FALSE, sizeof(guint32));
  GHashTableIter it;
  gpointer key, value;
  g_hash_table_iter_init(&it, ports->ports);
  while (g_hash_table_iter_next(&it, &key, &value)) {
    if (((Port *)value)->channel != NULL) {
      guint32 port = GPOINTER_TO_UINT(key);
      g_array_append_val(out, port);
    }
  }
  g_hash_table_iter_init(&it, ports->adopted);
  while (g_hash_table_iter_next(&it, &key, NULL)) {
    guint32 port = GPOINTER_TO_UINT(key);
    if (!g_hash_table_contains(ports->ports, key))
      g_array_append_val(out, port);
  }
  g_array_sort(out, compare_ports);
  return out;
}

FerryChannel *ferry_stdio_ports_channel(FerryStdioPorts *ports, guint32 port)
{
  FerryChannel *ch = ferry_stdio_ports_get(ports, port);
  return ch != NULL ? ch : g_hash_table_lookup(ports->adopted, GUINT_TO_POINTER(port));
}

void ferry_stdio_ports_cancel(FerryStdioPorts *ports, guint32 port)
{
  for (GList *l = ports->later; l != NULL;) {
    GList *next = l->next;
    Later *later = l->data;
    if (later->port == port) {
      ferry_source_clear(&later->source);
      g_free(later);
      ports->later = g_list_delete_link(ports->later, l);
    }
    l = next;
  }
  Port *p = g_hash_table_lookup(ports->ports, GUINT_TO_POINTER(port));
  if (p != NULL) {
    p->func = NULL;
    p->user_data = NULL;
  }
}
