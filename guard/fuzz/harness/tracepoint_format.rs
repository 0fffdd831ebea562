//! `tracefs::Format::parse` on arbitrary `format` file text: never panics, errors name the
//! tracepoint, and a parsed format survives being written back out and parsed again.
use std::fmt::Write as _;

use guard::internals::{Format, TracefsError};

const TRACEPOINT: &str = "fuzz:format";

/// Writes `format` the way tracefs lays a format file out.
fn render(format: &Format) -> String {
    let mut text = String::from("name: format\n");
    if let Some(id) = format.id {
        let _ = writeln!(text, "ID: {id}");
    }
    text.push_str("format:\n");
    for field in &format.fields {
        // `c_type` keeps an array suffix (`char[16]`): written before the name it parses back
        // to the same type.
        let _ = writeln!(
            text,
            "\tfield:{} {};\toffset:{};\tsize:{};\tsigned:{};",
            field.c_type,
            field.name,
            field.offset,
            field.size,
            u8::from(field.signed)
        );
    }
    text.push_str("\nprint fmt: \"\"\n");
    text
}

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let format = match Format::parse(TRACEPOINT, &text) {
        Ok(format) => format,
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(TRACEPOINT), "{message}");
            if let TracefsError::MalformedLine { line, .. } = error {
                assert!((1..=text.lines().count()).contains(&line), "{message}");
            }
            return;
        }
    };
    assert_eq!(format.tracepoint, TRACEPOINT);
    assert!(!format.fields.is_empty());
    for field in &format.fields {
        let name = &field.name;
        assert!(!name.is_empty(), "{format:?}");
        assert!(
            !name.contains(|c: char| c.is_whitespace() || c == '[' || c == ';'),
            "{name:?}"
        );
        assert_eq!(field.is_data_loc(), field.c_type.starts_with("__data_loc"));
        // Lookups find the first field of a name.
        let first = format.field(name).unwrap();
        assert_eq!(format.offset_of(name, first.size).unwrap(), first.offset);
        let wrong = first.size.wrapping_add(1);
        let error = format.offset_of(name, wrong).unwrap_err().to_string();
        assert!(
            error.contains(TRACEPOINT) && error.contains(name.as_str()),
            "{error}"
        );
    }
    let rendered = render(&format);
    match Format::parse(TRACEPOINT, &rendered) {
        Ok(again) => assert_eq!(again, format, "round trip through\n{rendered}"),
        Err(error) => panic!("{error} when parsing back\n{rendered}"),
    }
}
