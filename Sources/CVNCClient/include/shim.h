#ifndef VIEWPORTD_CVNCCLIENT_SHIM_H
#define VIEWPORTD_CVNCCLIENT_SHIM_H
// libvncclient (the RFB source). Its log functions are mutable globals Swift cannot set, and its errors
// (a wrong password) are only logged: the shim keeps the last error of the calling thread.
#include <rfb/rfbclient.h>

/// Silences libvncclient and keeps its last message per thread instead (after a failed call, the reason).
void vpd_rfbclient_quiet(void);

/// The last message libvncclient gave on this thread ("" if none), then forgets it. Valid until the next call
/// on the same thread.
const char *vpd_rfbclient_take_error(void);

static inline rfbBool vpd_rfbclient_true(void) { return TRUE; }
static inline rfbBool vpd_rfbclient_false(void) { return FALSE; }

/// The tag under which the Swift owner is stored with rfbClientSetClientData.
void *vpd_rfbclient_tag(void);

#endif
