#ifndef VIEWPORTD_CVNC_SHIM_H
#define VIEWPORTD_CVNC_SHIM_H
// libvncserver (the VNC bridge). Macros and mutable globals Swift cannot use become small inline functions here.
#include <rfb/rfb.h>

static void vpd_rfb_discard_log(const char *format, ...) { (void)format; }

/// Silences libvncserver's logging (it prints to stderr); failures reach Swift as results.
static inline void vpd_rfb_quiet(void) {
    rfbLog = vpd_rfb_discard_log;
    rfbErr = vpd_rfb_discard_log;
}

static inline rfbBool vpd_rfb_true(void) { return TRUE; }
static inline rfbBool vpd_rfb_false(void) { return FALSE; }

/// rfbInitServer is a macro.
static inline void vpd_rfb_init_server(rfbScreenInfoPtr screen) { rfbInitServer(screen); }

/// True when the screen's listening socket is open (rfbInitServer only logs a failed bind).
static inline int vpd_rfb_is_listening(rfbScreenInfoPtr screen) { return screen->listenSock != RFB_INVALID_SOCKET; }

// Exported by libvncserver (vncauth.c) but not declared in its public headers.
extern void rfbEncryptBytes(unsigned char *bytes, char *passwd);

/// The VNC authentication response to `challenge` (16 bytes, changed in place) for `password` (8 significant bytes).
static inline void vpd_rfb_encrypt(unsigned char *challenge, char *password) { rfbEncryptBytes(challenge, password); }

#endif
