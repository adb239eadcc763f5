//! One filter graph per segment: rotate once, split, and scale to every rung's size as
//! 8-bit 4:2:0 with square pixels. Frames decoded onto an NVIDIA device stay there to be
//! scaled (`scale_cuda`, which also converts to 8-bit 4:2:0), and each rung's pictures are
//! then downloaded for the encoder; rotation happens after the download, on pictures
//! already scaled down.

use ffmpeg_next::{filter, format, frame, util::error::EAGAIN, Error, Rational};

use crate::{internal, MediaError};

pub(crate) struct LadderGraph {
    graph: filter::Graph,
    outputs: usize,
}

/// The filter that turns a frame upright for a clockwise display rotation.
fn rotate_filter(rotation: u32) -> &'static str {
    match rotation {
        90 => "transpose=clock,",
        180 => "hflip,vflip,",
        270 => "transpose=cclock,",
        _ => "",
    }
}

/// The filter that turns a downloaded picture upright (no trailing comma).
fn rotate_after(rotation: u32) -> &'static str {
    match rotation {
        90 => ",transpose=clock",
        180 => ",hflip,vflip",
        270 => ",transpose=cclock",
        _ => "",
    }
}

/// The graph description for a rotation and a list of output sizes; `cuda` for frames on an
/// NVIDIA device.
fn describe(rotation: u32, sizes: &[(u32, u32)], cuda: bool) -> String {
    let scale = |(w, h): (u32, u32)| {
        if cuda {
            // Scaled before it is turned: a quarter turn swaps the sides.
            let (sw, sh) = if rotation % 180 == 90 { (h, w) } else { (w, h) };
            format!(
                "scale_cuda=w={sw}:h={sh}:interp_algo=bicubic:format=yuv420p,hwdownload,\
                 format=yuv420p{},setsar=1",
                rotate_after(rotation)
            )
        } else {
            format!("scale=w={w}:h={h}:flags=bicubic:out_range=tv,setsar=1,format=yuv420p")
        }
    };
    let pre = if cuda { "" } else { rotate_filter(rotation) };
    if sizes.len() == 1 {
        return format!("[in]{pre}{}[out0]", scale(sizes[0]));
    }
    let labels: String = (0..sizes.len()).map(|i| format!("[s{i}]")).collect();
    let mut spec = format!("[in]{pre}split={}{labels}", sizes.len());
    for (i, &size) in sizes.iter().enumerate() {
        spec.push_str(&format!(";[s{i}]{}[out{i}]", scale(size)));
    }
    spec
}

impl LadderGraph {
    /// Builds the graph for frames shaped like `first`.
    pub(crate) fn new(
        first: &frame::Video,
        time_base: Rational,
        rotation: u32,
        sizes: &[(u32, u32)],
    ) -> Result<Self, MediaError> {
        let sar = first.aspect_ratio();
        let sar = if sar.numerator() > 0 && sar.denominator() > 0 {
            sar
        } else {
            Rational::new(1, 1)
        };
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}:pixel_aspect={}",
            first.width(),
            first.height(),
            first.format().descriptor().map_or("yuv420p", |d| d.name()),
            time_base,
            sar
        );
        let find = |n: &str| filter::find(n).ok_or_else(|| internal("missing filter", n));
        let cuda = first.format() == format::Pixel::CUDA;
        let mut graph = filter::Graph::new();
        graph
            .add(&find("buffer")?, "in", &args)
            .map_err(|e| internal("video filter source", e))?;
        if cuda {
            let mut source = graph
                .get("in")
                .ok_or_else(|| MediaError::Internal("video filter source missing".into()))?;
            crate::cuda::hw_source(&mut source, first)?;
        }
        for i in 0..sizes.len() {
            graph
                .add(&find("buffersink")?, &format!("out{i}"), "")
                .map_err(|e| internal("video filter sink", e))?;
        }
        let mut parser = graph
            .output("in", 0)
            .map_err(|e| internal("video filter graph", e))?;
        for i in 0..sizes.len() {
            parser = parser
                .input(&format!("out{i}"), 0)
                .map_err(|e| internal("video filter graph", e))?;
        }
        parser
            .parse(&describe(rotation, sizes, cuda))
            .map_err(|e| internal("video filter graph", e))?;
        graph
            .validate()
            .map_err(|e| internal("video filter graph", e))?;
        Ok(LadderGraph {
            graph,
            outputs: sizes.len(),
        })
    }

    /// Feeds a decoded frame; `None` flushes the graph.
    pub(crate) fn push(&mut self, frame: Option<&frame::Video>) -> Result<(), MediaError> {
        let mut src = self
            .graph
            .get("in")
            .ok_or_else(|| MediaError::Internal("video filter source missing".into()))?;
        let r = match frame {
            Some(f) => src.source().add(f),
            None => src.source().flush(),
        };
        r.map_err(|e| crate::bad("filtering a frame", e))
    }

    /// Takes the next scaled frame of output `i`, with the time base of its timestamps;
    /// `None` when none is ready. The filters run here (`scale_cuda` and the download from
    /// the device too), so their failures come out here.
    pub(crate) fn pull(
        &mut self,
        i: usize,
        out: &mut frame::Video,
    ) -> Result<Option<Rational>, MediaError> {
        if i >= self.outputs {
            return Ok(None);
        }
        let Some(mut sink) = self.graph.get(&format!("out{i}")) else {
            return Ok(None);
        };
        let tb = sink.sink().time_base();
        match sink.sink().frame(out) {
            Ok(()) => Ok(Some(tb)),
            Err(Error::Eof) => Ok(None),
            Err(Error::Other { errno }) if errno == EAGAIN => Ok(None),
            Err(e) => Err(internal("scaling a picture", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_descriptions() {
        assert_eq!(
            describe(0, &[(640, 360)], false),
            "[in]scale=w=640:h=360:flags=bicubic:out_range=tv,setsar=1,format=yuv420p[out0]"
        );
        let two = describe(90, &[(240, 426), (360, 640)], false);
        assert!(two.starts_with("[in]transpose=clock,split=2[s0][s1];[s0]scale=w=240:h=426"));
        assert!(two.ends_with("[out1]"));
        // On the GPU: scaled to the sides before the turn, turned after the download.
        let gpu = describe(90, &[(240, 426)], true);
        assert_eq!(
            gpu,
            "[in]scale_cuda=w=426:h=240:interp_algo=bicubic:format=yuv420p,hwdownload,\
             format=yuv420p,transpose=clock,setsar=1[out0]"
        );
        assert!(describe(0, &[(640, 360), (256, 144)], true).starts_with("[in]split=2[s0][s1]"));
    }
}
