#ifndef VIEWPORTD_CCURL_SHIM_H
#define VIEWPORTD_CCURL_SHIM_H

#include <curl/curl.h>

/* curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call: typed wrappers, one per argument
   type. */
typedef size_t (*vpd_curl_data_callback)(char *buffer, size_t size, size_t count, void *user);

static inline CURLcode vpd_curl_setopt_long(CURL *curl, CURLoption option, long value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode vpd_curl_setopt_offset(CURL *curl, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode vpd_curl_setopt_string(CURL *curl, CURLoption option, const char *value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode vpd_curl_setopt_pointer(CURL *curl, CURLoption option, void *value) {
    return curl_easy_setopt(curl, option, value);
}

static inline CURLcode vpd_curl_setopt_headers(CURL *curl, struct curl_slist *headers) {
    return curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
}

/* For CURLOPT_READFUNCTION, CURLOPT_WRITEFUNCTION and CURLOPT_HEADERFUNCTION, which share one signature. */
static inline CURLcode vpd_curl_setopt_callback(CURL *curl, CURLoption option, vpd_curl_data_callback callback) {
    return curl_easy_setopt(curl, option, callback);
}

static inline CURLcode vpd_curl_response_code(CURL *curl, long *code) {
    return curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, code);
}

/* What a read callback returns to abort the transfer (a macro Swift does not import). */
static inline size_t vpd_curl_read_abort(void) { return CURL_READFUNC_ABORT; }

#endif
