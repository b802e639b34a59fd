//! An incremental UTF-8 decoder: bytes in arbitrary chunks, text out, with
//! an incomplete trailing sequence (at most 3 bytes) kept for the next chunk
//! and invalid bytes replaced by U+FFFD.

/// Decodes one byte stream into text across chunk boundaries.
#[derive(Debug, Default, Clone)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Decodes `bytes` (after whatever was pending) and returns the complete
    /// text; an incomplete sequence at the end is kept for the next call.
    pub fn decode(&mut self, bytes: &[u8]) -> String {
        let mut out = String::with_capacity(self.pending.len() + bytes.len());
        self.decode_into(bytes, |text| out.push_str(text));
        out
    }

    /// Like [`Utf8Decoder::decode`], handing the text to `sink` in pieces
    /// instead of collecting it: no copy of the input when nothing is
    /// pending (the usual case).
    pub fn decode_into(&mut self, bytes: &[u8], mut sink: impl FnMut(&str)) {
        if self.pending.is_empty() {
            let rest = decode_valid(bytes, &mut sink);
            self.pending.extend_from_slice(rest);
            return;
        }
        // Complete the pending sequence with at most 3 more bytes, then go
        // on from where that sequence ended.
        let take = bytes.len().min(4 - self.pending.len().min(3));
        let mut head = std::mem::take(&mut self.pending);
        let joined = head.len();
        head.extend_from_slice(&bytes[..take]);
        let rest = decode_valid(&head, &mut sink);
        if rest.len() == head.len() && take == bytes.len() {
            // Still incomplete: keep it all for the next chunk.
            self.pending = head;
            return;
        }
        // Bytes of `head` consumed beyond the old pending ones.
        let consumed = (head.len() - rest.len()).saturating_sub(joined);
        let tail = decode_valid(&bytes[consumed..], &mut sink);
        self.pending.extend_from_slice(tail);
    }

    /// Flushes what is pending at the end of the stream (lossily).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Hands the valid text of `bytes` to `sink`, U+FFFD for each invalid
/// sequence, and returns the incomplete sequence at the end (if any).
fn decode_valid<'a>(mut rest: &'a [u8], sink: &mut impl FnMut(&str)) -> &'a [u8] {
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                if !text.is_empty() {
                    sink(text);
                }
                return &[];
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                if let Ok(text) = std::str::from_utf8(valid)
                    && !text.is_empty()
                {
                    sink(text);
                }
                match e.error_len() {
                    Some(n) => {
                        sink("\u{FFFD}");
                        rest = &after[n..];
                    }
                    None => return after,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_multibyte_sequences_are_joined() {
        let text = "aé€😀z";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut d = Utf8Decoder::default();
            let mut out = d.decode(&bytes[..split]);
            out.push_str(&d.decode(&bytes[split..]));
            out.push_str(&d.finish());
            assert_eq!(out, text, "split at {split}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let text = "ü😀";
        let mut d = Utf8Decoder::default();
        let out: String = text.as_bytes().iter().map(|b| d.decode(&[*b])).collect();
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.decode(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.decode(b"\xe2\x82"), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
