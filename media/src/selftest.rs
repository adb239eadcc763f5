//! The capability test a worker runs on each device at start (as go-livepeer's transcoder
//! does): a short clip made here, in each codec and size asked about, transcoded through the
//! same path jobs take. What passes is what the worker advertises.

use std::path::{Path, PathBuf};

use castwork_protocol::{H264Profile, Rational as Fps, Rung, SourceMetadata};
use ffmpeg_next::{codec, encoder, format, frame, Dictionary, Packet, Rational};

use crate::transcode::{transcode_segment_until, RenditionFile, TranscodeOptions};
use crate::{internal, MediaError};

/// Writes a `frames`-long `width` x `height` clip at 25 fps in `codec` ("h264" with
/// libx264, "hevc" with libx265) to `path` as MPEG-TS: a moving gradient, so every picture
/// differs.
pub fn write_test_clip(
    path: &Path,
    codec_name: &str,
    width: u32,
    height: u32,
    frames: u32,
) -> Result<(), MediaError> {
    crate::init();
    let encoder_name = match codec_name {
        "h264" => "libx264",
        "hevc" => "libx265",
        other => return Err(MediaError::Internal(format!("no test clip in {other}"))),
    };
    let codec = encoder::find_by_name(encoder_name)
        .ok_or_else(|| MediaError::Internal(format!("FFmpeg has no {encoder_name} encoder")))?;
    let tb = Rational::new(1, 25);
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| internal("test clip encoder", e))?;
    enc.set_width(width);
    enc.set_height(height);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(tb);
    enc.set_frame_rate(Some(Rational::new(25, 1)));
    enc.set_gop(frames.max(1));
    enc.set_max_b_frames(0);
    let mut opts = Dictionary::new();
    opts.set("preset", "ultrafast");
    if encoder_name == "libx265" {
        opts.set("x265-params", "log-level=error");
    }
    let mut enc = enc
        .open_as_with(codec, opts)
        .map_err(|e| internal("opening the test clip encoder", e))?;
    let mut octx = format::output_as(path, "mpegts").map_err(|e| internal("test clip", e))?;
    {
        let mut s = octx
            .add_stream(codec)
            .map_err(|e| internal("test clip stream", e))?;
        s.set_parameters(&enc);
    }
    octx.write_header()
        .map_err(|e| internal("test clip header", e))?;
    let out_tb = octx.stream(0).map_or(tb, |s| s.time_base());
    let mut picture = frame::Video::new(format::Pixel::YUV420P, width, height);
    let mut packet = Packet::empty();
    let mut write = |enc: &mut encoder::Video, octx: &mut format::context::Output| {
        while enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(tb, out_tb);
            packet
                .write_interleaved(octx)
                .map_err(|e| internal("writing the test clip", e))?;
        }
        Ok::<(), MediaError>(())
    };
    for n in 0..frames {
        for plane in 0..3 {
            let stride = picture.stride(plane);
            let data = picture.data_mut(plane);
            for (i, byte) in data.iter_mut().enumerate() {
                let (x, y) = (i % stride, i / stride);
                *byte = ((x + y + n as usize * 4 + plane * 40) % 200 + 16) as u8;
            }
        }
        picture.set_pts(Some(i64::from(n)));
        enc.send_frame(&picture)
            .map_err(|e| internal("encoding the test clip", e))?;
        write(&mut enc, &mut octx)?;
    }
    enc.send_eof()
        .map_err(|e| internal("encoding the test clip", e))?;
    write(&mut enc, &mut octx)?;
    octx.write_trailer()
        .map_err(|e| internal("finishing the test clip", e))
}

/// A rung for the test: `width` x `height` at 25 fps, IDR at the start only.
fn test_rung(name: &str, width: u32, height: u32) -> Rung {
    Rung {
        name: name.into(),
        width,
        height,
        bitrate: 1_000_000,
        max_fps: Fps::new(25, 1),
        drop_to_fps: None,
        gop_secs: None,
        profile: H264Profile::Main,
    }
}

/// Transcodes a short `codec_name` clip of `width` x `height` into two rungs in `dir`, with
/// `opts` (a GPU target, or the CPU): the rungs' files when every picture came through.
pub fn transcode_test_clip(
    dir: &Path,
    codec_name: &str,
    width: u32,
    height: u32,
    opts: &TranscodeOptions,
) -> Result<Vec<RenditionFile>, MediaError> {
    const FRAMES: u32 = 10;
    let clip: PathBuf = dir.join(format!("selftest-{codec_name}-{width}x{height}.ts"));
    write_test_clip(&clip, codec_name, width, height, FRAMES)?;
    let mut meta = SourceMetadata::upright(width, height, 25);
    meta.video_codec = codec_name.into();
    meta.has_audio = false;
    let rungs = [
        test_rung("selftest-half", (width / 2) & !1, (height / 2) & !1),
        test_rung("selftest-small", 256, 144),
    ];
    let files = transcode_segment_until(&clip, &rungs, &meta, None, dir, opts)?;
    let _ = std::fs::remove_file(&clip);
    if let Some(short) = files.iter().find(|f| f.frames != u64::from(FRAMES)) {
        return Err(MediaError::Internal(format!(
            "the test clip's {} has {} pictures of {FRAMES}",
            short.rung, short.frames
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_clip_transcodes_on_the_cpu_path() {
        let dir = tempfile::tempdir().unwrap();
        let files = transcode_test_clip(dir.path(), "h264", 640, 360, &TranscodeOptions::default())
            .unwrap();
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|f| f.frames == 10 && f.path.exists()));
        assert_eq!((files[0].width, files[0].height), (320, 180));
        // The HEVC clip of the device test, on the CPU path.
        let files = transcode_test_clip(dir.path(), "hevc", 640, 360, &TranscodeOptions::default())
            .unwrap();
        assert!(files.iter().all(|f| f.frames == 10));
    }
}
