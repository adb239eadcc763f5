//! rml_rtmp, the third-party RTMP parser every publisher's bytes go through (after the
//! handshake), on any input, wrapped as the broadcaster wraps it: a panic ends the
//! connection (`catch_unwind`). What must hold is that no input aborts the process, hangs
//! it or makes it hold memory without bound. Panics it is known to have (an overflow on an
//! extended timestamp, a slice index on an empty AMF command) are regression inputs of
//! broadcaster/tests/rtmp_server.rs.
#![no_main]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig};

static QUIET: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on any panic; the broadcaster unwinds and closes the connection.
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok((mut session, _)) = ServerSession::new(ServerSessionConfig::new()) else {
        return;
    };
    // Fed in two pieces: a parser must not care where the network cut the bytes.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % data.len().max(1));
    for piece in [&data[..cut], &data[cut..]] {
        match catch_unwind(AssertUnwindSafe(|| session.handle_input(piece))) {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
});
