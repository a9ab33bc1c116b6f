#ifndef VIEWPORTD_CSYSTEMD_SHIM_H
#define VIEWPORTD_CSYSTEMD_SHIM_H
// libsystemd: the service manager's notify protocol (READY=1, WATCHDOG=1, STOPPING=1) and journal detection.
#include <systemd/sd-daemon.h>
#endif
