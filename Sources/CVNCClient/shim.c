#include "shim.h"
#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[256];
static _Thread_local char taken[256];
static char tag;

static void keep_error(const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(last_error, sizeof last_error, format, arguments);
    va_end(arguments);
}

void vpd_rfbclient_quiet(void) {
    // The reason a server gives for refusing ("Authentication failure") comes through the log function.
    rfbClientLog = keep_error;
    rfbClientErr = keep_error;
}

const char *vpd_rfbclient_take_error(void) {
    snprintf(taken, sizeof taken, "%s", last_error);
    last_error[0] = 0;
    return taken;
}

void *vpd_rfbclient_tag(void) { return &tag; }
