#ifndef VIEWPORTD_CFFMPEG_SHIM_H
#define VIEWPORTD_CFFMPEG_SHIM_H
// libavcodec / libavformat / libswscale / libavutil (ffmpeg 5.1). Function-like macros that Swift cannot
// import become static inline functions below.
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avutil.h>
#include <libavutil/dict.h>
#include <libavutil/error.h>
#include <libavutil/imgutils.h>
#include <libavutil/mathematics.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>

/// AVERROR(EAGAIN): the codec wants the other direction first.
static inline int vpd_averror_eagain(void) { return AVERROR(EAGAIN); }
/// AVERROR_EOF.
static inline int vpd_averror_eof(void) { return AVERROR_EOF; }
/// AV_NOPTS_VALUE: a timestamp that is not set.
static inline int64_t vpd_nopts_value(void) { return AV_NOPTS_VALUE; }
#endif
