//! Body framing, decoded incrementally: Content-Length, chunked (with
//! trailers) and read-until-close. Payload comes out; framing stays in.

use std::ops::Range;

use super::{parse_field_line, BodyKind, HttpError, Limits};

/// One step of [`BodyDecoder::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input used up, framing and payload.
    pub consumed: usize,
    /// Payload within the input (possibly empty); always ends at or before
    /// `consumed`.
    pub data: Range<usize>,
    /// The body is complete; input past `consumed` belongs to the next
    /// message.
    pub done: bool,
}

/// Where the decoder is within the body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Content-Length: this many payload bytes left.
    Length(u64),
    /// Everything is payload until the connection closes.
    UntilClose,
    /// In a chunk-size line: the size so far, whether any digit was seen,
    /// where in the line we are, line length so far.
    Size {
        value: u64,
        digits: bool,
        phase: SizePhase,
        line: usize,
    },
    /// Saw the CR ending a chunk-size line.
    SizeLf(u64),
    /// In chunk data: this many bytes left.
    Data(u64),
    /// Need the CR after chunk data.
    DataCr,
    /// Need the LF after chunk data.
    DataLf,
    /// In the trailer section, buffering the current line.
    Trailer,
    /// The body is complete.
    Done,
}

/// Where in a chunk-size line the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    /// Hex digits.
    Digits,
    /// Whitespace after the digits (BWS): only more of it or `;` may follow.
    Space,
    /// Chunk extensions, skipped up to CRLF.
    Ext,
}

/// Decodes one message body, fed in pieces of any size.
///
/// An error is final for the connection: the framing is lost.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    limits: Limits,
    /// The trailer line being read (bounded by `limits.max_head`).
    line: Vec<u8>,
    /// Trailer section bytes so far (bounded by `limits.max_head`).
    trailer_bytes: usize,
    trailers: Vec<(String, String)>,
}

impl BodyDecoder {
    /// A decoder for a body framed as `kind`, with default [`Limits`].
    pub fn new(kind: BodyKind) -> Self {
        Self::with_limits(kind, Limits::default())
    }

    /// A decoder for a body framed as `kind`; `limits` bound the chunk-size
    /// line and the trailer section.
    pub fn with_limits(kind: BodyKind, limits: Limits) -> Self {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::Size {
                value: 0,
                digits: false,
                phase: SizePhase::Digits,
                line: 0,
            },
            BodyKind::UntilClose => State::UntilClose,
        };
        BodyDecoder {
            state,
            limits,
            line: Vec::new(),
            trailer_bytes: 0,
            trailers: Vec::new(),
        }
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Trailer fields of a chunked body (complete once [`Self::is_done`]).
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// Decodes from `input`, appending payload to `out`. Returns bytes
    /// consumed and whether the body is complete; bytes past a complete
    /// body are left alone.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), HttpError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let step = self.step(rest)?;
            out.extend_from_slice(&rest[step.data.clone()]);
            pos += step.consumed;
            // `step` consumes at least one byte of non-empty input unless
            // the body is done, so this loop ends.
            if step.done || pos >= input.len() || step.consumed == 0 {
                return Ok((pos, step.done));
            }
        }
    }

    /// Zero-copy decoding: consumes framing up to the next run of payload
    /// and returns where that payload lies in `input`. Call again with
    /// `input[consumed..]` until `done` or the input is used up.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, HttpError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::Length(n) => {
                    let take = clamp(n, input.len() - pos);
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(self.data(pos, pos + take));
                }
                State::UntilClose => return Ok(self.data(pos, input.len())),
                State::Data(n) => {
                    let take = clamp(n, input.len() - pos);
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    return Ok(self.data(pos, pos + take));
                }
                State::Size { .. }
                | State::SizeLf(_)
                | State::DataCr
                | State::DataLf
                | State::Trailer => {
                    self.framing_byte(input[pos])?;
                    pos += 1;
                }
            }
        }
        Ok(Step {
            consumed: pos,
            data: pos..pos,
            done: self.is_done(),
        })
    }

    /// Tells the decoder the connection has closed: fine for a body read
    /// until close or already complete, [`HttpError::Truncated`] otherwise.
    pub fn finish_eof(&mut self) -> Result<(), HttpError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(HttpError::Truncated),
        }
    }

    /// A step ending with payload `start..end`.
    fn data(&self, start: usize, end: usize) -> Step {
        Step {
            consumed: end,
            data: start..end,
            done: self.is_done(),
        }
    }

    /// Advances the chunked framing by one byte.
    fn framing_byte(&mut self, b: u8) -> Result<(), HttpError> {
        self.state = match self.state {
            State::Size {
                value,
                digits,
                phase,
                line,
            } => {
                let line = line + 1;
                if line > self.limits.max_chunk_line {
                    return Err(HttpError::Malformed("chunk-size line too long"));
                }
                match (b, phase, hex(b)) {
                    (b'\r', _, _) if digits => State::SizeLf(value),
                    (b'\n', _, _) => return Err(HttpError::Malformed("bare LF in chunk framing")),
                    (_, SizePhase::Digits, Some(d)) => {
                        // Refuse before shifting out high bits: a wrapped
                        // size would desynchronise us from whoever reads
                        // this after us.
                        if value >> 60 != 0 {
                            return Err(HttpError::Framing("chunk size overflows"));
                        }
                        State::Size {
                            value: value << 4 | u64::from(d),
                            digits: true,
                            phase,
                            line,
                        }
                    }
                    // BWS, then `;` starts the (ignored) chunk extensions.
                    (b' ' | b'\t', SizePhase::Digits | SizePhase::Space, _) if digits => {
                        State::Size {
                            value,
                            digits,
                            phase: SizePhase::Space,
                            line,
                        }
                    }
                    (b';', SizePhase::Digits | SizePhase::Space, _) if digits => State::Size {
                        value,
                        digits,
                        phase: SizePhase::Ext,
                        line,
                    },
                    // Extensions: anything but control characters.
                    (_, SizePhase::Ext, _) if super::is_field_value_byte(b) => State::Size {
                        value,
                        digits,
                        phase,
                        line,
                    },
                    (_, SizePhase::Ext, _) => {
                        return Err(HttpError::Malformed("invalid chunk extension"))
                    }
                    _ => return Err(HttpError::Malformed("invalid chunk size")),
                }
            }
            State::SizeLf(value) => match (b, value) {
                (b'\n', 0) => State::Trailer,
                (b'\n', n) => State::Data(n),
                _ => return Err(HttpError::Malformed("bare CR in chunk framing")),
            },
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size {
                value: 0,
                digits: false,
                phase: SizePhase::Digits,
                line: 0,
            },
            State::DataCr | State::DataLf => {
                return Err(HttpError::Malformed("chunk data not followed by CRLF"))
            }
            State::Trailer => return self.trailer_byte(b),
            // Not reached: `step` handles the other states itself.
            State::Length(_) | State::UntilClose | State::Data(_) | State::Done => {
                return Err(HttpError::Malformed("decoder state"))
            }
        };
        Ok(())
    }

    /// One byte of the trailer section, buffered by line.
    fn trailer_byte(&mut self, b: u8) -> Result<(), HttpError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.limits.max_head {
            return Err(HttpError::HeadTooLarge);
        }
        if b != b'\n' {
            self.line.push(b);
            return Ok(());
        }
        let Some(line) = self.line.strip_suffix(b"\r") else {
            return Err(HttpError::Malformed("bare LF in chunk framing"));
        };
        if line.is_empty() {
            self.state = State::Done;
        } else {
            if line.contains(&b'\r') {
                return Err(HttpError::Malformed("bare CR in trailer"));
            }
            if self.trailers.len() >= self.limits.max_headers {
                return Err(HttpError::TooManyHeaders);
            }
            let field = parse_field_line(line)?;
            self.trailers.push(field);
        }
        self.line.clear();
        Ok(())
    }
}

/// min(n, avail) as usize.
fn clamp(n: u64, avail: usize) -> usize {
    usize::try_from(n).map_or(avail, |n| n.min(avail))
}

/// Value of a hex digit.
fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}
