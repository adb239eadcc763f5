//! Castwork's broadcaster: ingests video files, cuts them into keyframe-aligned source
//! segments without re-encoding video, stores and enqueues them, and serves HLS playback.

pub mod api;
pub mod chain_cli;
pub mod history;
pub mod link;
pub mod live;
pub mod metrics;
pub mod payer;
pub mod progress;
pub mod push;
pub mod rtmp;
pub mod select;
pub mod serve;
pub mod verify;

pub use castwork_bitstream::flv;
pub use push::{push, PushOutcome, PushRequest};
