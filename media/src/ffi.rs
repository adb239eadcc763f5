//! The only `unsafe` in Castwork: two fields ffmpeg-next has no setter for.
#![allow(unsafe_code)]

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
