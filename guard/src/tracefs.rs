//! tracefs: where it is mounted, and the layout of a tracepoint's record from its `format` file.
//!
//! Field offsets differ between kernels (6.18 stores comms as `__data_loc`, 6.1/6.12 inline), so
//! programs are handed offsets read here at load time instead of hard-coding them.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// Where tracefs is mounted on modern kernels.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older setups reach it through debugfs.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// tracefs could not be mounted, or a tracepoint's `format` file does not give what the
/// programs need. Every variant names the tracepoint or the path.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// Neither location was mounted and mounting tracefs failed (not root, or no tracefs in
    /// the kernel).
    #[error("mounting tracefs at {path}: {source}")]
    Mount {
        /// Where the mount was tried.
        path: PathBuf,
        /// The mount's error.
        source: std::io::Error,
    },
    /// A `format` file could not be read (usually: the kernel lacks the tracepoint).
    #[error("reading tracepoint format {path}: {source}")]
    ReadFormat {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of a `format` file that does not parse.
    #[error("tracepoint format {tracepoint}, line {line}: {reason}: {text:?}")]
    MalformedLine {
        /// The tracepoint, as `category:name`.
        tracepoint: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
        /// The line's text.
        text: String,
    },
    /// A `format` file with no fields.
    #[error("tracepoint format {tracepoint} has no `format:` section")]
    NoFields {
        /// The tracepoint, as `category:name`.
        tracepoint: String,
    },
    /// A field the programs need is not in the record.
    #[error("tracepoint {tracepoint} has no field {field}")]
    MissingField {
        /// The tracepoint, as `category:name`.
        tracepoint: String,
        /// The field.
        field: String,
    },
    /// A field the programs need has another size than they read.
    #[error("tracepoint {tracepoint} field {field} is {actual} bytes, expected {expected}")]
    FieldSize {
        /// The tracepoint, as `category:name`.
        tracepoint: String,
        /// The field.
        field: String,
        /// Its size in the record, in bytes.
        actual: u32,
        /// The size the programs read, in bytes.
        expected: u32,
    },
}

/// The tracefs root, mounting it at [`TRACEFS`] when neither location is mounted.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = mounted() {
        return Ok(root);
    }
    mount_tracefs(Path::new(TRACEFS))?;
    Ok(PathBuf::from(TRACEFS))
}

/// Where tracefs is mounted, if it is: found by its `events` folder, or by the mount table
/// where this process may not look inside (tracefs is root's alone).
pub fn mounted() -> Option<PathBuf> {
    if let Some(root) = [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|root| Path::new(root).join("events").is_dir())
    {
        return Some(PathBuf::from(root));
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            filesystem.starts_with("tracefs ").then_some(point)
        })
        .collect();
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|root| points.contains(root))
        .map(PathBuf::from)
}

fn mount_tracefs(target: &Path) -> Result<(), TracefsError> {
    let error = |source| TracefsError::Mount {
        path: target.to_path_buf(),
        source,
    };
    let target_c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| error(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target_c.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(error(std::io::Error::last_os_error()))
    }
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field's name, without an array suffix (`parent_comm`).
    pub name: String,
    /// The C declaration's type part, e.g. `pid_t` or `__data_loc char[]`.
    pub c_type: String,
    /// Its offset in the record, in bytes.
    pub offset: u32,
    /// Its size, in bytes.
    pub size: u32,
    /// Whether the kernel says it is signed.
    pub signed: bool,
}

impl Field {
    /// `__data_loc` fields hold (offset, length) of the data, not the data itself.
    pub fn is_data_loc(&self) -> bool {
        self.c_type.starts_with("__data_loc")
    }
}

/// The parsed `format` file of one tracepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// The tracepoint, as `category:name`.
    pub tracepoint: String,
    /// Its `ID:` line, if any.
    pub id: Option<u32>,
    /// Its fields in file order, the common ones (`common_type`, …) included.
    pub fields: Vec<Field>,
}

impl Format {
    /// Reads `<root>/events/<category>/<name>/format`.
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::ReadFormat {
            path: path.clone(),
            source,
        })?;
        Self::parse(&format!("{category}:{name}"), &text)
    }

    /// Parses the text of a `format` file. `tracepoint` only names it in errors.
    pub fn parse(tracepoint: &str, text: &str) -> Result<Self, TracefsError> {
        let mut id = None;
        let mut fields = Vec::new();
        let mut in_format = false;
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            let malformed = |reason| TracefsError::MalformedLine {
                tracepoint: tracepoint.to_string(),
                line: index + 1,
                reason,
                text: line.to_string(),
            };
            if let Some(rest) = trimmed.strip_prefix("ID:") {
                id = Some(rest.trim().parse().map_err(|_| malformed("bad ID"))?);
            } else if trimmed == "format:" {
                in_format = true;
            } else if trimmed.starts_with("print fmt:") {
                in_format = false;
            } else if in_format && !trimmed.is_empty() {
                fields.push(parse_field(trimmed).map_err(malformed)?);
            }
        }
        if fields.is_empty() {
            return Err(TracefsError::NoFields {
                tracepoint: tracepoint.to_string(),
            });
        }
        Ok(Self {
            tracepoint: tracepoint.to_string(),
            id,
            fields,
        })
    }

    /// The field called `name`, if the record has one.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|field| field.name == name)
    }

    /// Offset of a field that must exist with exactly `size` bytes.
    pub fn offset_of(&self, name: &str, size: u32) -> Result<u32, TracefsError> {
        let field = self.field(name).ok_or_else(|| TracefsError::MissingField {
            tracepoint: self.tracepoint.clone(),
            field: name.to_string(),
        })?;
        if field.size != size {
            return Err(TracefsError::FieldSize {
                tracepoint: self.tracepoint.clone(),
                field: name.to_string(),
                actual: field.size,
                expected: size,
            });
        }
        Ok(field.offset)
    }
}

/// Parses `field:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;`.
fn parse_field(line: &str) -> Result<Field, &'static str> {
    let mut declaration = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = None;
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':').ok_or("expected key:value")?;
        match key.trim() {
            "field" => declaration = Some(value.trim()),
            "offset" => offset = Some(value.trim().parse().map_err(|_| "bad offset")?),
            "size" => size = Some(value.trim().parse().map_err(|_| "bad size")?),
            "signed" => signed = Some(value.trim() == "1"),
            _ => {} // Unknown attributes are for the future, not an error.
        }
    }
    let declaration = declaration.ok_or("no field declaration")?;
    // The name is the last word, without an array suffix: `char parent_comm[16]`.
    let (c_type, name) = declaration
        .rsplit_once(char::is_whitespace)
        .ok_or("field declaration has no type")?;
    let (name, array) = match name.find('[') {
        Some(bracket) => (&name[..bracket], &name[bracket..]),
        None => (name, ""),
    };
    if name.is_empty() {
        return Err("empty field name");
    }
    Ok(Field {
        name: name.to_string(),
        c_type: format!("{}{array}", c_type.trim()),
        offset: offset.ok_or("no offset")?,
        size: size.ok_or("no size")?,
        signed: signed.ok_or("no signed")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = include_str!("../tests/fixtures/format/6.18/sched_process_fork.format");
    const FORK_6_1: &str = include_str!("../tests/fixtures/format/6.1/sched_process_fork.format");

    #[test]
    fn parses_inline_comm_fork_layout() {
        let format = Format::parse("sched:sched_process_fork", FORK_6_1).unwrap();
        assert_eq!(format.offset_of("parent_pid", 4).unwrap(), 24);
        assert_eq!(format.offset_of("child_pid", 4).unwrap(), 44);
        let comm = format.field("parent_comm").unwrap();
        assert!(!comm.is_data_loc());
        assert_eq!((comm.c_type.as_str(), comm.size), ("char[16]", 16));
    }

    #[test]
    fn parses_data_loc_fork_layout() {
        let format = Format::parse("sched:sched_process_fork", FORK_6_18).unwrap();
        assert_eq!(format.offset_of("parent_pid", 4).unwrap(), 12);
        assert_eq!(format.offset_of("child_pid", 4).unwrap(), 20);
        assert!(format.field("parent_comm").unwrap().is_data_loc());
        assert_eq!(format.field("common_type").unwrap().offset, 0);
    }

    #[test]
    fn missing_field_is_named() {
        let format = Format::parse("sched:sched_process_fork", FORK_6_18).unwrap();
        let error = format.offset_of("no_such", 4).unwrap_err().to_string();
        assert!(
            error.contains("no_such") && error.contains("sched_process_fork"),
            "{error}"
        );
    }

    #[test]
    fn wrong_size_is_rejected() {
        let format = Format::parse("sched:sched_process_fork", FORK_6_18).unwrap();
        let error = format.offset_of("child_pid", 8).unwrap_err().to_string();
        assert!(error.contains("4 bytes, expected 8"), "{error}");
    }

    #[test]
    fn malformed_line_names_tracepoint_and_line() {
        let text = "name: x\nID: 1\nformat:\n\tfield:int pid;\toffset:eight;\tsize:4;\tsigned:1;\n";
        let error = Format::parse("test:x", text).unwrap_err().to_string();
        assert!(
            error.contains("test:x") && error.contains("line 4") && error.contains("bad offset"),
            "{error}"
        );
    }

    #[test]
    fn empty_format_is_rejected() {
        let error = Format::parse("test:x", "name: x\nID: 1\n").unwrap_err();
        assert!(matches!(error, TracefsError::NoFields { .. }));
    }
}
