//! The rcp protocol's control records (OpenSSH `scp.c`, `sink()`), parsed
//! strictly: every line comes from the client and is untrusted.

/// Longest control record line accepted, in bytes, `\n` included (OpenSSH
/// reads records into a 2048-byte buffer).
pub const MAX_LINE_BYTES: usize = 2048;

/// Longest file name in a `C`/`D` record, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// Largest file size accepted in a `C` record, in bytes (`off_t`'s range).
const MAX_SIZE: u64 = i64::MAX as u64;

/// One control record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `C<mode> <size> <name>`: a file of `size` bytes follows.
    File {
        /// Permission bits (at most `0o7777`).
        mode: u32,
        /// Length of the data that follows, in bytes.
        size: u64,
        /// One path component.
        name: String,
    },
    /// `D<mode> 0 <name>`: a directory's records follow, up to its `E`.
    Directory {
        /// Permission bits (at most `0o7777`).
        mode: u32,
        /// One path component.
        name: String,
    },
    /// `E`: the end of the current directory.
    End,
    /// `T<mtime> <usec> <atime> <usec>`: times for the next `C` or `D`.
    Times {
        /// Modification time, seconds since the epoch.
        mtime: i64,
        /// Access time, seconds since the epoch.
        atime: i64,
    },
    /// `\x01<message>`: the peer could not send one file (a warning).
    Warning(String),
    /// `\x02<message>`: the peer gives up.
    Fatal(String),
}

/// Why a control record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The line does not end in `\n` (or is longer than [`MAX_LINE_BYTES`]).
    #[error("record not terminated by a newline within {MAX_LINE_BYTES} bytes")]
    Unterminated,
    /// Not one of `C D E T \x01 \x02`.
    #[error("expected control record")]
    Unknown,
    /// The mode is not exactly 4 octal digits then a space.
    #[error("bad mode")]
    Mode,
    /// The size is not a decimal number then a space, or is too large.
    #[error("bad size")]
    Size,
    /// A `T` record's fields are malformed or out of range.
    #[error("bad times")]
    Times,
    /// The name is empty, `.`, `..`, holds `/` or NUL, is not UTF-8, or is
    /// longer than [`MAX_NAME_BYTES`].
    #[error("unexpected filename")]
    Name,
}

/// Parses one record line (`line` includes its final `\n`).
pub fn parse_record(line: &[u8]) -> Result<Record, RecordError> {
    let body = match line.split_last() {
        Some((b'\n', body)) if line.len() <= MAX_LINE_BYTES => body,
        _ => return Err(RecordError::Unterminated),
    };
    let Some((&kind, rest)) = body.split_first() else {
        return Err(RecordError::Unknown);
    };
    match kind {
        0x01 | 0x02 => {
            let text = String::from_utf8_lossy(rest).into_owned();
            Ok(if kind == 0x01 {
                Record::Warning(text)
            } else {
                Record::Fatal(text)
            })
        }
        b'E' if rest.is_empty() => Ok(Record::End),
        b'T' => parse_times(rest),
        b'C' | b'D' => {
            let (mode, rest) = parse_mode(rest)?;
            let (size, name) = parse_number(rest, MAX_SIZE).ok_or(RecordError::Size)?;
            let name = parse_name(name)?;
            Ok(if kind == b'C' {
                Record::File { mode, size, name }
            } else {
                Record::Directory { mode, name }
            })
        }
        _ => Err(RecordError::Unknown),
    }
}

/// `NNNN ` (exactly four octal digits and a space).
fn parse_mode(b: &[u8]) -> Result<(u32, &[u8]), RecordError> {
    if b.len() < 5 || b[4] != b' ' {
        return Err(RecordError::Mode);
    }
    let mut mode = 0u32;
    for &d in &b[..4] {
        if !(b'0'..=b'7').contains(&d) {
            return Err(RecordError::Mode);
        }
        mode = (mode << 3) | u32::from(d - b'0');
    }
    Ok((mode, &b[5..]))
}

/// Decimal digits (1..=19 of them, value at most `max`) then one space;
/// returns the value and what follows the space.
fn parse_number(b: &[u8], max: u64) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || b.get(digits) != Some(&b' ') {
        return None;
    }
    let mut v = 0u64;
    for &d in &b[..digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    (v <= max).then_some((v, &b[digits + 1..]))
}

fn parse_name(b: &[u8]) -> Result<String, RecordError> {
    if b.is_empty()
        || b.len() > MAX_NAME_BYTES
        || b == b"."
        || b == b".."
        || b.contains(&b'/')
        || b.contains(&0)
    {
        return Err(RecordError::Name);
    }
    String::from_utf8(b.to_vec()).map_err(|_| RecordError::Name)
}

/// `<mtime> <usec> <atime> <usec>` after the `T`.
fn parse_times(b: &[u8]) -> Result<Record, RecordError> {
    let max = i64::MAX as u64;
    let (mtime, b) = parse_number(b, max).ok_or(RecordError::Times)?;
    let (usec, b) = parse_number(b, 999_999).ok_or(RecordError::Times)?;
    let (atime, b) = parse_number(b, max).ok_or(RecordError::Times)?;
    // The last field ends the line, not a space.
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 6 || digits != b.len() {
        return Err(RecordError::Times);
    }
    let _ = usec;
    Ok(Record::Times {
        mtime: mtime as i64,
        atime: atime as i64,
    })
}
