#ifndef VIEWPORTD_CVNC_SHIM_H
#define VIEWPORTD_CVNC_SHIM_H
// libvncserver (the VNC bridge). Macros and mutable globals Swift cannot use become small inline functions here.
#include <rfb/rfb.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static void vpd_rfb_discard_log(const char *format, ...) { (void)format; }

/// Silences libvncserver's logging (it prints to stderr); failures reach Swift as results.
static inline void vpd_rfb_quiet(void) {
    rfbLog = vpd_rfb_discard_log;
    rfbErr = vpd_rfb_discard_log;
}

/// How long libvncserver waits for a client's bytes in the middle of a message (and for a client to take its
/// updates) before it drops the client. Its default, 20 s, lets a client that sends 11 of a message's 12 bytes
/// stall its screen's thread, and every other client of the screen, for that long.
static inline void vpd_rfb_set_max_client_wait(int milliseconds) { rfbMaxClientWait = milliseconds; }

static inline rfbBool vpd_rfb_true(void) { return TRUE; }
static inline rfbBool vpd_rfb_false(void) { return FALSE; }

/// rfbInitServer is a macro.
static inline void vpd_rfb_init_server(rfbScreenInfoPtr screen) { rfbInitServer(screen); }

/// True when the client finished the handshake (version, security, authentication, ClientInit).
static inline int vpd_rfb_client_is_normal(rfbClientPtr cl) { return cl->state == RFB_NORMAL; }

/// For a client whose viewer viewportd authenticated itself (the noVNC relay's): RFB 3.8 with the version and
/// security handshake done, so the next message the screen reads is ClientInit. Offering that client security type
/// None instead would offer it to every client: libvncserver's list of security handlers is process-wide and
/// rfbSendSecurityTypeList rewrites it for each client, while rfbProcessClientSecurityType accepts any type on it.
static inline void vpd_rfb_client_skip_security(rfbClientPtr cl) {
    cl->protocolMajorVersion = 3;
    cl->protocolMinorVersion = 8;
    cl->state = RFB_INITIALISATION;
}

/// A non-blocking, close-on-exec IPv4 TCP socket listening on `host`:`port`, or -1. The bridge accepts on it
/// itself (with poll), so libvncserver never FD_SETs a descriptor it did not get from the bridge.
static inline int vpd_listen_tcp4(in_addr_t host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in address;
    memset(&address, 0, sizeof(address));
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)port);
    address.sin_addr.s_addr = host;
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 || listen(fd, 128) < 0
        || fcntl(fd, F_SETFL, O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/// Accepts one connection of `listener` (non-blocking): its descriptor (close-on-exec) and its numeric address in
/// `host` (at least 16 bytes); -1 when none is waiting (or on error, see errno).
static inline int vpd_accept4(int listener, char *host) {
    struct sockaddr_in address;
    socklen_t length = sizeof(address);
    int fd = accept(listener, (struct sockaddr *)&address, &length);
    if (fd < 0) return -1;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (address.sin_family != AF_INET || !inet_ntop(AF_INET, &address.sin_addr, host, 16)) strcpy(host, "?");
    return fd;
}

// Exported by libvncserver (vncauth.c) but not declared in its public headers.
extern void rfbEncryptBytes(unsigned char *bytes, char *passwd);

/// The VNC authentication response to `challenge` (16 bytes, changed in place) for `password` (8 significant bytes).
static inline void vpd_rfb_encrypt(unsigned char *challenge, char *password) { rfbEncryptBytes(challenge, password); }

#endif
