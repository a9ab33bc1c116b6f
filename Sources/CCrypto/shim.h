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

/* Incremental SHA-256: begin returns a context (NULL on failure), update and end return 1 on success (end writes
   32 bytes to out); free releases the context, also after end. */
static inline EVP_MD_CTX *vpd_sha256_begin(void) {
    EVP_MD_CTX *context = EVP_MD_CTX_new();
    if (context != NULL && EVP_DigestInit_ex(context, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(context);
        return NULL;
    }
    return context;
}

static inline int vpd_sha256_update(EVP_MD_CTX *context, const void *data, size_t length) {
    return EVP_DigestUpdate(context, data, length);
}

static inline int vpd_sha256_end(EVP_MD_CTX *context, unsigned char *out) {
    unsigned int out_length = 0;
    return EVP_DigestFinal_ex(context, out, &out_length) == 1 && out_length == 32;
}

static inline void vpd_sha256_free(EVP_MD_CTX *context) { EVP_MD_CTX_free(context); }

#endif
