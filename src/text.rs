//! Display-safe text: what one person types that another person later reads
//! (a reason shown to approvers, a name in a listing, a kill reason in a
//! terminal, a Slack message, a recorded terminal replayed to a reviewer).
//!
//! Owns the character rules only; it never decides what a field may mean
//! and never does I/O. Four tools:
//!
//! - [`check_visible`] refuses text holding control characters, bidi
//!   controls or invisible characters ("Trojan Source", CVE-2021-42574):
//!   for reasons and other free text people type;
//! - [`display_safe`] replaces them with U+FFFD for display: for names,
//!   subjects, emails and kill reasons that come from elsewhere;
//! - [`slack_escape`] escapes `&`, `<` and `>` as Slack's message format
//!   requires (<https://api.slack.com/reference/surfaces/formatting#escaping>),
//!   so `<!channel>` or `<https://evil|Approve>` stay text;
//! - [`TerminalFilter`] neutralises a recorded terminal's output before it
//!   reaches a reviewer's terminal (ECMA-48 / xterm control sequences): it
//!   keeps colours, cursor movement, erasing and modes and drops everything
//!   that makes a terminal answer, reach the clipboard or talk to the OS
//!   (OSC, DCS, SOS/PM/APC strings, device and window reports).

use std::borrow::Cow;

/// Why [`check_visible`] refused a text. `offset` is the byte offset of the
/// character in the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A C0/C1 control character (newline and tab included) or DEL.
    #[error("control character U+{codepoint:04X} at byte {offset}")]
    Control {
        /// The character's code point.
        codepoint: u32,
        /// Its byte offset.
        offset: usize,
    },
    /// A bidirectional formatting character (Unicode UAX #9: LRE, RLE,
    /// PDF, LRO, RLO, LRI, RLI, FSI, PDI, LRM, RLM, ALM).
    #[error("bidirectional control U+{codepoint:04X} at byte {offset}")]
    Bidi {
        /// The character's code point.
        codepoint: u32,
        /// Its byte offset.
        offset: usize,
    },
    /// A zero-width or otherwise invisible character (ZWSP, ZWJ, word
    /// joiner, BOM, soft hyphen, tags, line/paragraph separators, ...).
    #[error("invisible character U+{codepoint:04X} at byte {offset}")]
    Invisible {
        /// The character's code point.
        codepoint: u32,
        /// Its byte offset.
        offset: usize,
    },
}

/// What kind of hidden character `c` is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hidden {
    Control,
    Bidi,
    Invisible,
}

fn classify(c: char) -> Option<Hidden> {
    if c.is_control() {
        return Some(Hidden::Control);
    }
    match c as u32 {
        0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069 => Some(Hidden::Bidi),
        0x00AD
        | 0x034F
        | 0x115F
        | 0x1160
        | 0x17B4
        | 0x17B5
        | 0x180E
        | 0x200B..=0x200D
        | 0x2028
        | 0x2029
        | 0x2060..=0x2064
        | 0x206A..=0x206F
        | 0x3164
        | 0xFEFF
        | 0xFFA0
        | 0xFFF9..=0xFFFB
        | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A
        | 0xE0000..=0xE007F => Some(Hidden::Invisible),
        _ => None,
    }
}

/// Refuses `text` when it holds a character that hides or reorders what a
/// reader sees: control characters (newlines and tabs included), bidi
/// controls (Trojan Source, CVE-2021-42574) and zero-width or invisible
/// characters. Plain Unicode (accents, CJK, emoji without ZWJ) passes.
///
/// # Errors
/// The first offending character as a [`TextError`].
pub fn check_visible(text: &str) -> Result<(), TextError> {
    for (offset, c) in text.char_indices() {
        let codepoint = c as u32;
        match classify(c) {
            None => {}
            Some(Hidden::Control) => return Err(TextError::Control { codepoint, offset }),
            Some(Hidden::Bidi) => return Err(TextError::Bidi { codepoint, offset }),
            Some(Hidden::Invisible) => return Err(TextError::Invisible { codepoint, offset }),
        }
    }
    Ok(())
}

/// True when [`check_visible`] accepts `text`.
pub fn is_visible(text: &str) -> bool {
    check_visible(text).is_ok()
}

/// `text` with every control, bidi and invisible character replaced by
/// U+FFFD (so a reader sees that something was there); borrowed when
/// nothing needed replacing. For names, subjects, emails and kill reasons
/// shown in listings and terminals.
pub fn display_safe(text: &str) -> Cow<'_, str> {
    if is_visible(text) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if classify(c).is_some() {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// [`display_safe`] line by line: `\n` is kept (so a listing keeps its
/// lines), everything else hidden is replaced. For whole replies that
/// hold names and reasons (the broker's answers, a listing).
pub fn display_safe_lines(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| c == '\n' || classify(c).is_none()) {
        return Cow::Borrowed(text);
    }
    let lines: Vec<Cow<'_, str>> = text.split('\n').map(display_safe).collect();
    Cow::Owned(lines.join("\n"))
}

/// `text` escaped for Slack's message format: `&` → `&amp;`, `<` → `&lt;`,
/// `>` → `&gt;` (Slack, "Formatting text for app surfaces: Escaping
/// text"). Other webhook consumers that render HTML get the same safety.
pub fn slack_escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Longest control sequence (CSI) kept, in characters; longer ones are
/// dropped whole.
const MAX_CSI_CHARS: usize = 64;

/// Longest string (OSC, DCS, SOS, PM, APC) swallowed while waiting for its
/// terminator, in characters; after that the filter returns to text, so
/// an unterminated string cannot hide the rest of a recording.
pub const MAX_STRING_CHARS: usize = 4096;

#[derive(Debug, Clone, Default)]
enum State {
    #[default]
    Ground,
    /// After ESC; holds intermediates (0x20-0x2F) seen so far.
    Escape(String),
    /// In a CSI; holds what was read after `ESC [`.
    Csi(String),
    /// In a CSI too long to keep: dropped up to its final character.
    CsiDropped,
    /// In an OSC/DCS/SOS/PM/APC string (dropped); `bool`: ESC just seen;
    /// `usize`: characters swallowed.
    Str(bool, usize),
}

/// Neutralises terminal output (ECMA-48, xterm's ctlseqs) for a reviewer's
/// terminal, keeping state across calls so a sequence split between two
/// recorded events is still recognised.
///
/// Kept: text, C0 formatting (BS, HT, LF, CR, BEL outside strings), SGR
/// colours, cursor movement, erase/insert/delete, scrolling regions,
/// DEC private modes (`CSI ? Pm h/l`), 7-bit ESC sequences such as
/// `ESC 7`, `ESC 8`, `ESC ( B`.
///
/// Dropped: every OSC (OSC 52 clipboard, titles, colour queries,
/// hyperlinks), DCS, SOS, PM and APC strings; CSI sequences that make the
/// terminal answer or act on the window (DSR `n`, DA `c`, window ops and
/// title reports `t`, DECRQM, DECRQCRA, XTVERSION and the like: anything
/// outside the kept list); `ESC Z` (DECID); C1 controls (U+0080-U+009F,
/// which some terminals obey in UTF-8); other C0 controls (ENQ, which
/// makes a terminal send its answerback, SO/SI, ...).
#[derive(Debug, Clone, Default)]
pub struct TerminalFilter {
    state: State,
}

impl TerminalFilter {
    /// A filter at the start of a stream.
    pub fn new() -> TerminalFilter {
        TerminalFilter::default()
    }

    /// The neutralised form of the next piece of output.
    pub fn filter(&mut self, input: &str) -> String {
        let mut out = String::with_capacity(input.len());
        for c in input.chars() {
            self.push(c, &mut out);
        }
        out
    }

    fn push(&mut self, c: char, out: &mut String) {
        match std::mem::take(&mut self.state) {
            State::Ground => self.ground(c, out),
            State::Escape(intermediates) => self.escape(intermediates, c, out),
            State::Csi(body) => self.csi(body, c, out),
            State::CsiDropped => match c {
                '0'..='?' | ' '..='/' => self.state = State::CsiDropped,
                '@'..='~' | '\u{18}' | '\u{1A}' => {}
                '\u{1B}' => self.state = State::Escape(String::new()),
                _ => self.ground(c, out),
            },
            State::Str(esc, n) => self.string(esc, n, c),
        }
    }

    fn ground(&mut self, c: char, out: &mut String) {
        match c as u32 {
            0x1B => self.state = State::Escape(String::new()),
            // BEL, BS, HT, LF, VT, FF, CR.
            0x07..=0x0D => out.push(c),
            0x00..=0x1F | 0x7F => {}
            // C1: CSI starts a sequence; DCS, SOS, OSC, PM, APC a string.
            0x9B => self.state = State::Csi(String::new()),
            0x90 | 0x98 | 0x9D | 0x9E | 0x9F => self.state = State::Str(false, 0),
            0x80..=0x9F => {}
            _ => out.push(c),
        }
    }

    fn escape(&mut self, mut intermediates: String, c: char, out: &mut String) {
        match c {
            '[' if intermediates.is_empty() => self.state = State::Csi(String::new()),
            ']' | 'P' | 'X' | '^' | '_' if intermediates.is_empty() => {
                self.state = State::Str(false, 0);
            }
            'Z' if intermediates.is_empty() => {}
            '\u{1B}' => self.state = State::Escape(String::new()),
            ' '..='/' if intermediates.len() < 4 => {
                intermediates.push(c);
                self.state = State::Escape(intermediates);
            }
            '0'..='~' => {
                out.push('\u{1B}');
                out.push_str(&intermediates);
                out.push(c);
            }
            // Anything else ends the sequence unfinished: drop it and
            // treat the character as text.
            _ => self.ground(c, out),
        }
    }

    fn csi(&mut self, mut body: String, c: char, out: &mut String) {
        match c {
            // Parameters and intermediates.
            '0'..='?' | ' '..='/' if body.chars().count() < MAX_CSI_CHARS => {
                body.push(c);
                self.state = State::Csi(body);
            }
            '0'..='?' | ' '..='/' => self.state = State::CsiDropped,
            '@'..='~' => {
                if csi_is_kept(&body, c) {
                    out.push_str("\u{1B}[");
                    out.push_str(&body);
                    out.push(c);
                }
            }
            // CAN and SUB abort a sequence; ESC starts another.
            '\u{18}' | '\u{1A}' => {}
            '\u{1B}' => self.state = State::Escape(String::new()),
            _ => self.ground(c, out),
        }
    }

    fn string(&mut self, esc: bool, n: usize, c: char) {
        let n = n + 1;
        match c as u32 {
            // BEL or ST ends it, as do CAN and SUB.
            0x07 | 0x9C | 0x18 | 0x1A => {}
            0x5C if esc => {}
            0x1B => self.state = State::Str(true, n),
            _ if n >= MAX_STRING_CHARS => {}
            _ => self.state = State::Str(false, n),
        }
    }
}

/// True for the CSI sequences that only draw: `body` is what came between
/// `ESC [` and the final character `last`.
fn csi_is_kept(body: &str, last: char) -> bool {
    let private = body.starts_with(['?', '>', '<', '=']);
    let intermediates: String = body.chars().filter(|c| (' '..='/').contains(c)).collect();
    match last {
        // Set/reset mode, public or DEC private.
        'h' | 'l' => intermediates.is_empty() && !body.starts_with(['>', '<', '=']),
        // Cursor style (DECSCUSR, `CSI Ps SP q`).
        'q' => !private && intermediates == " ",
        'A'..='H'
        | 'J'
        | 'K'
        | 'L'
        | 'M'
        | 'P'
        | 'S'
        | 'T'
        | 'X'
        | 'Z'
        | '@'
        | '`'
        | 'a'
        | 'b'
        | 'd'
        | 'e'
        | 'f'
        | 'g'
        | 'm'
        | 'r'
        | 's'
        | 'u'
        | 'I' => !private && intermediates.is_empty(),
        _ => false,
    }
}

/// Neutralises one complete piece of terminal output (see
/// [`TerminalFilter`]); for a stream split into events, keep one filter.
pub fn neutralise_terminal_output(text: &str) -> String {
    TerminalFilter::new().filter(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn display_safe_lines_keeps_newlines_only() {
        assert!(matches!(
            display_safe_lines("a\nb\n"),
            Cow::Borrowed("a\nb\n")
        ));
        assert_eq!(
            display_safe_lines("r1 \u{1b}[2J\tx\nr2 \u{202E}y\r\n"),
            "r1 \u{FFFD}[2J\u{FFFD}x\nr2 \u{FFFD}y\u{FFFD}\n"
        );
    }

    /// The Trojan Source paper's examples (Boucher & Anderson, 2021).
    const TROJAN_SOURCE: &[&str] = &[
        // "Stretched string": RLO ... PDI hides the rest of a line.
        "OPS-1 \u{202E} } \u{2066}if (isAdmin)\u{2069} \u{2066} begin admins only",
        // "Commenting out" with RLI/LRI.
        "OPS-2 /*\u{2067} } \u{2066}if (isAdmin)\u{2069} \u{2066} begin admins only */",
        // Early return.
        "OPS-3 \u{2067}\"; return\u{2066}",
        // Homoglyph-free invisible: zero-width space in a ticket id.
        "OPS-\u{200B}4",
        "OPS-5\u{200D}",
        "\u{FEFF}OPS-6",
        "OPS-7 \u{E0041}\u{E0042}",
        "OPS-8\u{2028}approved by security",
    ];

    #[test]
    fn trojan_source_and_invisible_text_is_refused() {
        for s in TROJAN_SOURCE {
            let err = check_visible(s).unwrap_err();
            assert!(
                matches!(err, TextError::Bidi { .. } | TextError::Invisible { .. }),
                "{s:?}: {err}"
            );
            assert!(display_safe(s).contains('\u{FFFD}'), "{s:?}");
            assert!(is_visible(&display_safe(s).replace('\u{FFFD}', "?")));
        }
        assert_eq!(
            check_visible("OPS-1 \u{202E}x"),
            Err(TextError::Bidi {
                codepoint: 0x202E,
                offset: 6
            })
        );
    }

    #[test]
    fn control_characters_are_refused_and_replaced() {
        for s in [
            "a\nb",
            "a\rb",
            "tab\there",
            "\u{1B}[2J",
            "bell\u{7}",
            "del\u{7F}",
            "c1\u{9B}31m",
        ] {
            assert!(
                matches!(check_visible(s), Err(TextError::Control { .. })),
                "{s:?}"
            );
        }
        assert_eq!(display_safe("bob\u{1B}[31m"), "bob\u{FFFD}[31m");
        assert_eq!(display_safe("x\ny"), "x\u{FFFD}y");
    }

    #[test]
    fn ordinary_text_passes_unchanged() {
        for s in [
            "OPS-1234 restart the payment worker",
            "Zoë fixes the café's crème brûlée",
            "漢字とかな",
            "deploy 🚀 now",
            "a & b < c > d",
            "",
        ] {
            assert_eq!(check_visible(s), Ok(()), "{s:?}");
            assert!(matches!(display_safe(s), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(
            slack_escape("OPS-1 <!channel> <https://evil/|Approve in Portcullis> & more"),
            "OPS-1 &lt;!channel&gt; &lt;https://evil/|Approve in Portcullis&gt; &amp; more"
        );
        assert_eq!(slack_escape("&amp;"), "&amp;amp;");
        assert!(matches!(slack_escape("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn osc_52_titles_and_reports_are_dropped_colours_kept() {
        let cases: &[(&str, &str)] = &[
            // OSC 52: write the reviewer's clipboard (BEL and ST endings).
            ("a\u{1B}]52;c;Y3VybCBldmlsfHNo\u{7}b", "ab"),
            ("a\u{1B}]52;c;Y3VybA==\u{1B}\\b", "ab"),
            // Set the title, then ask the terminal to type it back.
            ("\u{1B}]0;rm -rf ~\n\u{7}\u{1B}[21t\u{1B}[20t", ""),
            // DCS (DECRQSS, XTGETTCAP) and APC/PM/SOS strings.
            ("x\u{1B}P$q\"p\u{1B}\\y", "xy"),
            (
                "x\u{1B}_kitty\u{1B}\\\u{1B}^pm\u{1B}\\\u{1B}Xsos\u{1B}\\y",
                "xy",
            ),
            // Device status, attributes, DECRQM, DECRQCRA, XTVERSION.
            (
                "\u{1B}[6n\u{1B}[c\u{1B}[>c\u{1B}[?1$p\u{1B}[1;1;1;1;1;1*y\u{1B}[>q",
                "",
            ),
            // Window manipulation (iconify, move, resize, report).
            ("\u{1B}[2t\u{1B}[3;0;0t\u{1B}[8;1;1t\u{1B}[18t", ""),
            // DECID and ENQ (answerback).
            ("\u{1B}Z\u{5}ok", "ok"),
            // C1 controls in UTF-8: CSI, OSC and DCS as single characters.
            ("\u{9B}6n\u{9D}52;c;eA==\u{7}\u{90}q\u{9C}z", "z"),
            // Colours, cursor movement, erase and modes stay.
            (
                "\u{1B}[1;31mred\u{1B}[0m\u{1B}[2J\u{1B}[H\u{1B}[?25l\u{1B}[?1049h\u{1B}[10;20r",
                "\u{1B}[1;31mred\u{1B}[0m\u{1B}[2J\u{1B}[H\u{1B}[?25l\u{1B}[?1049h\u{1B}[10;20r",
            ),
            (
                "\u{1B}7\u{1B}8\u{1B}(B\u{1B}[2 q",
                "\u{1B}7\u{1B}8\u{1B}(B\u{1B}[2 q",
            ),
            ("line\r\n\ttab\u{8}", "line\r\n\ttab\u{8}"),
        ];
        for (input, expected) in cases {
            assert_eq!(neutralise_terminal_output(input), *expected, "{input:?}");
        }
    }

    #[test]
    fn a_sequence_split_across_events_is_still_recognised() {
        let mut f = TerminalFilter::new();
        let mut out = String::new();
        for piece in [
            "ok\u{1B}",
            "]52;c;",
            "ZXZpbA==",
            "\u{1B}",
            "\\done\u{1B}[3",
            "1mred",
        ] {
            out.push_str(&f.filter(piece));
        }
        assert_eq!(out, "okdone\u{1B}[31mred");
    }

    #[test]
    fn an_unterminated_string_does_not_hide_the_rest_forever() {
        let long = format!("\u{1B}]0;{}visible", "x".repeat(MAX_STRING_CHARS));
        let out = neutralise_terminal_output(&long);
        assert!(out.ends_with("visible"), "{}", out.len());
        assert!(out.len() < 64);
        let huge_csi = format!("\u{1B}[{}m after", "1;".repeat(100));
        assert_eq!(neutralise_terminal_output(&huge_csi), " after");
    }

    #[test]
    fn the_filter_never_panics_on_arbitrary_input() {
        // A small deterministic fuzz: random code points biased towards
        // the characters the state machine cares about.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = [
            '\u{1B}', '[', ']', 'P', '\\', '\u{7}', '\u{9B}', '\u{9D}', '\u{9C}', ';', '?', '>',
            '$', ' ', 'm', 't', 'n', 'h', 'a', '0', '5', '\u{18}', 'é', '\u{202E}',
        ];
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let out = neutralise_terminal_output(&s);
            assert!(!out.contains(['\u{9B}', '\u{9D}', '\u{9C}', '\u{18}']));
            assert!(!out.contains("\u{1B}]") && !out.contains("\u{1B}P"));
        }
    }
}
