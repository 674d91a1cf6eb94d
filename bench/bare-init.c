/* The trivial init of `make bench-boot`'s baseline: print one line on the serial
 * console and power off. Static, alone in its initramfs. */
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void)
{
  static const char line[] = "BARE-READY\n";
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  int fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
  if (fd >= 0 && write(fd, line, sizeof(line) - 1) < 0)
    return 1;
  sync();
  reboot(RB_POWER_OFF);
  for (;;)
    pause();
}
