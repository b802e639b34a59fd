//! The module rule of `ARCHITECTURE.md`, checked: every `crate::` path in
//! `src/` (outside comments and after-`#[cfg(test)]` test code) names a
//! module its own module may use, per the table between
//! `<!-- modules -->` and `<!-- /modules -->`; and every module of
//! `src/lib.rs` has a row. Reads files only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Module → what it may use (`session::live` allows only that
/// submodule), from ARCHITECTURE.md.
fn rules() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let table = text
        .split("<!-- modules -->")
        .nth(1)
        .and_then(|t| t.split("<!-- /modules -->").next())
        .expect("the modules table markers");
    let mut rules = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [module, _, uses] = cells.as_slice() else {
            panic!("bad row {line:?}");
        };
        let uses: BTreeSet<String> = uses
            .split(',')
            .map(str::trim)
            .filter(|u| *u != "-" && !u.is_empty())
            .map(str::to_string)
            .collect();
        rules.insert(module.trim_matches('`').to_string(), uses);
    }
    rules
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::a::b` paths of `text`, outside comments and test code.
fn crate_paths(text: &str) -> Vec<(String, Option<String>)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let mut parts = rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'));
            let path = parts.next().unwrap_or("");
            let mut names = path.split("::").filter(|s| !s.is_empty());
            if let Some(first) = names.next() {
                found.push((first.to_string(), names.next().map(str::to_string)));
            }
        }
    }
    found
}

#[test]
fn crate_imports_follow_the_module_table() {
    let rules = rules();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let name = rel.file_name().unwrap().to_string_lossy();
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if ["lib", "main", "bin"].contains(&module.as_str()) {
            continue;
        }
        let allowed = rules
            .get(&module)
            .unwrap_or_else(|| panic!("no row for module {module} in ARCHITECTURE.md"));
        let text = std::fs::read_to_string(&file).unwrap();
        for (used, sub) in crate_paths(&text) {
            if used == module || used == "self" || used == "super" {
                continue;
            }
            let granular = sub.map(|s| format!("{used}::{s}"));
            let ok =
                allowed.contains(&used) || granular.as_ref().is_some_and(|g| allowed.contains(g));
            if !ok {
                broken.push(format!(
                    "{}: {module} uses crate::{}",
                    rel.display(),
                    granular.unwrap_or(used)
                ));
            }
        }
    }
    broken.sort();
    broken.dedup();
    assert!(
        broken.is_empty(),
        "imports that break ARCHITECTURE.md:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_module_has_a_row() {
    let rules = rules();
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line
            .strip_prefix("pub mod ")
            .and_then(|l| l.strip_suffix(';'))
        {
            assert!(
                rules.contains_key(name),
                "src/lib.rs has {name}, ARCHITECTURE.md has no row"
            );
        }
    }
}

#[test]
fn front_ends_never_import_each_other() {
    let rules = rules();
    let front_ends = ["ssh", "web", "fleet"];
    for a in front_ends {
        for b in front_ends {
            if a != b {
                assert!(
                    !rules.get(a).is_some_and(|u| u.contains(b)),
                    "{a} may use {b}: front ends meet in session"
                );
            }
        }
    }
}
