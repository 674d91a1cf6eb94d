/* fd helpers: cleanup, flags and SCM_RIGHTS passing. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"

static gboolean fd_is_open(int fd)
{
  return fcntl(fd, F_GETFD) >= 0;
}

static void test_auto_close(void)
{
  int raw;
  {
    g_auto(FerryFd) fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    raw = fd;
    g_assert_true(fd_is_open(raw));
  }
  g_assert_false(fd_is_open(raw));

  /* A stolen fd survives the scope. */
  int kept;
  {
    g_auto(FerryFd) fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    kept = ferry_fd_steal(&fd);
    g_assert_cmpint(fd, ==, -1);
  }
  g_assert_true(fd_is_open(kept));
  ferry_fd_clear(&kept);
  g_assert_cmpint(kept, ==, -1);
  ferry_fd_clear(&kept); /* idempotent */
}

static void test_flags(void)
{
  g_autoptr(GError) error = NULL;
  g_auto(FerryFd) fd = open("/dev/null", O_RDONLY);
  g_assert_true(ferry_fd_set_cloexec(fd, &error));
  g_assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  g_assert_true(ferry_fd_set_nonblocking(fd, TRUE, &error));
  g_assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
  g_assert_true(ferry_fd_set_nonblocking(fd, FALSE, &error));
  g_assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
  g_assert_false(ferry_fd_set_cloexec(-1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

static void test_send_and_receive_fd(void)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(fcntl(sp[0], F_GETFD) & FD_CLOEXEC);
  int p[2];
  g_assert_cmpint(pipe(p), ==, 0);

  g_assert_true(ferry_fd_send(sp[0], p[1], "tcp", 3, &error));
  close(p[1]);

  char buf[16];
  gsize got;
  int fd;
  g_assert_true(ferry_fd_recv(sp[1], buf, sizeof(buf), &got, &fd, &error));
  g_assert_cmpmem(buf, got, "tcp", 3);
  g_assert_cmpint(fd, >=, 0);
  g_assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  /* It is really the pipe's write end. */
  g_assert_cmpint(write(fd, "z", 1), ==, 1);
  char c;
  g_assert_cmpint(read(p[0], &c, 1), ==, 1);
  g_assert_cmpint(c, ==, 'z');
  close(fd);
  close(p[0]);
  close(sp[0]);
  close(sp[1]);
}

static void test_receive_without_fd(void)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_cmpint(write(sp[0], "plain", 5), ==, 5);
  char buf[16];
  gsize got;
  int fd;
  g_assert_true(ferry_fd_recv(sp[1], buf, sizeof(buf), &got, &fd, &error));
  g_assert_cmpint(fd, ==, -1);
  g_assert_cmpuint(got, ==, 5);
  close(sp[0]);
  g_assert_false(ferry_fd_recv(sp[1], buf, sizeof(buf), &got, &fd, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  close(sp[1]);
}

/* A peer that sends several fds in one message gets one through; the others are
 * closed, not leaked. */
static void test_extra_fds_closed(void)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  int fds[3];
  for (int i = 0; i < 3; i++)
    fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
  union {
    char buf[CMSG_SPACE(sizeof(fds))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct iovec iov = { .iov_base = "x", .iov_len = 1 };
  struct msghdr msg = { .msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = control.buf,
                        .msg_controllen = sizeof(control.buf) };
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
  memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
  g_assert_cmpint(sendmsg(sp[0], &msg, 0), ==, 1);
  for (int i = 0; i < 3; i++)
    close(fds[i]);

  /* After the sender closed its copies, the receiver's fds are the lowest free
   * numbers: the extra ones must be closed again when recv returns. */
  char buf[4];
  gsize got;
  int fd;
  g_assert_true(ferry_fd_recv(sp[1], buf, sizeof(buf), &got, &fd, &error));
  g_assert_cmpint(fd, >=, 0);
  int probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
  /* The next free fd is at most fd+1: the two extras were released. */
  g_assert_cmpint(probe, <=, fd + 1);
  close(probe);
  close(fd);
  close(sp[0]);
  close(sp[1]);
}

static void test_send_argument_errors(void)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_false(ferry_fd_send(sp[0], 0, "", 0, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_assert_false(ferry_fd_send(sp[0], -1, "x", 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  /* A closed peer is an error with the reason, not a SIGPIPE. */
  close(sp[1]);
  g_assert_false(ferry_fd_send(sp[0], 0, "x", 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  close(sp[0]);
}

static void test_write_all(void)
{
  g_autoptr(GError) error = NULL;
  int p[2];
  g_assert_cmpint(pipe(p), ==, 0);
  g_assert_true(ferry_write_all(p[1], "hello", 5, &error));
  char buf[8];
  g_assert_cmpint(read(p[0], buf, sizeof(buf)), ==, 5);
  close(p[0]);
  close(p[1]);
  g_assert_false(ferry_write_all(p[1], "x", 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT); /* EBADF */
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/fd/auto-close", test_auto_close);
  g_test_add_func("/fd/flags", test_flags);
  g_test_add_func("/fd/send-and-receive-fd", test_send_and_receive_fd);
  g_test_add_func("/fd/receive-without-fd", test_receive_without_fd);
  g_test_add_func("/fd/extra-fds-closed", test_extra_fds_closed);
  g_test_add_func("/fd/send-argument-errors", test_send_argument_errors);
  g_test_add_func("/fd/write-all", test_write_all);
  return g_test_run();
}
