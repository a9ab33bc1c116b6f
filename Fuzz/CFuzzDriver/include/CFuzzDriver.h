#ifndef VIEWPORTD_CFUZZDRIVER_H
#define VIEWPORTD_CFUZZDRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver (compiler-rt, linked by -sanitize=fuzzer). SwiftPM on Linux links an executable with
// `main` defined as its module's renamed entry point, so libFuzzer's own `main` is never linked in: each target's
// main.swift calls the driver itself.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
