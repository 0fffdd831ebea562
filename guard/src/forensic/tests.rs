//! The writer resuming, `verify`, `LogReader` and `Follower` draw a line's bounds in the same
//! place (they share one line scanner; these tests hold them to it).
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::record::MAX_LINE_BYTES;
use super::*;

struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("guard-forensic-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        boot_id: Some("test-boot".to_owned()),
        ..LogOptions::default()
    }
}

/// A clean log of 3 records (start, an event, stop); returns its file.
fn clean_log(dir: &Path) -> PathBuf {
    let mut writer = LogWriter::create(dir, options(), &serde_json::json!({})).unwrap();
    writer.append("fork", Some("c1"), &1).unwrap();
    let file = writer.head().file;
    writer.close().unwrap();
    file
}

fn append(file: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    file.write_all(bytes).unwrap();
}

fn describe(item: Result<Entry, ReaderError>) -> String {
    match item {
        Ok(entry) => format!("line {} ok", entry.line),
        Err(error) => error.to_string(),
    }
}

fn read_all(dir: &Path) -> Vec<String> {
    LogReader::open(dir).unwrap().map(describe).collect()
}

fn follow(follower: &mut Follower) -> Vec<String> {
    let mut seen = Vec::new();
    follower
        .poll(&mut |item| seen.push(describe(item)))
        .unwrap();
    seen
}

/// A line of `len` bytes before its newline, then a torn tail, after 3 good records.
fn log_with_line_of(test: &str, len: usize) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(test);
    let file = clean_log(&scratch.0);
    let mut bytes = vec![b'x'; len];
    bytes.extend_from_slice(b"\n{\"seq\":");
    append(&file, &bytes);
    (scratch, file)
}

#[test]
fn a_line_of_exactly_the_limit_is_a_line() {
    let (scratch, file) = log_with_line_of("at-limit", MAX_LINE_BYTES);
    let path = file.display();
    let problem = verify(&scratch.0).unwrap().problem.unwrap();
    assert_eq!(
        (
            problem.line,
            problem.defect.to_string().starts_with("not valid JSON")
        ),
        (4, true)
    );
    let read = read_all(&scratch.0);
    assert_eq!(read[..3], ["line 1 ok", "line 2 ok", "line 3 ok"]);
    assert!(
        read[3].starts_with(&format!("{path}:4: unreadable record: expected value")),
        "{read:?}"
    );
    assert_eq!(
        read[4],
        format!("{path}:5: torn final line (7 bytes without a newline)")
    );
    assert_eq!(read.len(), 5);
    // The follower reports a torn tail once the writer has moved on to the next file.
    let mut follower = Follower::newest_file(&scratch.0).unwrap();
    assert_eq!(follow(&mut follower), read[..4]);
    std::fs::write(scratch.0.join(layout::file_name(1)), b"").unwrap();
    assert_eq!(follow(&mut follower), read[4..]);
    std::fs::remove_file(scratch.0.join(layout::file_name(1))).unwrap();
    let error = LogWriter::create(&scratch.0, options(), &0).err().unwrap();
    assert!(
        matches!(
            error,
            WriterError::TornTail {
                line: 5,
                bytes: 7,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_line_of_one_byte_more_is_too_long_for_every_reader() {
    let (scratch, file) = log_with_line_of("over-limit", MAX_LINE_BYTES + 1);
    let path = file.display();
    let problem = verify(&scratch.0).unwrap().problem.unwrap();
    assert_eq!((problem.line, problem.defect), (4, Defect::LineTooLong));
    let too_long = format!("{path}:4: unreadable record: longer than {MAX_LINE_BYTES} bytes");
    let torn = format!("{path}:5: torn final line (7 bytes without a newline)");
    assert_eq!(
        read_all(&scratch.0),
        ["line 1 ok", "line 2 ok", "line 3 ok", &too_long, &torn]
    );
    let mut follower = Follower::newest_file(&scratch.0).unwrap();
    assert_eq!(
        follow(&mut follower),
        ["line 1 ok", "line 2 ok", "line 3 ok", &too_long]
    );
    let error = LogWriter::create(&scratch.0, options(), &0).err().unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "{path}:4: cannot resume the log: line longer than {MAX_LINE_BYTES} bytes; run `guard \
             log verify`"
        )
    );
}

#[test]
fn the_follower_skips_a_long_line_written_in_pieces() {
    let scratch = Scratch::new("long-in-pieces");
    let file = clean_log(&scratch.0);
    let path = file.display();
    let mut follower = Follower::newest_file(&scratch.0).unwrap();
    assert_eq!(follow(&mut follower).len(), 3);
    append(&file, &vec![b'x'; MAX_LINE_BYTES + 1]);
    let too_long = format!("{path}:4: unreadable record: longer than {MAX_LINE_BYTES} bytes");
    assert_eq!(follow(&mut follower), [too_long]);
    append(&file, b"rest of the long line");
    assert_eq!(follow(&mut follower), [""; 0]);
    append(&file, b"\nnot json\n");
    let bad = follow(&mut follower);
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].starts_with(&format!("{path}:5: unreadable record:")),
        "{bad:?}"
    );
}

#[test]
fn a_session_without_its_stop_is_an_abrupt_end() {
    let scratch = Scratch::new("abrupt");
    clean_log(&scratch.0);
    let report = verify(&scratch.0).unwrap();
    assert_eq!(report.sessions, 1);
    assert_eq!(report.ended_abruptly(), None, "{report:?}");
    // A second session that dies (dropped without close: no stop record) after its event.
    let mut writer = LogWriter::create(&scratch.0, options(), &serde_json::json!({})).unwrap();
    writer.append("oom_kill", Some("c1"), &2).unwrap();
    drop(writer);
    let report = verify(&scratch.0).unwrap();
    assert!(report.is_clean(), "the chain itself holds: {report:?}");
    assert_eq!(
        report.ended_abruptly(),
        Some(Session {
            started_at: 3,
            last_seq: 4,
            stopped: false
        })
    );
    // A third session, closed cleanly: the second's abrupt end is still counted.
    LogWriter::create(&scratch.0, options(), &serde_json::json!({}))
        .unwrap()
        .close()
        .unwrap();
    let report = verify(&scratch.0).unwrap();
    assert_eq!((report.sessions, report.abrupt_earlier_sessions), (3, 1));
    assert_eq!(report.ended_abruptly(), None);
}

#[test]
fn a_file_is_rotated_only_past_the_floor_whatever_the_bound() {
    let scratch = Scratch::new("floor");
    let options = LogOptions {
        rotate_bytes: Some(1),
        ..options()
    };
    let mut writer = LogWriter::create(&scratch.0, options, &serde_json::json!({})).unwrap();
    for i in 0..40 {
        writer.append("fork", Some("c1"), &i).unwrap();
    }
    writer.close().unwrap();
    let files = layout::list_files(&scratch.0).unwrap();
    assert!(files.len() > 3, "the log rotated: {files:?}");
    for file in &files[..files.len() - 1] {
        let bytes = std::fs::metadata(&file.path).unwrap().len();
        assert!(
            bytes >= layout::ROTATE_MIN_FILE_BYTES,
            "{} rotated at {bytes} bytes",
            file.name()
        );
    }
    assert!(verify(&scratch.0).unwrap().is_clean());
}
