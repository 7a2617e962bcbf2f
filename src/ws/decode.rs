//! Client frames in: text to a [`ClientMsg`] or a refusal to send back, and the close a frame
//! the WebSocket layer itself refused deserves. No I/O.

use crate::payments::Refusal;
use callpay_protocol::{ClientMsg, ErrorCode, close};

/// Longest explanation of a malformed frame sent back: the parser's message can quote the
/// client's own text (an unknown `type`, say), which must not come back unbounded.
const MAX_DECODE_MESSAGE: usize = 200;

/// Decodes a client frame; a non-integer amount on a request is `invalid_amount`, anything else
/// malformed is `bad_frame`. Whatever the input, a refusal's message is at most a few hundred
/// bytes and its reference a well-formed `client_ref`.
pub fn decode(text: &str) -> Result<ClientMsg, Refusal> {
    serde_json::from_str(text).map_err(|e| {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        if value["type"] == "payment.request" && value.get("amount").is_some_and(|a| !a.is_i64()) {
            return Refusal::new(
                ErrorCode::InvalidAmount,
                "Amount must be a whole number of cents.",
                value["client_ref"].as_str(),
            );
        }
        let mut why = e.to_string();
        if why.len() > MAX_DECODE_MESSAGE {
            let cut = (0..=MAX_DECODE_MESSAGE).rev().find(|i| why.is_char_boundary(*i)).unwrap_or(0);
            why.truncate(cut);
            why.push('…');
        }
        Refusal::new(ErrorCode::BadFrame, format!("Not a valid protocol message: {why}"), None)
    })
}

/// A binary frame: not part of the protocol.
pub fn binary_refused() -> Refusal {
    Refusal::new(ErrorCode::BadFrame, "Binary frames are not part of the protocol.", None)
}

/// The close a frame the WebSocket layer refused deserves, so the client learns why instead of
/// seeing the connection vanish. `None` for transport failures, where nothing can be sent.
pub fn refused_frame(e: axum::Error) -> Option<(u16, &'static str)> {
    use tungstenite::Error;
    match *e.into_inner().downcast::<Error>().ok()? {
        Error::Capacity(_) => Some((close::MESSAGE_TOO_BIG, "frame larger than the hub accepts")),
        Error::Utf8(_) => Some((close::INVALID_PAYLOAD, "text frame is not valid UTF-8")),
        // The peer's TCP stream ended without a close frame: it is gone, nothing to tell it.
        Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(_) => Some((close::PROTOCOL_ERROR, "not a valid WebSocket frame")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ended_without_a_close_frame_gets_no_close_but_a_bad_frame_does() {
        use tungstenite::error::ProtocolError;
        let refused = |e: ProtocolError| refused_frame(axum::Error::new(tungstenite::Error::Protocol(e)));
        assert_eq!(refused(ProtocolError::ResetWithoutClosingHandshake), None, "the peer is gone");
        assert_eq!(refused(ProtocolError::UnmaskedFrameFromClient).map(|r| r.0), Some(close::PROTOCOL_ERROR));
    }

    #[test]
    fn decode_sorts_bad_frames() {
        assert!(decode(r#"{"type":"payment.cancel","payment_id":"p"}"#).is_ok());
        assert_eq!(decode("not json").unwrap_err().code, ErrorCode::BadFrame);
        assert_eq!(decode(r#"{"type":"nope"}"#).unwrap_err().code, ErrorCode::BadFrame);
        let r =
            decode(r#"{"type":"payment.request","client_ref":"r1","amount":12.5,"currency":"aud","description":"d"}"#)
                .unwrap_err();
        assert_eq!((r.code, r.reference.as_deref()), (ErrorCode::InvalidAmount, Some("r1")));
        assert_eq!(
            decode(r#"{"type":"payment.request","client_ref":"r1","amount":"50","currency":"aud","description":"d"}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidAmount
        );
    }

    #[test]
    fn a_refusal_never_quotes_the_client_at_length() {
        // serde names an unknown variant in its message, so an unbounded `type` used to come
        // straight back in the error frame.
        let huge = format!(r#"{{"type":"{}ü"}}"#, "x".repeat(20_000));
        let r = decode(&huge).unwrap_err();
        assert_eq!(r.code, ErrorCode::BadFrame);
        assert!(r.message.len() < 300, "{} bytes", r.message.len());
    }
}
