//! Normalising a source's audio to AAC once per stream (the broadcaster's job), so no
//! worker encodes audio per segment.

use ffmpeg_next::{codec, encoder, filter, format, frame, ChannelLayout, Packet, Rational};

use crate::{internal, MediaError};

/// Sample rates AAC can signal; anything else is resampled to 48 kHz.
const AAC_RATES: &[u32] = &[
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Decodes any audio, resamples it to planar float and encodes AAC-LC.
pub(crate) struct AacEncoder {
    decoder: codec::decoder::Audio,
    graph: filter::Graph,
    encoder: encoder::Audio,
    params: codec::Parameters,
    rate: u32,
    /// Time base of the source stream's packets.
    in_tb: Rational,
    /// Sample rate of the decoded audio; the filter graph counts in its samples.
    in_rate: u32,
    /// Next timestamp the encoder's output may have: packets never go backwards.
    next_pts: Option<i64>,
}

impl AacEncoder {
    pub(crate) fn new(stream: &format::stream::Stream<'_>) -> Result<Self, MediaError> {
        let decoder = codec::context::Context::from_parameters(stream.parameters())
            .and_then(|c| c.decoder().audio())
            .map_err(|e| crate::bad("unreadable audio stream", e))?;
        let channels = decoder.channels().max(1);
        let layout = if channels == 1 {
            ChannelLayout::MONO
        } else {
            ChannelLayout::STEREO
        };
        let rate = if AAC_RATES.contains(&decoder.rate()) {
            decoder.rate()
        } else {
            48000
        };
        let codec = encoder::find(codec::Id::AAC)
            .ok_or_else(|| MediaError::Internal("FFmpeg has no AAC encoder".into()))?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(|e| internal("aac encoder", e))?;
        enc.set_rate(rate as i32);
        enc.set_channel_layout(layout);
        enc.set_channels(layout.channels());
        enc.set_format(format::Sample::F32(format::sample::Type::Planar));
        enc.set_bit_rate(if channels == 1 { 64_000 } else { 128_000 });
        enc.set_time_base(Rational::new(1, rate as i32));
        let encoder = enc
            .open_as(codec)
            .map_err(|e| internal("opening the aac encoder", e))?;

        let in_layout = if decoder.channel_layout().is_empty() {
            ChannelLayout::default(i32::from(channels))
        } else {
            decoder.channel_layout()
        };
        let mut graph = filter::Graph::new();
        // Timestamps enter the graph in samples: a coarse container time base (AVI's mp3 has one
        // tick per mp3 frame) would give 1024-sample AAC frames duplicate timestamps.
        let in_rate = decoder.rate().max(1);
        let args = format!(
            "time_base=1/{in_rate}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
            decoder.rate(),
            decoder.format().name(),
            in_layout.bits()
        );
        let find = |n: &str| filter::find(n).ok_or_else(|| internal("missing filter", n));
        graph
            .add(&find("abuffer")?, "in", &args)
            .map_err(|e| internal("audio filter source", e))?;
        graph
            .add(&find("abuffersink")?, "out", "")
            .map_err(|e| internal("audio filter sink", e))?;
        {
            let mut out = graph
                .get("out")
                .ok_or_else(|| MediaError::Internal("audio sink missing".into()))?;
            out.set_sample_format(encoder.format());
            out.set_channel_layout(encoder.channel_layout());
            out.set_sample_rate(rate);
        }
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse("anull"))
            .map_err(|e| internal("audio filter graph", e))?;
        graph
            .validate()
            .map_err(|e| internal("audio filter graph", e))?;
        if let Some(mut out) = graph.get("out") {
            out.sink().set_frame_size(encoder.frame_size());
        }
        let params = codec::Parameters::from(&encoder);
        Ok(AacEncoder {
            decoder,
            graph,
            encoder,
            params,
            rate,
            in_tb: stream.time_base(),
            in_rate,
            next_pts: None,
        })
    }

    /// Codec parameters for a muxer stream.
    pub(crate) fn parameters(&self) -> codec::Parameters {
        self.params.clone()
    }

    /// Time base of the packets this produces.
    pub(crate) fn time_base(&self) -> Rational {
        Rational::new(1, self.rate as i32)
    }

    /// Feeds a source packet (`None` flushes everything) and collects AAC packets.
    pub(crate) fn push(
        &mut self,
        packet: Option<&Packet>,
        out: &mut Vec<Packet>,
    ) -> Result<(), MediaError> {
        match packet {
            // A corrupt audio packet is skipped, as a player would.
            Some(p) => {
                let _ = self.decoder.send_packet(p);
            }
            None => {
                let _ = self.decoder.send_eof();
            }
        }
        let mut decoded = frame::Audio::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            use ffmpeg_next::Rescale;
            let ts = decoded.timestamp().or(decoded.pts());
            decoded
                .set_pts(ts.map(|t| t.rescale(self.in_tb, Rational::new(1, self.in_rate as i32))));
            if let Some(mut src) = self.graph.get("in") {
                src.source()
                    .add(&decoded)
                    .map_err(|e| internal("audio filter", e))?;
            }
        }
        if packet.is_none() {
            if let Some(mut src) = self.graph.get("in") {
                let _ = src.source().flush();
            }
        }
        self.drain_graph(out)?;
        if packet.is_none() {
            let _ = self.encoder.send_eof();
            self.drain_encoder(out);
        }
        Ok(())
    }

    fn drain_graph(&mut self, out: &mut Vec<Packet>) -> Result<(), MediaError> {
        let Some(mut sink) = self.graph.get("out") else {
            return Ok(());
        };
        let sink_tb = sink.sink().time_base();
        let mut filtered = frame::Audio::empty();
        while sink.sink().frame(&mut filtered).is_ok() {
            if let Some(pts) = filtered.pts() {
                use ffmpeg_next::Rescale;
                filtered.set_pts(Some(pts.rescale(sink_tb, self.time_base())));
            }
            self.encoder
                .send_frame(&filtered)
                .map_err(|e| internal("aac encode", e))?;
            self.drain_encoder(out);
        }
        Ok(())
    }

    fn drain_encoder(&mut self, out: &mut Vec<Packet>) {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            if let (Some(pts), Some(next)) = (pkt.pts(), self.next_pts) {
                if pts < next {
                    pkt.set_pts(Some(next));
                    pkt.set_dts(Some(next));
                }
            }
            if let Some(pts) = pkt.pts() {
                self.next_pts = Some(pts + pkt.duration().max(1));
            }
            out.push(std::mem::replace(&mut pkt, Packet::empty()));
        }
    }
}
