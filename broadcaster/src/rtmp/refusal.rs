//! Telling an RTMP publisher why it is refused or cut off: an `onStatus` command with level
//! `error`, a NetStream code and our reason as its `description`, which ffmpeg prints as
//! "Server error: DESCRIPTION" and OBS shows.

use std::collections::HashMap;

use rml_rtmp::chunk_io::{ChunkSerializationError, ChunkSerializer};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;

/// The stream key or application names nothing this server publishes (Adobe's code for a
/// publish to a name that cannot be used).
pub const BAD_NAME: &str = "NetStream.Publish.BadName";
/// Any other refusal, before or after the publish started.
pub const REJECTED: &str = "NetStream.Publish.Rejected";

/// Longest `description` a client reads whole: ffmpeg copies a status field into 256 bytes,
/// NUL included, and drops the rest.
pub const MAX_DESCRIPTION: usize = 255;

/// The message stream a publisher's status goes on: `rml_rtmp` numbers a connection's
/// streams from 1, and a connection publishes one stream (a second publish is refused).
const PUBLISH_STREAM_ID: u32 = 1;

/// Why a publisher is refused or cut off, as its client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// [`BAD_NAME`] or [`REJECTED`].
    pub code: &'static str,
    /// The reason in words, for the person at the encoder.
    pub description: String,
}

impl Refusal {
    /// An unknown stream key or application.
    pub fn bad_name(description: impl Into<String>) -> Refusal {
        Refusal {
            code: BAD_NAME,
            description: description.into(),
        }
    }

    /// Any other refusal.
    pub fn rejected(description: impl Into<String>) -> Refusal {
        Refusal {
            code: REJECTED,
            description: description.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// `text` cut to at most [`MAX_DESCRIPTION`] bytes at a character boundary, ending with "…"
/// when cut.
pub fn fit_description(text: &str) -> String {
    if text.len() <= MAX_DESCRIPTION {
        return text.to_string();
    }
    let mut end = MAX_DESCRIPTION - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The bytes of `onStatus({level: "error", code, description})` on the publishing stream,
/// as one RTMP message with a full (type 0) chunk header, cut into chunks of `chunk_size`
/// (the size the session announced to the client). Nothing may follow it on the
/// connection: the session's own serializer does not know of this chunk.
pub fn error_status(
    refusal: &Refusal,
    chunk_size: u32,
) -> Result<Vec<u8>, ChunkSerializationError> {
    let status = HashMap::from([
        ("level".to_string(), Amf0Value::Utf8String("error".into())),
        (
            "code".to_string(),
            Amf0Value::Utf8String(refusal.code.into()),
        ),
        (
            "description".to_string(),
            Amf0Value::Utf8String(fit_description(&refusal.description)),
        ),
    ]);
    let message = RtmpMessage::Amf0Command {
        command_name: "onStatus".into(),
        transaction_id: 0.0,
        command_object: Amf0Value::Null,
        additional_arguments: vec![Amf0Value::Object(status)],
    };
    let payload = message.into_message_payload(RtmpTimestamp::new(0), PUBLISH_STREAM_ID)?;
    let mut serializer = ChunkSerializer::new();
    // The packet announcing the size is not sent: the session already announced it.
    serializer.set_max_chunk_size(chunk_size, RtmpTimestamp::new(0))?;
    Ok(serializer.serialize(&payload, true, false)?.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkDeserializer;

    #[test]
    fn long_descriptions_are_cut_at_a_character() {
        assert_eq!(fit_description("short"), "short");
        let exact = "a".repeat(MAX_DESCRIPTION);
        assert_eq!(fit_description(&exact), exact);
        let long = "é".repeat(200);
        let cut = fit_description(&long);
        assert!(cut.len() <= MAX_DESCRIPTION, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn the_status_decodes_as_an_error_on_the_publishing_stream() {
        let refusal = Refusal::rejected("x".repeat(300));
        let bytes = error_status(&refusal, 4096).unwrap();
        let mut reader = ChunkDeserializer::new();
        reader.set_max_chunk_size(4096).unwrap();
        let payload = reader
            .get_next_message(&bytes)
            .unwrap()
            .expect("one message");
        assert_eq!(payload.message_stream_id, PUBLISH_STREAM_ID);
        let RtmpMessage::Amf0Command {
            command_name,
            additional_arguments,
            ..
        } = payload.to_rtmp_message().unwrap()
        else {
            panic!("not a command");
        };
        assert_eq!(command_name, "onStatus");
        let [Amf0Value::Object(status)] = &additional_arguments[..] else {
            panic!("{additional_arguments:?}");
        };
        let text = |k: &str| match &status[k] {
            Amf0Value::Utf8String(s) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("level"), "error");
        assert_eq!(text("code"), REJECTED);
        assert_eq!(text("description").len(), MAX_DESCRIPTION);
    }
}
