#ifndef VIEWPORTD_CWEBSOCKETS_SHIM_H
#define VIEWPORTD_CWEBSOCKETS_SHIM_H

#include <libwebsockets.h>

/* LWS_PRE is a macro Swift cannot import: the headroom lws_write needs before a payload. */
static inline size_t vpd_lws_pre(void) { return LWS_PRE; }

/* lws_SHA1 is a macro for OpenSSL's SHA1 (libcrypto): the WebSocket client checks Sec-WebSocket-Accept. */
static inline void vpd_sha1(const unsigned char *data, size_t count, unsigned char *digest) {
    lws_SHA1(data, count, digest);
}

/* Only errors and warnings reach stderr; lws notices are too chatty for a daemon log. */
static inline void vpd_lws_quiet_logs(void) { lws_set_log_level(LLL_ERR | LLL_WARN, NULL); }

#endif
