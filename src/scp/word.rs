//! Splitting an exec command into words the way a POSIX shell would for
//! the plain cases (blanks, `'...'`, `"..."`, `\x`, a leading `~`), and
//! refusing every shell feature that would need a shell to mean what the
//! user meant (the gateway runs none for scp): variables, substitutions,
//! wildcards, operators, redirections.

/// One word of the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    /// The word with its quoting removed.
    pub text: String,
    /// True when any part of it was quoted or escaped (so `"-t"` is a
    /// path, not an option).
    pub quoted: bool,
}

/// Splits `command`; `Err` names the shell feature found.
pub(super) fn split(command: &str) -> Result<Vec<Word>, &'static str> {
    let mut words = Vec::new();
    let mut chars = command.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut w = Word {
            text: String::new(),
            quoted: false,
        };
        if first == '~' {
            chars.next();
            match chars.peek() {
                None | Some(' ') | Some('\t') => w.text.push('.'),
                // `~/x` is `x` relative to the home, the cwd of the server.
                Some('/') => {
                    chars.next();
                    if chars.peek().is_none_or(|c| *c == ' ' || *c == '\t') {
                        w.text.push('.');
                    }
                }
                Some(_) => return Err("~user expansion"),
            }
        } else if first == '#' {
            return Err("a comment");
        }
        while let Some(&c) = chars.peek() {
            match c {
                ' ' | '\t' => break,
                '\'' => {
                    chars.next();
                    w.quoted = true;
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some('\n') => return Err("a newline"),
                            Some(c) => w.text.push(c),
                            None => return Err("an unterminated quote"),
                        }
                    }
                }
                '"' => {
                    chars.next();
                    w.quoted = true;
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some(e @ ('$' | '`' | '"' | '\\')) => w.text.push(e),
                                Some('\n') | None => return Err("an unterminated quote"),
                                Some(e) => {
                                    w.text.push('\\');
                                    w.text.push(e);
                                }
                            },
                            Some('$') => return Err("variables"),
                            Some('`') => return Err("command substitution"),
                            Some('\n') => return Err("a newline"),
                            Some(c) => w.text.push(c),
                            None => return Err("an unterminated quote"),
                        }
                    }
                }
                '\\' => {
                    chars.next();
                    w.quoted = true;
                    match chars.next() {
                        Some('\n') | None => return Err("a trailing backslash"),
                        Some(e) => w.text.push(e),
                    }
                }
                '$' => return Err("variables"),
                '`' => return Err("command substitution"),
                ';' | '&' | '|' => return Err("shell operators"),
                '<' | '>' => return Err("redirections"),
                '(' | ')' => return Err("subshells"),
                '*' | '?' | '[' => return Err("wildcards"),
                '{' => return Err("brace expansion"),
                '\n' | '\r' => return Err("a newline"),
                _ => {
                    chars.next();
                    w.text.push(c);
                }
            }
        }
        words.push(w);
    }
}
