//! The broker's command-line words: positionals, `--name value` options
//! and `--flag`s, after the line was split like a POSIX shell would
//! (`shlex`).

use std::collections::{HashMap, HashSet};

/// Parsed words: positionals, `--name value` options and `--flag`s.
pub(crate) struct Args {
    /// Words that are not options.
    pub positional: Vec<String>,
    /// `--name value` / `--name=value` options.
    pub values: HashMap<&'static str, String>,
    /// `--flag`s given.
    pub flags: HashSet<&'static str>,
}

impl Args {
    /// Parses `words`: `value_opts` take a value, `flag_opts` none; any
    /// other `--option` is an error.
    pub(crate) fn parse(
        words: &[String],
        value_opts: &[&'static str],
        flag_opts: &[&'static str],
    ) -> Result<Args, String> {
        let mut args = Args {
            positional: Vec::new(),
            values: HashMap::new(),
            flags: HashSet::new(),
        };
        let mut it = words.iter();
        while let Some(word) = it.next() {
            let Some(name) = word.strip_prefix("--") else {
                args.positional.push(word.clone());
                continue;
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if let Some(opt) = value_opts.iter().find(|o| **o == name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("--{name} needs a value"))?,
                };
                args.values.insert(opt, value);
            } else if let Some(flag) = flag_opts.iter().find(|o| **o == name) {
                if inline.is_some() {
                    return Err(format!("--{name} takes no value"));
                }
                args.flags.insert(flag);
            } else {
                return Err(format!(
                    "unknown option --{}",
                    crate::audit::truncate(name, 32)
                ));
            }
        }
        Ok(args)
    }

    /// The one positional word (a request id).
    pub(crate) fn one_id(&self) -> Result<&str, String> {
        match self.positional.as_slice() {
            [id] => Ok(id),
            _ => Err("expected one request id".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        shlex::split(s).unwrap()
    }

    #[test]
    fn options_values_and_flags() {
        let a = Args::parse(
            &words("web1 --login root --for=2h --reason \"OPS-1 fix it\" --json"),
            &["login", "for", "reason"],
            &["json"],
        )
        .unwrap();
        assert_eq!(a.positional, ["web1"]);
        assert_eq!(a.values["login"], "root");
        assert_eq!(a.values["for"], "2h");
        assert_eq!(a.values["reason"], "OPS-1 fix it");
        assert!(a.flags.contains("json"));
        assert!(Args::parse(&words("--bogus"), &[], &[]).is_err());
        assert!(Args::parse(&words("--login"), &["login"], &[]).is_err());
        assert!(Args::parse(&words("--json=1"), &[], &["json"]).is_err());
    }
}
