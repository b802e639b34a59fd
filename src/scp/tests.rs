//! Unit tests: the command recogniser, the record parser with hostile
//! input, and both server roles over in-memory streams in a temporary
//! directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use sha2::{Digest, Sha256};

use super::*;
use crate::sftp::{Direction, TransferRecord};

fn cmd(mode: ScpMode, path: &str) -> ScpCommand {
    ScpCommand {
        mode,
        recursive: false,
        preserve: false,
        target_is_dir: false,
        path: path.into(),
    }
}

#[test]
fn openssh_invocations_are_recognised() {
    assert_eq!(
        ScpCommand::parse("scp -t /home/app/x"),
        Some(Ok(cmd(ScpMode::Sink, "/home/app/x")))
    );
    assert_eq!(
        ScpCommand::parse("scp -f x.bin"),
        Some(Ok(cmd(ScpMode::Source, "x.bin")))
    );
    let full = ScpCommand::parse("scp -v -r -p -d -t -- -odd")
        .unwrap()
        .unwrap();
    assert_eq!(
        full,
        ScpCommand {
            mode: ScpMode::Sink,
            recursive: true,
            preserve: true,
            target_is_dir: true,
            path: "-odd".into(),
        }
    );
    let grouped = ScpCommand::parse("scp -prf dir").unwrap().unwrap();
    assert!(grouped.recursive && grouped.preserve);
    assert_eq!(grouped.mode, ScpMode::Source);
    // Quoting is removed; `~` is the home (the server's cwd).
    assert_eq!(
        ScpCommand::parse("scp -t 'a b'").unwrap().unwrap().path,
        "a b"
    );
    assert_eq!(
        ScpCommand::parse(r#"scp -t "x\"y" "#)
            .unwrap()
            .unwrap()
            .path,
        "x\"y"
    );
    assert_eq!(
        ScpCommand::parse(r"scp -t a\ b").unwrap().unwrap().path,
        "a b"
    );
    assert_eq!(ScpCommand::parse("scp -t ~").unwrap().unwrap().path, ".");
    assert_eq!(
        ScpCommand::parse("scp -t ~/up").unwrap().unwrap().path,
        "up"
    );
    // A quoted "-t" is a path, not an option.
    assert_eq!(
        ScpCommand::parse("scp -f '-t'").unwrap().unwrap().path,
        "-t"
    );
}

#[test]
fn other_commands_are_ordinary_execs() {
    for c in [
        "ls -l",
        "scp",
        "scp file host:x",
        "scpx -t x",
        "'scp' -t x",
        "/usr/bin/scp -t x",
        "echo scp -t x",
        "ls *; scp -t",
        "",
    ] {
        assert_eq!(ScpCommand::parse(c), None, "{c}");
    }
}

#[test]
fn scp_invocations_needing_a_shell_are_refused() {
    let refused = |c: &str| match ScpCommand::parse(c) {
        Some(Err(e)) => e,
        other => panic!("{c}: {other:?}"),
    };
    assert_eq!(
        refused("scp -f *.log"),
        ScpCommandError::ShellFeature("wildcards")
    );
    assert_eq!(
        refused("scp -t $HOME/x"),
        ScpCommandError::ShellFeature("variables")
    );
    assert_eq!(
        refused("scp -t x; rm -rf /"),
        ScpCommandError::ShellFeature("shell operators")
    );
    assert_eq!(
        refused("scp -f `id`"),
        ScpCommandError::ShellFeature("command substitution")
    );
    assert_eq!(
        refused("scp -t ~root/x"),
        ScpCommandError::ShellFeature("~user expansion")
    );
    assert_eq!(
        refused("scp -t 'open"),
        ScpCommandError::ShellFeature("an unterminated quote")
    );
    assert_eq!(
        refused("scp -f a\nb"),
        ScpCommandError::ShellFeature("a newline")
    );
    assert_eq!(refused("scp -f a b"), ScpCommandError::PathCount(2));
    assert_eq!(refused("scp -t"), ScpCommandError::PathCount(0));
    assert_eq!(refused("scp -t -x y"), ScpCommandError::Option("-x".into()));
    assert_eq!(
        refused("scp -t -f y"),
        ScpCommandError::Option("-t with -f".into())
    );
    assert_eq!(
        refused(&format!("scp -t {}", "a".repeat(MAX_PATH_BYTES + 1))),
        ScpCommandError::BadPath
    );
}

#[test]
fn records_parse() {
    assert_eq!(
        parse_record(b"C0644 12 a.txt\n"),
        Ok(Record::File {
            mode: 0o644,
            size: 12,
            name: "a.txt".into()
        })
    );
    assert_eq!(
        parse_record(b"D0755 0 dir\n"),
        Ok(Record::Directory {
            mode: 0o755,
            name: "dir".into()
        })
    );
    assert_eq!(parse_record(b"E\n"), Ok(Record::End));
    assert_eq!(
        parse_record(b"T1700000000 0 1700000001 0\n"),
        Ok(Record::Times {
            mtime: 1_700_000_000,
            atime: 1_700_000_001
        })
    );
    assert_eq!(
        parse_record(b"\x01scp: x: No such file\n"),
        Ok(Record::Warning("scp: x: No such file".into()))
    );
    assert_eq!(
        parse_record(b"\x02scp: fatal\n"),
        Ok(Record::Fatal("scp: fatal".into()))
    );
    // Names with blanks are names.
    assert_eq!(
        parse_record(b"C0600 0 a b \n"),
        Ok(Record::File {
            mode: 0o600,
            size: 0,
            name: "a b ".into()
        })
    );
}

#[test]
fn hostile_records_are_refused() {
    let cases: &[(&[u8], RecordError)] = &[
        // Missing or misplaced newline.
        (b"C0644 1 a", RecordError::Unterminated),
        (b"", RecordError::Unterminated),
        (b"C0644 1 a\nX", RecordError::Unterminated),
        // Names that leave the directory or are not names.
        (b"C0644 1 ../etc/passwd\n", RecordError::Name),
        (b"C0644 1 ..\n", RecordError::Name),
        (b"D0755 0 .\n", RecordError::Name),
        (b"D0755 0 ..\n", RecordError::Name),
        (b"C0644 1 /etc/passwd\n", RecordError::Name),
        (b"C0644 1 a/b\n", RecordError::Name),
        (b"C0644 1 \n", RecordError::Name),
        (b"C0644 1 a\0b\n", RecordError::Name),
        (b"C0644 1 \xff\xfe\n", RecordError::Name),
        // Oversized lengths.
        (b"C0644 99999999999999999999 a\n", RecordError::Size),
        (b"C0644 9223372036854775808 a\n", RecordError::Size),
        (b"C0644 -1 a\n", RecordError::Size),
        (b"C0644 1a a\n", RecordError::Size),
        (b"C0644  a\n", RecordError::Size),
        // Modes.
        (b"C644 1 a\n", RecordError::Mode),
        (b"C0648 1 a\n", RecordError::Mode),
        (b"C06444 1 a\n", RecordError::Mode),
        (b"C\n", RecordError::Mode),
        // Times.
        (b"T1 0 2\n", RecordError::Times),
        (b"T1 1000000 2 0\n", RecordError::Times),
        (b"T1 0 2 0 \n", RecordError::Times),
        (b"T-1 0 2 0\n", RecordError::Times),
        (b"T99999999999999999999 0 2 0\n", RecordError::Times),
        // Unknown or empty.
        (b"X\n", RecordError::Unknown),
        (b"\n", RecordError::Unknown),
        (b"E extra\n", RecordError::Unknown),
    ];
    for (line, want) in cases {
        assert_eq!(
            parse_record(line).as_ref(),
            Err(want),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    let long_name = format!("C0644 1 {}\n", "n".repeat(MAX_NAME_BYTES + 1));
    assert_eq!(parse_record(long_name.as_bytes()), Err(RecordError::Name));
    let long_line = format!("\x01{}\n", "m".repeat(MAX_LINE_BYTES));
    assert_eq!(
        parse_record(long_line.as_bytes()),
        Err(RecordError::Unterminated)
    );
    // The largest off_t is accepted.
    assert!(parse_record(b"C0644 9223372036854775807 a\n").is_ok());
}

/// Runs the server on `input`; returns (exit code, output, records).
fn run(command: &ScpCommand, input: &[u8]) -> (i32, Vec<u8>, Vec<TransferRecord>) {
    let mut out = Vec::new();
    let mut records = Vec::new();
    let code = serve_with(input, &mut out, |r| records.push(r.clone()), command);
    (code, out, records)
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn sink_receives_a_file_byte_exact_and_reports_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("up.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut input = format!("C0640 {} ignored-name\n", data.len()).into_bytes();
    input.extend_from_slice(&data);
    input.push(0);
    let (code, out, records) = run(&cmd(ScpMode::Sink, target.to_str().unwrap()), &input);
    assert_eq!(code, 0);
    assert_eq!(out, b"\0\0\0");
    assert_eq!(std::fs::read(&target).unwrap(), data);
    // Without -p a new file gets the mode minus the umask (022).
    let mode = std::fs::metadata(&target).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    assert_eq!(
        records,
        vec![TransferRecord {
            path: target.to_str().unwrap().into(),
            direction: Direction::Write,
            bytes: data.len() as u64,
            sha256: sha(&data),
            sequential: true,
            closed: true,
        }]
    );
}

#[test]
fn sink_into_a_directory_with_times_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cmd(ScpMode::Sink, dir.path().to_str().unwrap());
    c.preserve = true;
    c.recursive = true;
    let input = b"T1600000000 0 1600000001 0\nC0600 3 a.txt\nabc\0\
        D0750 0 sub\nC0604 0 empty\n\0E\n";
    let (code, out, records) = run(&c, input);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    // initial, T, C, data, D, C, data, E.
    assert_eq!(out, vec![0u8; 8]);
    let a = dir.path().join("a.txt");
    // (Before reading it: relatime would move an old atime.)
    let m = std::fs::metadata(&a).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.mtime(), m.atime()),
        (0o600, 1_600_000_000, 1_600_000_001)
    );
    assert_eq!(std::fs::read(&a).unwrap(), b"abc");
    let sub = dir.path().join("sub");
    assert_eq!(std::fs::metadata(&sub).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(std::fs::read(sub.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::metadata(sub.join("empty"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o604
    );
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].bytes, 0);
    assert_eq!(records[1].sha256, sha(b""));
}

#[test]
fn sink_refuses_escaping_names_and_directories_without_r() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    let c = cmd(ScpMode::Sink, inner.to_str().unwrap());
    let (code, out, records) = run(&c, b"C0644 4 ../evil\nevil\0");
    assert_eq!(code, 1);
    assert_eq!(out, b"\0\x02scp: protocol error: unexpected filename\n");
    assert!(records.is_empty());
    assert!(!dir.path().join("evil").exists());
    let (code, out, _) = run(&c, b"D0755 0 sub\nE\n");
    assert_eq!(code, 1);
    assert_eq!(
        out,
        b"\0\x02scp: protocol error: received directory without -r\n"
    );
    assert!(!inner.join("sub").exists());
    // An endless record is cut at MAX_LINE_BYTES and refused.
    let mut endless = b"C0644 1 ".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 3 * MAX_LINE_BYTES));
    let (code, out, _) = run(&c, &endless);
    assert_eq!(code, 1);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "\0\x02scp: protocol error: record not terminated by a newline within 2048 bytes\n"
    );
    // An oversized length is a protocol error before any byte is written.
    let (code, out, _) = run(&c, b"C0644 99999999999999999999 big\n");
    assert_eq!(code, 1);
    assert_eq!(out, b"\0\x02scp: protocol error: bad size\n");
    assert!(!inner.join("big").exists());
    // A record without its newline, then EOF: the connection is lost.
    let (code, out, _) = run(&c, b"C0644 4 x");
    assert_eq!((code, out.as_slice()), (1, &b"\0"[..]));
}

#[test]
fn sink_warns_per_file_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // The target's parent does not exist: this file fails, the next works.
    let c = cmd(ScpMode::Sink, dir.path().to_str().unwrap());
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    let input = b"C0644 1 taken\nC0644 2 ok\nok\0";
    let (code, out, records) = run(&c, input);
    assert_eq!(code, 1);
    let taken = dir.path().join("taken");
    let want = format!(
        "\0\x01scp: {}: Is a directory (os error 21)\n\0\0",
        taken.display()
    );
    assert_eq!(String::from_utf8_lossy(&out), want);
    assert_eq!(std::fs::read(dir.path().join("ok")).unwrap(), b"ok");
    assert_eq!(records.len(), 1);
    // A -d target that is not a directory is fatal before anything.
    let mut c = cmd(ScpMode::Sink, dir.path().join("ok").to_str().unwrap());
    c.target_is_dir = true;
    let (code, out, _) = run(&c, b"");
    assert_eq!(code, 1);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("\x02scp: {}: Not a directory\n", c.path)
    );
}

#[test]
fn sink_reports_a_file_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("cut");
    let c = cmd(ScpMode::Sink, target.to_str().unwrap());
    let (code, _, records) = run(&c, b"C0644 10 cut\nabc");
    assert_eq!(code, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].bytes, 3);
    assert_eq!(records[0].sha256, sha(b"abc"));
    assert!(!records[0].closed);
}

#[test]
fn source_sends_a_file_with_times() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("down.bin");
    let data: Vec<u8> = (0..100_001u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    let mut c = cmd(ScpMode::Source, file.to_str().unwrap());
    c.preserve = true;
    // The client's start, then its answers to T, C and the data.
    let (code, out, records) = run(&c, b"\0\0\0\0");
    assert_eq!(code, 0);
    let mut want = format!(
        "T1500000000 0 1500000000 0\nC0640 {} down.bin\n",
        data.len()
    )
    .into_bytes();
    want.extend_from_slice(&data);
    want.push(0);
    assert_eq!(out, want);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].direction, Direction::Read);
    assert_eq!(records[0].bytes, data.len() as u64);
    assert_eq!(records[0].sha256, sha(&data));
}

#[test]
fn source_sends_a_directory_tree_and_refuses_it_without_r() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("b")).unwrap();
    std::fs::write(tree.join("a"), b"A").unwrap();
    std::fs::write(tree.join("b/c"), b"CC").unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tree.join("b"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(tree.join("a"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(tree.join("b/c"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = cmd(ScpMode::Source, &format!("{}/", tree.display()));
    c.recursive = true;
    let (code, out, records) = run(&c, &[0u8; 16]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        b"D0755 0 tree\nC0644 1 a\nA\0D0700 0 b\nC0600 2 c\nCC\0E\nE\n"
    );
    assert_eq!(records.len(), 2);
    c.recursive = false;
    let (code, out, _) = run(&c, &[0u8; 4]);
    assert_eq!(code, 1);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("\x01scp: {}: not a regular file\n", tree.display())
    );
    // A missing file is a warning with the OS's reason.
    let c = cmd(ScpMode::Source, "/nonexistent/x");
    let (code, out, _) = run(&c, &[0u8; 4]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        b"\x01scp: /nonexistent/x: No such file or directory (os error 2)\n"
    );
}

#[test]
fn source_stops_at_a_fatal_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"data").unwrap();
    let c = cmd(ScpMode::Source, file.to_str().unwrap());
    let (code, out, records) = run(&c, b"\0\x02scp: no space\n");
    assert_eq!(code, 1);
    assert_eq!(out, b"C0644 4 f\n");
    assert!(records.is_empty());
}

#[test]
fn source_does_not_follow_directory_symlinks_inside_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("loop");
    std::fs::create_dir(&tree).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(tree.join("f"), b"F").unwrap();
    std::fs::set_permissions(tree.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(".", tree.join("self")).unwrap();
    std::os::unix::fs::symlink("f", tree.join("to-file")).unwrap();
    let mut c = cmd(ScpMode::Source, tree.to_str().unwrap());
    c.recursive = true;
    let (code, out, records) = run(&c, &[0u8; 16]);
    assert_eq!(code, 1);
    let want = format!(
        "D0755 0 loop\nC0644 1 f\nF\0\x01scp: {}/self: symbolic link to a directory, not followed\nC0644 1 to-file\nF\0E\n",
        tree.display()
    );
    assert_eq!(String::from_utf8_lossy(&out), want);
    assert_eq!(records.len(), 2);
}
