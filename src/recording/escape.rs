//! JSON string escaping for event lines, byte for byte as serde_json writes
//! strings (RFC 8259 §7), without the allocation and per-character work of
//! going through serde: plain stretches are found a word at a time and
//! copied whole.
//!
//! Owns escaping only; it must never write anything serde_json would not
//! (the recordings' SHA-256 and the tests compare bytes).

/// How each byte is written inside a JSON string, as serde_json does:
/// 0 = as is, `u` = `\u00XX`, else the letter after a backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Length of the start of `bytes` that JSON writes as is (up to the first
/// control character, `"` or `\\`), eight bytes at a time: a word holds
/// such a byte when it has a byte below 0x20 or a zero byte after XOR with
/// `"` or `\\` (the "has less" and "has zero byte" tests of Sean Eron
/// Anderson's Bit Twiddling Hacks); only such a word is looked at byte by
/// byte.
fn plain_prefix_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let needs_escape = |b: &u8| ESCAPE[usize::from(*b)] != 0;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        let x = u64::from_le_bytes(word);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let found = below_space
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')));
        if found != 0
            && let Some(p) = word.iter().position(needs_escape)
        {
            return at + p;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(needs_escape)
        .unwrap_or(bytes.len() - at)
}

/// How many bytes at the start of `bytes` equal `b`, compared eight at a
/// time (a 32 KiB read of `/dev/zero` is one run).
fn run_len(bytes: &[u8], b: u8) -> usize {
    let pattern = u64::from_ne_bytes([b; 8]);
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        if u64::from_ne_bytes(word) != pattern {
            break;
        }
        at += 8;
    }
    at + bytes[at..].iter().take_while(|&&c| c == b).count()
}

/// Appends `text` JSON-escaped (without quotes), byte for byte as
/// serde_json writes strings: `\"`, `\\`, the short escapes of control
/// characters that have one and `\u00XX` for the others; NULs are left
/// out when `drop_nul`. Plain stretches are found a word at a time
/// ([`plain_prefix_len`]) and copied whole.
pub(super) fn escape_json(out: &mut Vec<u8>, text: &str, drop_nul: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.reserve(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let plain = plain_prefix_len(&bytes[i..]);
        out.extend_from_slice(&bytes[i..i + plain]);
        i += plain;
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let escape = ESCAPE[usize::from(b)];
        // A run of one escaped byte (NUL padding, `/dev/zero`): dropped,
        // or its escape written once, then what is written copied, doubling.
        let run = run_len(&bytes[i..], b);
        i += run;
        if b == 0 && drop_nul {
            continue;
        }
        let at = out.len();
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        let total = (out.len() - at) * run;
        while out.len() - at < total {
            let have = out.len() - at;
            out.extend_from_within(at..at + have.min(total - have));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn escaping_matches_serde_json_on_random_text() {
        // A fixed xorshift sequence: characters biased towards the escaped
        // ones and multibyte ones, at every alignment, up to 40 of them.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const PICK: &[char] = &[
            '\0', '\u{1}', '\u{1f}', ' ', '"', '\\', '\n', '\r', '\u{7f}', 'a', '~', 'é', '€',
            '😀', '\u{80}', '\u{a0}', '\u{ffff}',
        ];
        for _ in 0..20_000 {
            let len = (next() % 41) as usize;
            let text: String = (0..len)
                .map(|_| match next() % 4 {
                    0 => char::from((next() % 128) as u8),
                    _ => PICK[(next() % PICK.len() as u64) as usize],
                })
                .collect();
            let bytes = text.as_bytes();
            let len = bytes.len();
            let text = text.as_str();
            for drop_nul in [false, true] {
                let mut mine = Vec::new();
                escape_json(&mut mine, text, drop_nul);
                let expect = if drop_nul {
                    text.replace('\0', "")
                } else {
                    text.to_string()
                };
                let theirs = serde_json::to_vec(&expect).unwrap();
                assert_eq!(mine, theirs[1..theirs.len() - 1], "{text:?}");
            }
            if let Some(&b) = bytes.first() {
                let same = bytes.iter().take_while(|&&c| c == b).count();
                assert_eq!(run_len(bytes, b), same, "{bytes:?}");
            }
            let first = bytes.iter().position(|&b| ESCAPE[usize::from(b)] != 0);
            assert_eq!(plain_prefix_len(bytes), first.unwrap_or(len), "{bytes:?}");
        }
    }

    #[test]
    fn escaped_text_is_what_serde_json_writes() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\u{FFFD}\u{7f}\"\\");
        let runs = "\0".repeat(1000) + "x" + &"\n".repeat(7) + "\u{1}\u{1}\"\"";
        for text in [all.as_str(), "", "plain", "\0\0\0", "a\"b\\c\r\n", &runs] {
            let mut mine = Vec::new();
            escape_json(&mut mine, text, false);
            let theirs = serde_json::to_vec(text).unwrap();
            assert_eq!(mine, theirs[1..theirs.len() - 1], "{text:?}");
            let mut without_nul = Vec::new();
            escape_json(&mut without_nul, text, true);
            let theirs = serde_json::to_vec(&text.replace('\0', "")).unwrap();
            assert_eq!(without_nul, theirs[1..theirs.len() - 1], "{text:?}");
        }
    }
}
