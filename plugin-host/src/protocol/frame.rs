//! Framing: one message per line, read with a bound.
//!
//! [`LineReader`] returns each line without its `\n`. It never holds more than `max` bytes of one
//! line: a longer line is reported as [`Frame::TooLong`] as soon as the limit is crossed, and the
//! rest of it is skipped up to the next newline, so the reader is in step again for the line
//! after. The host uses it for the child's stdout (where a long line is a protocol violation) and
//! can use it for stderr log lines (where the head of a long line is still worth logging).

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// How much the reader asks of the stream at once.
const READ_BUFFER: usize = 64 * 1024;

/// What [`LineReader::next`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole line, without its `\n` (a `\r` before it is kept).
    Line(&'a [u8]),
    /// A line longer than the limit. `head` holds its first `limit` bytes; the rest is skipped.
    TooLong {
        /// The limit that was crossed, in bytes.
        limit: usize,
        /// The line's first `limit` bytes.
        head: &'a [u8],
    },
    /// The stream ended after these bytes, with no `\n` after them.
    Unterminated(&'a [u8]),
}

/// Reads newline-terminated lines of at most `max` bytes (not counting the `\n`) from a stream.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: BufReader<R>,
    /// The line being put together when it spans more than one read.
    line: Vec<u8>,
    max: usize,
    /// Bytes of the inner buffer handed out as the last [`Frame::Line`], consumed on the next
    /// call (so a line that fits in one read is handed out without a copy).
    consume_next: usize,
    /// Skipping the rest of an over-long line.
    discarding: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader of lines of at most `max` bytes.
    pub fn new(reader: R, max: usize) -> LineReader<R> {
        LineReader {
            inner: BufReader::with_capacity(READ_BUFFER, reader),
            line: Vec::new(),
            max,
            consume_next: 0,
            discarding: false,
        }
    }

    /// The next line; `Ok(None)` at the end of the stream. Cancel-safe between lines only: a
    /// caller that drops the future mid-line loses that line's start.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame<'_>>> {
        if self.consume_next > 0 {
            std::pin::Pin::new(&mut self.inner).consume(self.consume_next);
            self.consume_next = 0;
        }
        self.line.clear();
        loop {
            let buf = match self.inner.fill_buf().await {
                Ok(buf) => buf,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                self.discarding = false;
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Frame::Unterminated(&self.line)));
            }
            let available = buf.len();
            match find_newline(buf) {
                Some(end) if self.discarding => {
                    std::pin::Pin::new(&mut self.inner).consume(end + 1);
                    self.discarding = false;
                }
                Some(end) if self.line.is_empty() && end <= self.max => {
                    // The whole line is in the buffer: hand it out from there.
                    self.consume_next = end + 1;
                    return Ok(Some(Frame::Line(&self.inner.buffer()[..end])));
                }
                Some(end) => {
                    let room = self.max - self.line.len();
                    let fits = end <= room;
                    self.line.extend_from_slice(&buf[..end.min(room)]);
                    std::pin::Pin::new(&mut self.inner).consume(end + 1);
                    if fits {
                        return Ok(Some(Frame::Line(&self.line)));
                    }
                    return Ok(Some(self.too_long()));
                }
                None if self.discarding => {
                    std::pin::Pin::new(&mut self.inner).consume(available);
                }
                None => {
                    let room = self.max - self.line.len();
                    if available > room {
                        self.line.extend_from_slice(&buf[..room]);
                        std::pin::Pin::new(&mut self.inner).consume(available);
                        self.discarding = true;
                        return Ok(Some(self.too_long()));
                    }
                    self.line.extend_from_slice(buf);
                    std::pin::Pin::new(&mut self.inner).consume(available);
                }
            }
        }
    }

    fn too_long(&self) -> Frame<'_> {
        Frame::TooLong {
            limit: self.max,
            head: &self.line,
        }
    }
}

/// The index of the first `\n` in `bytes`, eight bytes at a time.
pub(crate) fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word) ^ NEWLINES;
        // Non-zero exactly when some byte of `x` is zero, i.e. some byte of the chunk is `\n`.
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            return chunk.iter().position(|&b| b == b'\n').map(|i| offset + i);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    /// Every frame of `input` read with limit `max`, as owned values, from a stream that delivers
    /// `input` in pieces of the given sizes.
    async fn frames(input: &[u8], max: usize, pieces: &[usize]) -> Vec<Owned> {
        let (mut tx, rx) = tokio::io::duplex(7);
        let input = input.to_vec();
        let pieces = pieces.to_vec();
        let writer = tokio::spawn(async move {
            let mut rest = &input[..];
            let mut sizes = pieces.iter().copied().cycle();
            while !rest.is_empty() {
                let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
                tx.write_all(&rest[..n]).await.unwrap();
                rest = &rest[n..];
            }
        });
        let mut reader = LineReader::new(rx, max);
        let mut out = Vec::new();
        while let Some(frame) = reader.next().await.unwrap() {
            out.push(match frame {
                Frame::Line(l) => Owned::Line(l.to_vec()),
                Frame::TooLong { limit, head } => Owned::TooLong(limit, head.to_vec()),
                Frame::Unterminated(l) => Owned::Unterminated(l.to_vec()),
            });
        }
        writer.await.unwrap();
        out
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Owned {
        Line(Vec<u8>),
        TooLong(usize, Vec<u8>),
        Unterminated(Vec<u8>),
    }

    /// What the reader must produce, computed the obvious way.
    fn expected(input: &[u8], max: usize) -> Vec<Owned> {
        let mut out = Vec::new();
        let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        let last = parts.pop().unwrap_or_default();
        for part in parts {
            out.push(if part.len() > max {
                Owned::TooLong(max, part[..max].to_vec())
            } else {
                Owned::Line(part.to_vec())
            });
        }
        if last.len() > max {
            out.push(Owned::TooLong(max, last[..max].to_vec()));
        } else if !last.is_empty() {
            out.push(Owned::Unterminated(last.to_vec()));
        }
        out
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn lines_and_an_unterminated_tail() {
        let got = rt().block_on(frames(b"one\n\ntwo\r\nthree", 10, &[2, 5]));
        assert_eq!(
            got,
            vec![
                Owned::Line(b"one".to_vec()),
                Owned::Line(Vec::new()),
                Owned::Line(b"two\r".to_vec()),
                Owned::Unterminated(b"three".to_vec()),
            ]
        );
    }

    #[test]
    fn an_over_long_line_is_reported_at_the_limit_and_the_next_line_is_read() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\n{\"ok\":1}\n");
        let got = rt().block_on(frames(&input, 8, &[3]));
        assert_eq!(
            got,
            vec![
                Owned::TooLong(8, vec![b'x'; 8]),
                Owned::Line(b"{\"ok\":1}".to_vec())
            ]
        );
        // Exactly at the limit is fine; one more byte is not.
        let got = rt().block_on(frames(b"12345678\n123456789\n", 8, &[64]));
        assert_eq!(
            got,
            vec![
                Owned::Line(b"12345678".to_vec()),
                Owned::TooLong(8, b"12345678".to_vec())
            ]
        );
    }

    #[test]
    fn an_endless_line_is_reported_without_buffering_it() {
        rt().block_on(async {
            // A stream that never sends a newline: the reader must answer once it has seen more
            // than the limit, not wait for the end.
            let (mut tx, rx) = tokio::io::duplex(1024);
            let writer = tokio::spawn(async move {
                let chunk = [b'a'; 1024];
                while tx.write_all(&chunk).await.is_ok() {}
            });
            let mut reader = LineReader::new(rx, 10_000);
            match reader.next().await.unwrap() {
                Some(Frame::TooLong { limit, head }) => {
                    assert_eq!((limit, head.len()), (10_000, 10_000));
                }
                other => panic!("expected TooLong, got {other:?}"),
            }
            assert!(reader.line.capacity() < 2 * 10_000 + READ_BUFFER);
            drop(reader);
            writer.await.unwrap();
        });
    }

    #[test]
    fn find_newline_agrees_with_a_plain_search() {
        let mut bytes = vec![0u8; 40];
        assert_eq!(find_newline(&bytes), None);
        for i in 0..40 {
            bytes[i] = b'\n';
            assert_eq!(find_newline(&bytes), Some(i));
            bytes[i] = 0x8a; // high bit set, low bits of '\n'
            assert_eq!(find_newline(&bytes), None);
            bytes[i] = 0;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_split_anywhere_give_the_expected_frames(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), any::<u8>(), Just(b'a')], 0..400),
            max in 0usize..40,
            pieces in proptest::collection::vec(1usize..50, 1..8),
        ) {
            let got = rt().block_on(frames(&input, max, &pieces));
            prop_assert_eq!(got, expected(&input, max));
        }

        #[test]
        fn lines_within_the_limit_round_trip(
            lines in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..100),
                0..20),
            pieces in proptest::collection::vec(1usize..300, 1..4),
        ) {
            let mut input = Vec::new();
            for line in &lines {
                input.extend_from_slice(line);
                input.push(b'\n');
            }
            let got = rt().block_on(frames(&input, 100, &pieces));
            let want: Vec<Owned> = lines.into_iter().map(Owned::Line).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn find_newline_matches_position(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(find_newline(&bytes), bytes.iter().position(|&b| b == b'\n'));
        }
    }
}
