//! RFC 6455 framing after the handshake, without I/O.
//!
//! Outbound, the server writes frames straight into its connection buffer: a
//! ticker frame is the header, the version's shared bytes and the subscriber's
//! own suffix, so delivering one update to one client allocates nothing.
//! Inbound, [`Decoder`] turns masked client frames into whole messages and
//! enforces the message size limit before buffering a payload.

use bytes::{Buf, BytesMut};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Close codes the server sends (RFC 6455 §7.4.1 and protocol v1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(String),
    /// A frame that continues a text message without finishing it: nothing to
    /// act on yet, but a frame the client's rate pays for.
    Fragment,
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// Why the inbound stream cannot go on; each maps to the close code to send.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("message of {0} bytes exceeds the limit")]
    TooBig(u64),
    #[error("binary messages are not part of protocol v1")]
    Binary,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}

impl DecodeError {
    /// The close code this error is answered with.
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::Protocol(_) => close_code::PROTOCOL_ERROR,
            DecodeError::TooBig(_) => close_code::MESSAGE_TOO_BIG,
            DecodeError::Binary => close_code::UNSUPPORTED_DATA,
            DecodeError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
        }
    }
}

/// Reassembles client messages from frames.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Text fragments received so far (no FIN yet), or `None`.
    partial: Option<Vec<u8>>,
}

impl Decoder {
    /// A decoder that refuses messages larger than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            partial: None,
        }
    }

    /// Decodes the next frame from `buf`, consuming its bytes. Returns
    /// `Ok(None)` when `buf` holds no complete frame yet. Oversized frames are
    /// refused as soon as their header is read, before the payload arrives.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        let Some(header) = parse_header(buf)? else {
            return Ok(None);
        };
        self.check_frame(&header)?;
        let frame_len = header.header_len as u64 + header.payload_len;
        if (buf.len() as u64) < frame_len {
            return Ok(None);
        }
        buf.advance(header.header_len);
        // Lossless: payload_len <= max_message, a usize, was checked above.
        let mut payload = buf.split_to(header.payload_len as usize);
        unmask(&mut payload, header.mask);
        self.on_frame(&header, &payload).map(Some)
    }

    fn check_frame(&self, header: &Header) -> Result<(), DecodeError> {
        if header.opcode >= 0x8 {
            if !header.fin {
                return Err(DecodeError::Protocol("fragmented control frame"));
            }
            if header.payload_len > 125 {
                return Err(DecodeError::Protocol("control frame over 125 bytes"));
            }
            return Ok(());
        }
        // Refused from the header alone, before its size is weighed or its
        // payload waited for: a peer that declares 64 KiB and sends none of
        // it is failed at once, not left to the ping timeout.
        match (header.opcode, self.partial.is_some()) {
            (0x0, false) => return Err(DecodeError::Protocol("continuation without a message")),
            (0x1, true) => {
                return Err(DecodeError::Protocol("new message inside a fragmented one"))
            }
            (0x2, _) => return Err(DecodeError::Binary),
            (0x3..=0x7, _) => return Err(DecodeError::Protocol("reserved opcode")),
            _ => {}
        }
        let buffered = self.partial.as_ref().map_or(0, Vec::len) as u64;
        let total = buffered.saturating_add(header.payload_len);
        if total > self.max_message as u64 {
            return Err(DecodeError::TooBig(total));
        }
        Ok(())
    }

    fn on_frame(&mut self, header: &Header, payload: &[u8]) -> Result<Inbound, DecodeError> {
        match header.opcode {
            // `check_frame` made sure a message starts only outside one and
            // a continuation only inside one.
            0x1 if header.fin => text(payload.to_vec()),
            0x0 if header.fin => {
                let mut whole = self.partial.take().unwrap_or_default();
                whole.extend_from_slice(payload);
                text(whole)
            }
            0x0 | 0x1 => {
                let partial = self.partial.get_or_insert_with(Vec::new);
                // Invalid UTF-8 fails the message as soon as it arrives, not
                // once a peer that may never finish it sends the last fragment.
                // What came before was valid so far: checking resumes at its
                // last character's first byte, which its tail may have cut.
                let resume = partial.iter().rposition(|&b| b & 0xC0 != 0x80).unwrap_or(0);
                partial.extend_from_slice(payload);
                match std::str::from_utf8(&partial[resume..]) {
                    Err(e) if e.error_len().is_some() => Err(DecodeError::InvalidUtf8),
                    _ => Ok(Inbound::Fragment),
                }
            }
            0x2 => Err(DecodeError::Binary),
            0x8 => close(payload),
            0x9 => Ok(Inbound::Ping(payload.to_vec())),
            0xA => Ok(Inbound::Pong),
            _ => Err(DecodeError::Protocol("reserved opcode")),
        }
    }
}

fn text(bytes: Vec<u8>) -> Result<Inbound, DecodeError> {
    String::from_utf8(bytes)
        .map(Inbound::Text)
        .map_err(|_| DecodeError::InvalidUtf8)
}

fn close(payload: &[u8]) -> Result<Inbound, DecodeError> {
    match payload {
        [] => Ok(Inbound::Close(None)),
        [_] => Err(DecodeError::Protocol("one-byte close payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(DecodeError::Protocol("invalid close code"));
            }
            // An invalid close payload is a protocol error (1002), as protocol
            // v1 says; 1007 is for text messages.
            std::str::from_utf8(reason)
                .map_err(|_| DecodeError::Protocol("close reason is not valid UTF-8"))?;
            Ok(Inbound::Close(Some(code)))
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: u64,
}

fn parse_header(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    let [first, second, rest @ ..] = buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(DecodeError::Protocol(
            "reserved bits set (no extension negotiated)",
        ));
    }
    if second & 0x80 == 0 {
        return Err(DecodeError::Protocol("client frame not masked"));
    }
    let (payload_len, len_bytes) = match second & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(DecodeError::Protocol("64-bit length with the top bit set"));
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        len => (u64::from(len), 0),
    };
    let Some(mask_bytes) = rest.get(len_bytes..len_bytes + 4) else {
        return Ok(None);
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(mask_bytes);
    Ok(Some(Header {
        fin: first & 0x80 != 0,
        opcode: first & 0x0f,
        mask,
        header_len: 2 + len_bytes + 4,
        payload_len,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Appends an unmasked, final frame header for a payload of `len` bytes.
pub fn write_header(out: &mut Vec<u8>, opcode: OpCode, len: usize) {
    out.push(0x80 | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a whole frame.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    write_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and a reason cut to fit a control frame.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    write_header(out, OpCode::Close, 2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser would send it.
    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Vec<Result<Inbound, DecodeError>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => out.push(Ok(message)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn text_arrives_whole_even_byte_by_byte() {
        let frame = masked(true, 0x1, br#"{"op":"ping","id":1}"#);
        let mut decoder = Decoder::new(1024);
        let mut buf = BytesMut::new();
        let mut got = None;
        for byte in frame {
            buf.extend_from_slice(&[byte]);
            if let Some(message) = decoder.decode(&mut buf).ok().flatten() {
                got = Some(message);
            }
        }
        assert_eq!(got, Some(Inbound::Text(r#"{"op":"ping","id":1}"#.into())));
        assert!(buf.is_empty());
    }

    #[test]
    fn fragments_reassemble_around_a_control_frame() {
        let mut bytes = masked(false, 0x1, b"hel");
        bytes.extend(masked(true, 0x9, b"p"));
        bytes.extend(masked(true, 0x0, b"lo"));
        let got = decode_all(&mut Decoder::new(1024), &bytes);
        // The first fragment is a frame of its own (the client's rate pays
        // for each), the message comes whole with the last.
        assert_eq!(
            got,
            vec![
                Ok(Inbound::Fragment),
                Ok(Inbound::Ping(b"p".to_vec())),
                Ok(Inbound::Text("hello".into()))
            ]
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let frame = masked(true, 0x1, &vec![b'a'; 70_000]);
        let mut buf = BytesMut::from(&frame[..14]);
        let result = Decoder::new(65_536).decode(&mut buf);
        assert_eq!(result, Err(DecodeError::TooBig(70_000)));
        assert_eq!(DecodeError::TooBig(0).close_code(), 1009);
    }

    #[test]
    fn fragments_count_towards_the_limit() {
        let mut bytes = masked(false, 0x1, &[b'a'; 60]);
        bytes.extend(masked(true, 0x0, &[b'a'; 60]));
        let got = decode_all(&mut Decoder::new(100), &bytes);
        assert_eq!(
            got,
            vec![Ok(Inbound::Fragment), Err(DecodeError::TooBig(120))]
        );
    }

    #[test]
    fn violations_map_to_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (masked(true, 0x2, b"\x01"), 1003),
            (masked(true, 0x1, &[0xff, 0xfe]), 1007),
            (vec![0x81, 0x02, b'h', b'i'], 1002), // unmasked
            (masked(true, 0x3, b""), 1002),       // reserved opcode
            (masked(false, 0x9, b""), 1002),      // fragmented ping
            (masked(true, 0x0, b"x"), 1002),      // stray continuation
            (masked(true, 0x8, &[0x03]), 1002),   // one-byte close
            (masked(true, 0x8, &1005u16.to_be_bytes()), 1002),
            (masked(true, 0x8, &[0x03, 0xe8, 0xff]), 1002), // reason not UTF-8
            // A reserved opcode is refused from the header, before its size.
            (masked(true, 0x3, &[0u8; 70_000])[..14].to_vec(), 1002),
            (masked(true, 0x9, &[0u8; 126]), 1002),
            (
                [0xc1]
                    .into_iter()
                    .chain(masked(true, 1, b"")[1..].iter().copied())
                    .collect(),
                1002,
            ),
        ];
        for (bytes, code) in cases {
            let got = decode_all(&mut Decoder::new(1024), &bytes);
            match got.last() {
                Some(Err(e)) => assert_eq!(e.close_code(), code, "{bytes:02x?}: {e}"),
                other => panic!("{bytes:02x?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_message_that_cannot_be_valid_fails_before_its_payload_arrives() {
        // Headers only: each declares a payload it never sends.
        let stray = masked(true, 0x0, &[b'a'; 600])[..8].to_vec();
        let mut nested = masked(false, 0x1, b"a");
        nested.extend_from_slice(&masked(true, 0x1, &[b'a'; 600])[..8]);
        // Invalid UTF-8 in a first fragment, with the rest never sent.
        let invalid = masked(false, 0x1, &[b'a', 0xff]);
        for (bytes, error) in [
            (stray, "continuation without a message"),
            (nested, "new message inside a fragmented one"),
            (invalid, "not valid UTF-8"),
        ] {
            let got = decode_all(&mut Decoder::new(1024), &bytes);
            match got.last() {
                Some(Err(e)) => assert!(e.to_string().contains(error), "{e}"),
                other => panic!("{error}: {other:?}"),
            }
        }
    }

    #[test]
    fn characters_cut_between_fragments_are_valid_and_bad_ones_are_caught_at_once() {
        let text = "€ £ ✓ 𝄞";
        for cut in 1..text.len() {
            let (head, tail) = text.as_bytes().split_at(cut);
            // In three fragments: a character may be cut twice.
            let (middle, last) = tail.split_at(tail.len() / 2);
            let mut bytes = masked(false, 0x1, head);
            bytes.extend(masked(false, 0x0, middle));
            bytes.extend(masked(true, 0x0, last));
            let got = decode_all(&mut Decoder::new(1024), &bytes);
            assert_eq!(
                got.last(),
                Some(&Ok(Inbound::Text(text.into()))),
                "cut at {cut}"
            );
        }
        // A continuation byte where a character must start, in the second fragment.
        let mut bytes = masked(false, 0x1, "€".as_bytes());
        bytes.extend(masked(false, 0x0, &[0x80]));
        let got = decode_all(&mut Decoder::new(1024), &bytes);
        assert_eq!(
            got,
            vec![Ok(Inbound::Fragment), Err(DecodeError::InvalidUtf8)]
        );
    }

    #[test]
    fn close_and_pong_decode() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut bytes = masked(true, 0xA, b"x");
        bytes.extend(masked(true, 0x8, &payload));
        let got = decode_all(&mut Decoder::new(1024), &bytes);
        assert_eq!(got, vec![Ok(Inbound::Pong), Ok(Inbound::Close(Some(1000)))]);
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            write_header(&mut out, OpCode::Text, len);
            assert_eq!(out.len(), header_len, "len {len}");
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        write_close(&mut out, 1001, "server shutting down");
        assert_eq!(&out[..4], &[0x88, 22, 0x03, 0xe9]);
    }
}
