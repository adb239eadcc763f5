//! Castwork's wire protocol: messages, profiles, ladder rules, playlists and cut planning.
//!
//! Everything here is pure data and pure functions, shared by every role; nothing does I/O.

pub mod cut;
pub mod ladder;
pub mod messages;
pub mod payment;
pub mod playlist;
pub mod price;
pub mod profile;
pub mod sample;
pub mod secret;
pub mod time;

pub use ladder::{plan_ladder, LadderPlan, Rung, SkippedRung};
pub use messages::*;
pub use price::Price;
pub use profile::{parse_profiles, parse_transcoding_options, H264Profile, Profile, ProfileError};
pub use time::Rational;
