//! The only `unsafe` in Castwork: fields ffmpeg-next has no setter for, and the log
//! callback that collects a decoder's error messages.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ffmpeg_next::codec;
use ffmpeg_next::ffi;
use ffmpeg_next::format::stream::StreamMut;

/// Clears a copied stream's codec tag: tags are container-specific (`avc1` in MP4 means
/// nothing to Matroska, which refuses unknown tags), and the muxer picks its own.
pub(crate) fn clear_codec_tag(stream: &mut StreamMut<'_>) {
    // SAFETY: `parameters()` returns the stream's own AVCodecParameters, owned by the output
    // context that `stream` borrows mutably, so the pointer is valid and unaliased here;
    // `codec_tag` is a plain integer field.
    unsafe {
        (*stream.parameters().as_mut_ptr()).codec_tag = 0;
    }
}

/// Error lines FFmpeg logged for one codec context; for a decoder on a device, whether
/// FFmpeg's hardware decoder refused the stream, and whether it said the stream is beyond
/// what the hardware decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) lines: u64,
    pub(crate) first: Option<String>,
    pub(crate) hw_refused: bool,
    pub(crate) hw_unsupported: bool,
}

/// What FFmpeg's NVDEC setup logs when a stream is beyond what the hardware decodes (its
/// capability check: profile, chroma format, sizes), as opposed to a device that fails.
const HW_UNSUPPORTED: [&str; 5] = [
    "lacking required capabilities",
    "not within range",
    "exceeds maximum",
    "Unsupported chroma format",
    "Unsupported codec",
];

/// Decoders whose error lines are collected, by the tag in their context's `opaque`.
static CAPTURES: Mutex<BTreeMap<usize, Logged>> = Mutex::new(BTreeMap::new());
static NEXT_TAG: AtomicUsize = AtomicUsize::new(1);

/// Collects the error lines FFmpeg logs for a codec context until dropped.
pub(crate) struct LogCapture(usize);

impl LogCapture {
    /// What was logged so far.
    pub(crate) fn logged(&self) -> Logged {
        captures().get(&self.0).cloned().unwrap_or_default()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        captures().remove(&self.0);
    }
}

/// Notes that the hardware decoder of codec context `ctx` (a tagged one) refused its stream:
/// FFmpeg asked for a picture format again, without the hardware one.
///
/// # Safety
/// `ctx` is the context FFmpeg passed to its `get_format` callback.
pub(crate) unsafe fn note_hw_refused(ctx: *const ffi::AVCodecContext) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: a valid context (above); `opaque` holds the tag, a plain number.
    let tag = unsafe { (*ctx).opaque } as usize;
    if let Some(c) = captures().get_mut(&tag) {
        c.hw_refused = true;
    }
}

fn captures() -> std::sync::MutexGuard<'static, BTreeMap<usize, Logged>> {
    CAPTURES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tags a codec context (before it is opened) so that the error lines FFmpeg logs for it
/// are collected. The tag is a number in `opaque`, never dereferenced; frame threads'
/// copies of the context share it.
pub(crate) fn capture_errors(ctx: &mut codec::context::Context) -> LogCapture {
    let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
    captures().insert(tag, Logged::default());
    // SAFETY: `as_mut_ptr()` is the context `ctx` owns and borrows mutably; `opaque` is a
    // plain pointer-sized field that FFmpeg never reads for a decoder without callbacks.
    unsafe {
        (*ctx.as_mut_ptr()).opaque = tag as *mut c_void;
    }
    LogCapture(tag)
}

/// Stops collecting the error lines of a codec context tagged by [`capture_errors`] (an
/// encoder whose opening was watched): FFmpeg's logger prints them again.
pub(crate) fn untag(ctx: &mut codec::context::Context) {
    // SAFETY: as in `capture_errors`.
    unsafe {
        (*ctx.as_mut_ptr()).opaque = std::ptr::null_mut();
    }
}

/// Installs the log callback: error lines of tagged codec contexts are collected, and
/// every other message goes to FFmpeg's own logger as before.
pub(crate) fn install_log_callback() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `log_callback` has the signature FFmpeg expects and is safe to call from any
    // thread at any time.
    unsafe {
        ffi::av_log_set_callback(Some(log_callback));
    }
}

/// The tag of a codec context FFmpeg logs for, when `avcl` is one and is tagged.
///
/// # Safety
/// `avcl` is null or the `avcl` argument of an FFmpeg log call: a struct that starts with
/// an `AVClass` pointer.
#[cfg(target_arch = "x86_64")]
unsafe fn codec_context_tag(avcl: *mut c_void) -> Option<usize> {
    if avcl.is_null() {
        return None;
    }
    // SAFETY: every struct FFmpeg logs for starts with its `const AVClass *` (see above).
    let class = unsafe { *(avcl as *const *const ffi::AVClass) };
    // SAFETY: a plain getter of a static.
    let codec_class = unsafe { ffi::avcodec_get_class() };
    if class != codec_class {
        return None;
    }
    // SAFETY: a struct whose class is avcodec's is an `AVCodecContext`.
    let tag = unsafe { (*(avcl as *const ffi::AVCodecContext)).opaque } as usize;
    (tag != 0).then_some(tag)
}

#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn log_callback(
    avcl: *mut c_void,
    level: c_int,
    fmt: *const c_char,
    vl: *mut ffi::__va_list_tag,
) {
    // SAFETY: `avcl` is this log call's context.
    let tag = (level <= ffi::AV_LOG_ERROR)
        .then(|| unsafe { codec_context_tag(avcl) })
        .flatten();
    let Some(tag) = tag else {
        // SAFETY: the arguments of this log call, passed on unchanged and unused here;
        // FFmpeg's own logger prints what its log level lets through.
        unsafe { ffi::av_log_default_callback(avcl, level, fmt, vl) };
        return;
    };
    let mut line = [0 as c_char; 512];
    let mut print_prefix: c_int = 0;
    // SAFETY: formats this call's message (its format and arguments, used once) into
    // `line`, of the size given; the result is NUL-terminated.
    unsafe {
        ffi::av_log_format_line2(
            avcl,
            level,
            fmt,
            vl,
            line.as_mut_ptr(),
            line.len() as c_int,
            &mut print_prefix,
        );
    }
    // SAFETY: `line` is NUL-terminated (zeroed, and FFmpeg terminates what it writes).
    let text = unsafe { CStr::from_ptr(line.as_ptr()) }
        .to_string_lossy()
        .trim()
        .to_string();
    if let Some(c) = captures().get_mut(&tag) {
        c.lines += 1;
        c.hw_unsupported |= HW_UNSUPPORTED.iter().any(|m| text.contains(m));
        if c.first.is_none() && !text.is_empty() {
            c.first = Some(text);
        }
    }
}
