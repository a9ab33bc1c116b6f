#ifndef VIEWPORTD_CTURBOJPEG_SHIM_H
#define VIEWPORTD_CTURBOJPEG_SHIM_H
// libturbojpeg: JPEG decoding straight to YUV planes (no colour conversion) for the recorder.
#include <turbojpeg.h>
#endif
