//! NVIDIA devices through FFmpeg's CUDA hardware context: opening a device, decoding onto it
//! (NVDEC), and handing its frames to a filter graph (`scale_cuda`). ffmpeg-next has no API
//! for these, so this is the second place with `unsafe` (after [`crate::ffi`]), each block
//! with why it holds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr;

use ffmpeg_next::ffi::{
    av_buffer_ref, av_buffer_unref, av_buffersrc_parameters_alloc, av_buffersrc_parameters_set,
    av_frame_ref, av_free, av_hwdevice_ctx_create, AVBufferRef, AVCodecContext, AVHWDeviceType,
    AVPixelFormat,
};
use ffmpeg_next::{codec, filter, frame};

use crate::clean_start::DecodeErrors;
use crate::{internal, MediaError};

/// One NVIDIA device, opened once and shared by every job that runs on it (a CUDA context
/// costs more to make than a short segment takes to decode).
#[derive(Debug)]
pub struct CudaDevice {
    index: u32,
    /// The `AVHWDeviceContext` buffer; this struct holds one reference.
    ctx: *mut AVBufferRef,
}

// SAFETY: an AVHWDeviceContext for CUDA is safe to use from several threads once created
// (FFmpeg's own tools share one between decoder, filter and encoder threads); this struct
// only hands out new references to it, made with av_buffer_ref, which is thread-safe.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Opens device `index` (the CUDA device order). Fails when there is no NVIDIA driver,
    /// no such device, or FFmpeg was built without CUDA.
    pub fn open(index: u32) -> Result<CudaDevice, MediaError> {
        crate::init();
        let name = CString::new(index.to_string()).expect("digits hold no NUL");
        let mut ctx: *mut AVBufferRef = ptr::null_mut();
        // SAFETY: `ctx` is a valid out-pointer; `name` outlives the call; no options.
        let r = unsafe {
            av_hwdevice_ctx_create(
                &mut ctx,
                AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA,
                name.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        if r < 0 || ctx.is_null() {
            return Err(internal(
                &format!("opening CUDA device {index}"),
                ffmpeg_next::Error::from(r),
            ));
        }
        Ok(CudaDevice { index, ctx })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Makes a decoder context (not yet opened) decode onto this device: NVDEC where the
    /// codec and profile allow it; where they do not, the decoder fails to open or to decode
    /// and the job runs on the CPU instead (see [`crate::transcode`]).
    pub(crate) fn attach_decoder(
        &self,
        ctx: &mut codec::context::Context,
    ) -> Result<(), MediaError> {
        // SAFETY: the context is not opened yet, so its fields may be set; it takes its own
        // reference to the device (released by avcodec_free_context); `get_format` is a
        // plain function with the signature FFmpeg calls.
        unsafe {
            let c: *mut AVCodecContext = ctx.as_mut_ptr();
            let device = av_buffer_ref(self.ctx);
            if device.is_null() {
                return Err(MediaError::Internal("out of memory".into()));
            }
            (*c).hw_device_ctx = device;
            (*c).get_format = Some(cuda_format);
            // Surfaces held beyond the decoder's own: the picture fed one late, and a held
            // picture's reference. NVDEC takes 32 surfaces at most, the decoder's
            // references and reordering included, so no more than needed.
            (*c).extra_hw_frames = 3;
        }
        Ok(())
    }

    /// Makes an encoder context (not yet opened) work in this device's CUDA context, which
    /// `h264_nvenc` otherwise makes anew for every rendition.
    pub(crate) fn attach_encoder(
        &self,
        ctx: &mut codec::context::Context,
    ) -> Result<(), MediaError> {
        // SAFETY: the context is not opened yet; it takes its own reference to the device,
        // released by avcodec_free_context.
        unsafe {
            let device = av_buffer_ref(self.ctx);
            if device.is_null() {
                return Err(MediaError::Internal("out of memory".into()));
            }
            (*ctx.as_mut_ptr()).hw_device_ctx = device;
        }
        Ok(())
    }

    /// The device's index as the `gpu` option of `h264_nvenc` takes it.
    pub fn nvenc_gpu(&self) -> String {
        self.index.to_string()
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // SAFETY: `ctx` is the one reference this struct owns.
        unsafe { av_buffer_unref(&mut self.ctx) };
    }
}

/// Whether FFmpeg offered CUDA frames among `offered`: the format a decoder set up by
/// [`CudaDevice::attach_decoder`] picks.
pub(crate) fn pick_cuda(offered: &[AVPixelFormat]) -> Option<AVPixelFormat> {
    offered
        .iter()
        .copied()
        .find(|f| *f == AVPixelFormat::AV_PIX_FMT_CUDA)
}

/// FFmpeg's `get_format` callback: CUDA frames, or none (the decode fails, and the job runs
/// on the CPU) when the decoder cannot produce them for this stream. FFmpeg asks again
/// without CUDA when NVDEC fails to set up for the stream: that is noted, and
/// [`on_device`] tells whose fault it was.
unsafe extern "C" fn cuda_format(
    ctx: *mut AVCodecContext,
    formats: *const AVPixelFormat,
) -> AVPixelFormat {
    let mut offered = Vec::new();
    // SAFETY: FFmpeg passes a list terminated by AV_PIX_FMT_NONE.
    unsafe {
        let mut p = formats;
        while !p.is_null() && *p != AVPixelFormat::AV_PIX_FMT_NONE {
            offered.push(*p);
            p = p.add(1);
        }
    }
    let picked = pick_cuda(&offered);
    if picked.is_none() {
        // SAFETY: `ctx` is the context FFmpeg passed to this callback.
        unsafe { crate::ffi::note_hw_refused(ctx) };
    }
    picked.unwrap_or(AVPixelFormat::AV_PIX_FMT_NONE)
}

/// On the GPU path, what says the device is not decoding this stream: given a `picture`,
/// that it came out in system memory (a decoder with no NVDEC path); without one, that
/// NVDEC refused the stream (FFmpeg asked for a picture format again, without CUDA). A
/// stream beyond what NVDEC decodes (its capability check said so), or one no NVDEC path
/// takes, is the CPU's and no fault of the device; NVDEC failing to set up for another
/// reason is a device error. Nothing to check on the CPU path (`on_gpu` false).
///
/// The picture check is a comparison; the refusal's is a look at the decoder's log, once
/// per packet.
pub(crate) fn on_device(
    on_gpu: bool,
    errors: &DecodeErrors,
    picture: Option<&frame::Video>,
) -> Result<(), MediaError> {
    if !on_gpu {
        return Ok(());
    }
    if let Some(p) = picture {
        if p.format() != ffmpeg_next::format::Pixel::CUDA {
            return Err(MediaError::NotForGpu(
                "the decoder gave pictures in system memory: FFmpeg has no NVDEC path for \
                 this stream"
                    .into(),
            ));
        }
        return Ok(());
    }
    match errors.hw_refused() {
        Some((true, why)) => Err(MediaError::NotForGpu(format!(
            "NVDEC does not decode this stream: {}",
            why.unwrap_or_default()
        ))),
        // Anything else that stops NVDEC setting up (out of memory, a lost context, no
        // libnvcuvid, too many surfaces) is the device's or the host's.
        Some((false, why)) => Err(MediaError::Internal(format!(
            "NVDEC could not set up a decoder: {}",
            why.unwrap_or_else(|| "no reason given".into())
        ))),
        None => Ok(()),
    }
}

/// Whether NVDEC and `scale_cuda` take a stream of codec `id`, pixel format `format` and
/// colour range `full_range`: 4:2:0 pictures (8-bit; 10-bit for HEVC and VP9) of the codecs
/// NVIDIA's decoders have and FFmpeg decodes with them, in the video range (`scale_cuda`
/// does not convert ranges, which the CPU path does). AV1 is not among them: FFmpeg's
/// default AV1 decoder, libdav1d, has no NVDEC path.
pub fn nvdec_can(
    id: codec::Id,
    format: ffmpeg_next::format::Pixel,
    full_range: bool,
) -> Result<(), String> {
    use ffmpeg_next::format::Pixel;
    let codec_ok = matches!(
        id,
        codec::Id::H264
            | codec::Id::HEVC
            | codec::Id::VP9
            | codec::Id::VP8
            | codec::Id::MPEG2VIDEO
            | codec::Id::MPEG4
    );
    if !codec_ok {
        return Err(format!("NVDEC has no {id:?} decoder"));
    }
    let deep = matches!(id, codec::Id::HEVC | codec::Id::VP9);
    let format_ok = match format {
        Pixel::YUV420P | Pixel::NV12 => true,
        Pixel::YUV420P10LE | Pixel::P010LE => deep,
        _ => false,
    };
    if !format_ok {
        return Err(format!("NVDEC does not decode {id:?} in {format:?}"));
    }
    if full_range || format == Pixel::YUVJ420P {
        return Err("a full-range picture (scale_cuda keeps the range)".into());
    }
    Ok(())
}

/// The codec, pixel format and whether the range is full, of a stream's parameters.
pub(crate) fn stream_format(
    params: &codec::Parameters,
) -> (codec::Id, ffmpeg_next::format::Pixel, bool) {
    // SAFETY: `params` wraps a valid AVCodecParameters; these are plain fields, and the
    // format is an AVPixelFormat value for a video stream (checked against the enum's range
    // by converting through FFmpeg's own list of formats).
    let (format, range) = unsafe {
        let p = params.as_ptr();
        ((*p).format, (*p).color_range)
    };
    let pixel = ffmpeg_next::format::Pixel::from(pixel_of(format));
    (
        params.id(),
        pixel,
        range == ffmpeg_next::ffi::AVColorRange::AVCOL_RANGE_JPEG,
    )
}

/// An `AVPixelFormat` from the integer AVCodecParameters keeps; `NONE` for anything outside
/// the enum's range.
fn pixel_of(format: i32) -> AVPixelFormat {
    let known = -1..AVPixelFormat::AV_PIX_FMT_NB as i32;
    if !known.contains(&format) {
        return AVPixelFormat::AV_PIX_FMT_NONE;
    }
    // SAFETY: AVPixelFormat's members are every value from NONE (-1) up to NB, without gaps,
    // so a value in that range is a member.
    unsafe { std::mem::transmute::<i32, AVPixelFormat>(format) }
}

/// Tells a graph's buffer source that its frames live on the device of `first`'s frames
/// context (what `scale_cuda` reads its device from).
pub(crate) fn hw_source(
    source: &mut filter::Context,
    first: &frame::Video,
) -> Result<(), MediaError> {
    // SAFETY: `first` is a decoded frame whose `hw_frames_ctx` is valid for as long as the
    // frame lives; av_buffersrc_parameters_set takes its own reference to it; the params
    // struct is allocated by FFmpeg and freed here with av_free.
    unsafe {
        let frames = (*first.as_ptr()).hw_frames_ctx;
        if frames.is_null() {
            return Err(MediaError::Internal(
                "a CUDA frame without a frames context".into(),
            ));
        }
        let par = av_buffersrc_parameters_alloc();
        if par.is_null() {
            return Err(MediaError::Internal("out of memory".into()));
        }
        (*par).format = AVPixelFormat::AV_PIX_FMT_CUDA as i32;
        (*par).hw_frames_ctx = frames;
        let r = av_buffersrc_parameters_set(source.as_mut_ptr(), par);
        av_free(par.cast());
        if r < 0 {
            return Err(internal(
                "hardware frames for the filter graph",
                ffmpeg_next::Error::from(r),
            ));
        }
    }
    Ok(())
}

/// A new reference to `f`'s picture (for a hardware frame, the same surface; copying one
/// the way software frames are copied is not possible).
pub(crate) fn frame_ref(f: &frame::Video) -> Result<frame::Video, MediaError> {
    let mut out = frame::Video::empty();
    // SAFETY: `out` is a freshly allocated, empty frame; `f` is a valid frame.
    let r = unsafe { av_frame_ref(out.as_mut_ptr(), f.as_ptr()) };
    if r < 0 {
        return Err(internal("referencing a frame", ffmpeg_next::Error::from(r)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_pick_cuda_frames_only_when_offered() {
        use AVPixelFormat::*;
        assert_eq!(
            pick_cuda(&[AV_PIX_FMT_CUDA, AV_PIX_FMT_NV12]),
            Some(AV_PIX_FMT_CUDA)
        );
        assert_eq!(pick_cuda(&[AV_PIX_FMT_YUV420P]), None);
    }

    /// A decoder for the stream of a short clip, with its error collector.
    fn decoder_of_a_clip() -> (ffmpeg_next::decoder::Video, DecodeErrors) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ts");
        crate::selftest::write_test_clip(&path, "h264", 320, 180, 5).unwrap();
        let ictx = ffmpeg_next::format::input(&path).unwrap();
        let params = ictx
            .streams()
            .best(ffmpeg_next::media::Type::Video)
            .unwrap()
            .parameters();
        crate::clean_start::strict_decoder(params, 1).unwrap()
    }

    /// FFmpeg's `get_format` call, as a decoder on a device makes it, offering `formats`.
    fn ask_format(
        dec: &mut ffmpeg_next::decoder::Video,
        formats: &[AVPixelFormat],
    ) -> AVPixelFormat {
        let mut list = formats.to_vec();
        list.push(AVPixelFormat::AV_PIX_FMT_NONE);
        // SAFETY: a valid context and a NONE-terminated list, as FFmpeg passes them.
        unsafe { cuda_format(dec.as_mut_ptr(), list.as_ptr()) }
    }

    #[test]
    fn a_stream_nvdec_does_not_decode_is_the_cpus_and_a_failing_setup_the_devices() {
        use AVPixelFormat::*;
        let (mut dec, errors) = decoder_of_a_clip();
        assert_eq!(
            ask_format(&mut dec, &[AV_PIX_FMT_CUDA, AV_PIX_FMT_NV12]),
            AV_PIX_FMT_CUDA
        );
        assert!(on_device(true, &errors, None).is_ok());
        // A picture in system memory on the GPU path: the stream is the CPU's.
        let picture = frame::Video::new(ffmpeg_next::format::Pixel::YUV420P, 16, 16);
        let e = on_device(true, &errors, Some(&picture)).unwrap_err();
        assert!(matches!(e, MediaError::NotForGpu(_)), "{e}");
        assert!(on_device(false, &errors, Some(&picture)).is_ok());

        // NVDEC fails to set up, saying nothing of the stream (out of memory, say): FFmpeg
        // asks again without CUDA, and the device is at fault.
        assert_eq!(ask_format(&mut dec, &[AV_PIX_FMT_YUV420P]), AV_PIX_FMT_NONE);
        let e = on_device(true, &errors, None).unwrap_err();
        assert!(matches!(e, MediaError::Internal(_)), "{e}");
        assert!(e.to_string().contains("NVDEC could not set up"), "{e}");
        assert!(on_device(false, &errors, None).is_ok());

        // NVDEC's capability check refuses the stream, as FFmpeg logs it: the CPU's.
        let (mut dec, errors) = decoder_of_a_clip();
        // SAFETY: a valid context to log for, and a plain format string.
        unsafe {
            ffmpeg_next::ffi::av_log(
                dec.as_mut_ptr().cast(),
                ffmpeg_next::ffi::AV_LOG_ERROR,
                c"Hardware is lacking required capabilities\n".as_ptr(),
            );
        }
        assert_eq!(ask_format(&mut dec, &[AV_PIX_FMT_YUV420P]), AV_PIX_FMT_NONE);
        let e = on_device(true, &errors, None).unwrap_err();
        assert!(matches!(e, MediaError::NotForGpu(_)), "{e}");
        assert!(
            e.to_string().contains("lacking required capabilities"),
            "{e}"
        );
    }

    #[test]
    fn a_machine_without_the_driver_opens_no_device() {
        // The CI machines have no NVIDIA driver: opening fails with a message, no panic.
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return;
        }
        let e = CudaDevice::open(0).unwrap_err();
        assert!(e.to_string().contains("opening CUDA device 0"), "{e}");
    }

    #[test]
    fn a_software_frame_is_referenced_not_copied() {
        let mut f = frame::Video::new(ffmpeg_next::format::Pixel::YUV420P, 16, 16);
        f.data_mut(0).fill(7);
        let r = frame_ref(&f).unwrap();
        assert_eq!((r.width(), r.height(), r.data(0)[0]), (16, 16, 7));
    }
}
