//! Message data framing and line checks, shared by DATA and BDAT.
//!
//! A pure byte-level state machine (no I/O) so that it can be fuzzed and fed
//! any split of the input. It is written by hand because the end-of-data
//! rule is the heart of the SMTP smuggling defence and must be exact:
//!
//! - only `<CRLF>.<CRLF>` ends DATA — a `.` line reached through a bare LF or
//!   bare CR never does (this is what `\n.\n`, `\r.\r`, `\r\n.\n` and
//!   `\n.\r\n` payloads exploit elsewhere);
//! - bare LF / bare CR anywhere make the message rejected (default), or are
//!   normalised to CRLF (`bare_lf = "normalize"`), so we never relay a message
//!   whose line structure a downstream server could read differently;
//! - dot-unstuffing per RFC 5321 4.5.2; NUL bytes and lines over 1000 octets
//!   (RFC 5321 4.5.3.1.6) reject the message instead of being mangled;
//! - `Received:` headers are counted for loop detection.

use crate::config::BareLfPolicy;

/// RFC 5321 4.5.3.1.6: 1000 octets including CRLF.
pub const MAX_TEXT_LINE: usize = 998;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// DATA: dot-stuffed, ended by CRLF.CRLF.
    Dot,
    /// BDAT: raw octets, the caller knows the chunk lengths.
    Chunks,
}

/// Why a message must be refused. The first problem found wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    BareLineEnding,
    NulByte,
    LineTooLong,
    TooBig,
    TooManyHops,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After a real CRLF (or at the start of data).
    LineStart,
    /// After a bare line ending that was normalised: a line start, but one
    /// from which a lone dot can never end the data.
    SoftLineStart,
    /// Saw `.` at a line start.
    Dot,
    /// Saw `.` at a soft line start: stuffing is removed as after a CRLF
    /// (normalize mode must not change a bare-LF client's mail), but a lone
    /// dot here never ends the data.
    SoftDot,
    /// Saw `.` `\r` at a soft line start.
    SoftDotCr,
    /// Saw `.` `\r` at a line start.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw `\r` inside a line.
    Cr,
}

#[derive(Debug, Clone)]
pub struct BodyDecoder {
    framing: Framing,
    bare_lf: BareLfPolicy,
    max_size: u64,
    max_received: usize,
    state: State,
    line_len: usize,
    size: u64,
    in_headers: bool,
    /// Lower-cased first bytes of the current header line.
    header_prefix: [u8; 9],
    header_prefix_len: usize,
    received: usize,
    problem: Option<BodyProblem>,
}

const RECEIVED: &[u8; 9] = b"received:";

impl BodyDecoder {
    pub fn new(
        framing: Framing,
        bare_lf: BareLfPolicy,
        max_size: u64,
        max_received: usize,
    ) -> Self {
        BodyDecoder {
            framing,
            bare_lf,
            max_size,
            max_received,
            state: State::LineStart,
            line_len: 0,
            size: 0,
            in_headers: true,
            header_prefix: [0; 9],
            header_prefix_len: 0,
            received: 0,
            problem: None,
        }
    }

    pub fn problem(&self) -> Option<BodyProblem> {
        self.problem
    }

    /// Content bytes produced so far (after unstuffing and normalisation).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Decode `input`, appending message content to `out` (nothing once a
    /// problem has been found). Returns how many input bytes were consumed and
    /// whether the end of data was reached; bytes after the end belong to the
    /// next command.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            // Fast path: the run of ordinary bytes inside a body line.
            if self.state == State::Mid && !self.in_headers {
                let rest = &input[i..];
                let run = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
                if run > 0 {
                    // Emit exactly what the byte-by-byte path would have
                    // emitted before flagging an over-long line, so the
                    // result never depends on how the input was split.
                    let within = run.min(MAX_TEXT_LINE.saturating_sub(self.line_len));
                    self.emit(&rest[..within], out);
                    self.line_len += run;
                    if self.line_len > MAX_TEXT_LINE {
                        self.flag(BodyProblem::LineTooLong);
                    }
                    i += run;
                    continue;
                }
            }
            let byte = input[i];
            i += 1;
            if self.step(byte, out) {
                return (i, true);
            }
        }
        (i, false)
    }

    /// BDAT only: the last chunk has been fed. A message not ending in CRLF
    /// gets one, so that what is spooled can be relayed with DATA unchanged.
    pub fn finish_chunks(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::Cr => self.bare_ending(out),
            State::Mid | State::Dot => self.emit(b"\r\n", out),
            _ => {}
        }
        self.state = State::LineStart;
    }

    /// One byte through the state machine; true at the end of DATA.
    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        match (self.state, byte) {
            (State::LineStart, b'.') if self.framing == Framing::Dot => {
                self.line_len = 1;
                self.state = State::Dot;
            }
            (State::SoftLineStart, b'.') if self.framing == Framing::Dot => {
                self.line_len = 1;
                self.state = State::SoftDot;
            }
            (State::SoftDot, b'\r') => self.state = State::SoftDotCr,
            (State::SoftDotCr, b'\n') => {
                // A lone dot reached through a bare line ending: content
                // (a line holding "."), never the end of data.
                self.emit(b".\r\n", out);
                self.end_line();
                self.state = State::LineStart;
            }
            (State::SoftDotCr, other) => {
                self.emit(b".", out);
                self.bare_ending(out);
                return self.step(other, out);
            }
            (State::SoftDot, b'\n') => {
                self.emit(b".", out);
                self.bare_ending(out);
            }
            (State::SoftDot, other) => {
                self.state = State::Mid;
                return self.step_in_line(other, out);
            }
            (State::Dot, b'\r') => self.state = State::DotCr,
            (State::DotCr, b'\n') => return true,
            (State::DotCr, other) => {
                // ".\r" then not LF: a bare CR after a lone dot.
                self.emit(b".", out);
                self.bare_ending(out);
                return self.step(other, out);
            }
            (State::Dot, b'\n') => {
                self.emit(b".", out);
                self.bare_ending(out);
            }
            (State::Dot, other) => {
                // Dot-unstuffing: the leading dot is dropped.
                self.state = State::Mid;
                return self.step_in_line(other, out);
            }
            (State::Cr, b'\n') => {
                self.emit(b"\r\n", out);
                self.end_line();
                self.state = State::LineStart;
            }
            (State::Cr, other) => {
                self.bare_ending(out);
                return self.step(other, out);
            }
            (_, b'\r') => self.state = State::Cr,
            (_, b'\n') => self.bare_ending(out),
            (_, other) => {
                self.state = State::Mid;
                return self.step_in_line(other, out);
            }
        }
        false
    }

    fn step_in_line(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        match byte {
            b'\r' => self.state = State::Cr,
            b'\n' => self.bare_ending(out),
            _ => {
                if byte == 0 {
                    self.flag(BodyProblem::NulByte);
                }
                self.line_len += 1;
                if self.line_len > MAX_TEXT_LINE {
                    self.flag(BodyProblem::LineTooLong);
                }
                self.emit(&[byte], out);
            }
        }
        false
    }

    /// A bare LF, or a CR not followed by LF.
    fn bare_ending(&mut self, out: &mut Vec<u8>) {
        match self.bare_lf {
            BareLfPolicy::Reject => {
                self.flag(BodyProblem::BareLineEnding);
                // Keep scanning as if inside a line, so that only a real
                // CRLF.CRLF can end the data.
                self.state = State::Mid;
            }
            BareLfPolicy::Normalize => {
                self.emit(b"\r\n", out);
                self.end_line();
                self.state = State::SoftLineStart;
            }
        }
    }

    fn end_line(&mut self) {
        if self.in_headers && self.line_len == 0 {
            self.in_headers = false;
        }
        self.line_len = 0;
        self.header_prefix_len = 0;
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.in_headers {
            for &b in bytes {
                if self.header_prefix_len < RECEIVED.len() && b != b'\r' && b != b'\n' {
                    self.header_prefix[self.header_prefix_len] = b.to_ascii_lowercase();
                    self.header_prefix_len += 1;
                    if self.header_prefix_len == RECEIVED.len() && &self.header_prefix == RECEIVED {
                        self.received += 1;
                        if self.received > self.max_received {
                            self.flag(BodyProblem::TooManyHops);
                        }
                    }
                }
            }
        }
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.flag(BodyProblem::TooBig);
        }
        if self.problem.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    fn flag(&mut self, problem: BodyProblem) {
        if self.problem.is_none() {
            self.problem = Some(problem);
        }
    }
}

/// The reference the fuzz target checks normalize mode against: every
/// line (ended by CRLF, bare LF or bare CR) with one leading dot removed
/// (a line of just "." is kept, it cannot be a terminator here), joined
/// with CRLF. What normalize mode must produce; the fuzz target and the
/// unit tests check the decoder against it.
pub fn normalized_reference(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut i = 0;
    let finish = |line: &mut Vec<u8>, out: &mut Vec<u8>| {
        let text: &[u8] = if line.len() > 1 && line[0] == b'.' {
            &line[1..]
        } else {
            line
        };
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
        line.clear();
    };
    while i < content.len() {
        match content[i] {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                finish(&mut line, &mut out);
                i += 1;
            }
            b'\r' | b'\n' => finish(&mut line, &mut out),
            b => line.push(b),
        }
        i += 1;
    }
    if !line.is_empty() {
        finish(&mut line, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_with(
        framing: Framing,
        policy: BareLfPolicy,
        input: &[u8],
    ) -> (Vec<u8>, usize, bool, Option<BodyProblem>) {
        let mut d = BodyDecoder::new(framing, policy, 1 << 20, 50);
        let mut out = Vec::new();
        let (used, done) = d.feed(input, &mut out);
        (out, used, done, d.problem())
    }

    fn data(input: &[u8]) -> (Vec<u8>, usize, bool, Option<BodyProblem>) {
        decode_with(Framing::Dot, BareLfPolicy::Reject, input)
    }

    #[test]
    fn plain_message_and_end() {
        let (out, used, done, problem) = data(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(used, 24);
        assert!(done);
        assert_eq!(problem, None);
    }

    #[test]
    fn empty_message() {
        let (out, used, done, _) = data(b".\r\n");
        assert!(out.is_empty());
        assert_eq!(used, 3);
        assert!(done);
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _, done, problem) = data(b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(out, b"a\r\n.b\r\n..\r\n");
        assert!(done);
        assert_eq!(problem, None);
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for payload in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
        ] {
            let (_, used, done, problem) = data(payload);
            assert!(!done, "{payload:?} ended DATA");
            assert_eq!(used, payload.len());
            assert_eq!(problem, Some(BodyProblem::BareLineEnding), "{payload:?}");
            // Only the real terminator ends it afterwards.
            let mut all = payload.to_vec();
            all.extend_from_slice(b".\r\n");
            let (_, used, done, _) = data(&all);
            assert!(done && used == all.len(), "{payload:?} + CRLF.CRLF");
        }
    }

    /// A line that starts with a dot loses exactly that dot in normalize
    /// mode too, whether the line before it ended in CRLF or a bare LF
    /// (it used to keep it after a bare LF: `..x` was stored as `..x`).
    #[test]
    fn normalize_mode_unstuffs_after_bare_line_endings() {
        let (out, _, done, problem) = decode_with(
            Framing::Dot,
            BareLfPolicy::Normalize,
            b"Subject: s\n\n... Some text appears here ...\n..\n.x\r\n.\r\n",
        );
        assert!(done);
        assert_eq!(problem, None);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Subject: s\r\n\r\n.. Some text appears here ...\r\n.\r\nx\r\n"
        );
    }

    #[test]
    fn normalize_mode_matches_the_line_reference_on_random_input() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let alphabet = b".\r\nab";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut input: Vec<u8> = (0..len)
                .map(|k| alphabet[((seed >> (k * 2 % 60)) % 5) as usize])
                .collect();
            input.extend_from_slice(b"\r\n.\r\n");
            let (out, used, done, problem) =
                decode_with(Framing::Dot, BareLfPolicy::Normalize, &input);
            if !done || problem.is_some() {
                continue;
            }
            let content = &input[..used - 3];
            assert_eq!(
                out,
                super::normalized_reference(content),
                "input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn normalize_mode_converts_but_never_ends_on_bare() {
        let (out, _, done, problem) = decode_with(
            Framing::Dot,
            BareLfPolicy::Normalize,
            b"a\nb\rc\r\n.\nd\r\n.\r\n",
        );
        assert!(done);
        assert_eq!(problem, None);
        assert_eq!(out, b"a\r\nb\r\nc\r\n.\r\nd\r\n");
        let (_, _, done, _) = decode_with(Framing::Dot, BareLfPolicy::Normalize, b"a\n.\r\nMAIL");
        assert!(!done);
    }

    #[test]
    fn nul_and_long_lines() {
        assert_eq!(data(b"a\0b\r\n.\r\n").3, Some(BodyProblem::NulByte));
        let mut long = vec![b'x'; 998];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(data(&long).3, None);
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, _, done, problem) = data(&long);
        assert!(done);
        assert_eq!(problem, Some(BodyProblem::LineTooLong));
    }

    #[test]
    fn size_limit() {
        let mut d = BodyDecoder::new(Framing::Dot, BareLfPolicy::Reject, 10, 50);
        let mut out = Vec::new();
        let (_, done) = d.feed(b"0123456789abc\r\n.\r\n", &mut out);
        assert!(done);
        assert_eq!(d.problem(), Some(BodyProblem::TooBig));
    }

    #[test]
    fn received_headers_counted_only_in_header_section() {
        let mut msg = Vec::new();
        for _ in 0..3 {
            msg.extend_from_slice(b"Received: from x\r\n");
        }
        msg.extend_from_slice(b"\r\nReceived: in body\r\n.\r\n");
        let mut d = BodyDecoder::new(Framing::Dot, BareLfPolicy::Reject, 1 << 20, 3);
        let mut out = Vec::new();
        d.feed(&msg, &mut out);
        assert_eq!(d.problem(), None);
        let mut d = BodyDecoder::new(Framing::Dot, BareLfPolicy::Reject, 1 << 20, 2);
        d.feed(&msg, &mut out);
        assert_eq!(d.problem(), Some(BodyProblem::TooManyHops));
    }

    #[test]
    fn chunks_keep_dots_and_add_final_crlf() {
        let mut d = BodyDecoder::new(Framing::Chunks, BareLfPolicy::Reject, 1 << 20, 50);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"a\r\n.\r", &mut out), (5, false));
        assert_eq!(d.feed(b"\n.b", &mut out), (3, false));
        d.finish_chunks(&mut out);
        assert_eq!(out, b"a\r\n.\r\n.b\r\n");
        assert_eq!(d.problem(), None);
    }

    #[test]
    fn long_lines_give_the_same_result_for_any_split() {
        // Found by the smtp_body fuzz target: the fast path emitted a
        // different prefix of an over-long line than the byte path.
        let mut input = b"Subject: x\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(0xc1u8, 1500));
        input.extend_from_slice(b"\r\n.\r\n");
        let whole = data(&input);
        assert_eq!(whole.3, Some(BodyProblem::LineTooLong));
        for split in [1, 17, 500, 1000, 1014, 1015, 1016, 1400, 1516] {
            let mut d = BodyDecoder::new(Framing::Dot, BareLfPolicy::Reject, 1 << 20, 50);
            let mut out = Vec::new();
            let (a, _) = d.feed(&input[..split], &mut out);
            let (b, done) = d.feed(&input[split..], &mut out);
            assert_eq!(
                (out, a + b, done, d.problem()),
                whole.clone(),
                "split at {split}"
            );
        }
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let input = b"Received: a\r\nX: y\r\n\r\n..dot\r\nline\r\n.\r\nNEXT";
        let (whole, used, done, _) = data(input);
        for split in 0..input.len() {
            let mut d = BodyDecoder::new(Framing::Dot, BareLfPolicy::Reject, 1 << 20, 50);
            let mut out = Vec::new();
            let (a, done_a) = d.feed(&input[..split], &mut out);
            let (b, done_b) = if done_a {
                (0, true)
            } else {
                d.feed(&input[split..], &mut out)
            };
            assert_eq!(out, whole, "split at {split}");
            assert_eq!(a + b, used);
            assert_eq!(done_b, done);
        }
    }
}
