#ifndef VIEWPORTD_CCRYPTO_SHIM_H
#define VIEWPORTD_CCRYPTO_SHIM_H

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/* One-shot HMAC-SHA256; out must hold 32 bytes. Returns 1 on success. */
static inline int vpd_hmac_sha256(const void *key, int key_length, const unsigned char *data, size_t length,
                                  unsigned char *out) {
    unsigned int out_length = 0;
    return HMAC(EVP_sha256(), key, key_length, data, length, out, &out_length) != NULL && out_length == 32;
}

/* One-shot SHA-256; out must hold 32 bytes. Returns 1 on success. */
static inline int vpd_sha256(const void *data, size_t length, unsigned char *out) {
    return EVP_Digest(data, length, out, NULL, EVP_sha256(), NULL);
}

/* Compares in time that depends only on length. Returns 0 when equal. */
static inline int vpd_constant_time_compare(const void *a, const void *b, size_t length) {
    return CRYPTO_memcmp(a, b, length);
}

#endif
