//! Castwork's broadcaster: ingests video files, cuts them into keyframe-aligned source
//! segments without re-encoding video, stores and enqueues them, and serves HLS playback.

pub mod flv;
pub mod link;
pub mod live;
pub mod metrics;
pub mod progress;
pub mod push;
pub mod rtmp;
pub mod serve;

pub use push::{push, PushOutcome, PushRequest};
