//! Every wire message type decoded from any bytes: no panic, and whatever decodes encodes
//! back to itself.
#![no_main]

use castwork_protocol::{decode, encode, IngestMessage, SegmentJob, StreamEvent, WorkerReport};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(m) = decode::<T>(data) {
        let again: T = decode(&encode(&m)).expect("an encoded message decodes");
        assert_eq!(again, m);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<IngestMessage>(data);
    round_trip::<WorkerReport>(data);
    round_trip::<SegmentJob>(data);
    round_trip::<StreamEvent>(data);
});
