//! Splits a byte stream into newline-terminated lines with a length bound. An overlong line is
//! reported once and skipped up to its newline, so one bad request never desynchronises the
//! stream or closes the connection. Holds at most `max` bytes of an unfinished line.

/// What the splitter hands out: a complete line, or the news that one was too long.
pub type Line<'a> = Result<&'a [u8], TooLong>;

/// An overlong line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// The splitter's state.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    skipping: bool,
}

impl LineSplitter {
    /// Bytes held for an unfinished line.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes; calls `on_line` with each complete line (without `\n` and a trailing `\r`)
    /// or `Err(TooLong)` once per line longer than `max` bytes.
    pub fn feed(&mut self, input: &[u8], max: usize, on_line: &mut dyn FnMut(Line<'_>)) {
        self.feed_with_ends(input, max, &mut |line, _| on_line(line));
    }

    /// As `feed`, and tells with each line where it ended in `input` when the splitter holds
    /// nothing after it (`Some(offset just past its newline)`): a caller may stop there, call
    /// `reset`, and feed `input[offset..]` again later with the same result.
    pub fn feed_with_ends(
        &mut self,
        mut input: &[u8],
        max: usize,
        on_line: &mut dyn FnMut(Line<'_>, Option<usize>),
    ) {
        let total = input.len();
        while !input.is_empty() {
            let newline = input.iter().position(|&b| b == b'\n');
            let (chunk, rest, ended) = match newline {
                Some(i) => (&input[..i], &input[i + 1..], true),
                None => (input, &[][..], false),
            };
            input = rest;
            let end = ended.then_some(total - input.len());
            if self.skipping {
                if ended {
                    self.skipping = false;
                }
                continue;
            }
            if self.partial.len() + chunk.len() > max {
                self.partial = Vec::new();
                self.skipping = !ended;
                on_line(Err(TooLong), end);
                continue;
            }
            if !ended {
                self.partial.extend_from_slice(chunk);
                continue;
            }
            if self.partial.is_empty() {
                // The common case: a whole line inside one read, no copy.
                on_line(Ok(strip_cr(chunk)), end);
            } else {
                self.partial.extend_from_slice(chunk);
                let line = std::mem::take(&mut self.partial);
                on_line(Ok(strip_cr(&line)), end);
                if line.capacity() <= 4096 {
                    // Keep a small buffer for the next partial line.
                    self.partial = line;
                    self.partial.clear();
                }
            }
        }
    }

    /// Forgets any partial line (the caller re-feeds from a clean point, see `feed_with_ends`).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.skipping = false;
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<Result<Vec<u8>, TooLong>> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, max, &mut |l| out.push(l.map(|b| b.to_vec())));
        }
        out
    }

    #[test]
    fn whole_partial_and_crlf_lines() {
        let got = split(&[b"a\nbc", b"d\r\n\n", b"e"], 100);
        assert_eq!(
            got,
            vec![Ok(b"a".to_vec()), Ok(b"bcd".to_vec()), Ok(b"".to_vec())]
        );
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped() {
        let got = split(&[b"12345", b"6789", b"0\nok\n"], 8);
        assert_eq!(got, vec![Err(TooLong), Ok(b"ok".to_vec())]);
        let got = split(&[b"123456789\nok\n"], 8);
        assert_eq!(got, vec![Err(TooLong), Ok(b"ok".to_vec())]);
    }

    #[test]
    fn stopping_at_a_line_end_and_refeeding_gives_the_same_lines() {
        let input = b"ab\n123456789\ncd\nef";
        let whole = split(&[input], 8);
        for stop_after in 0..3 {
            let mut s = LineSplitter::default();
            let mut out = Vec::new();
            let mut cut = None;
            s.feed_with_ends(input, 8, &mut |l, end| {
                if cut.is_none() {
                    out.push(l.map(|b| b.to_vec()));
                    if out.len() > stop_after {
                        cut = end;
                    }
                }
            });
            let cut = cut.expect("each of the first three lines ends cleanly");
            s.reset();
            s.feed(&input[cut..], 8, &mut |l| out.push(l.map(|b| b.to_vec())));
            assert_eq!(out, whole, "stopped after line {stop_after}");
        }
    }

    #[test]
    fn any_split_gives_the_same_lines() {
        let input = b"{\"a\":1}\n\r\nxxxxxxxxxxxxxxxxxxxx\n{\"b\":2}\npartial";
        let whole = split(&[input], 10);
        for cut in 0..input.len() {
            assert_eq!(
                split(&[&input[..cut], &input[cut..]], 10),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(split(&bytes, 10), whole);
    }
}
