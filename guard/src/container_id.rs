//! Container ids: validated before they name anything (a cgroup path, a log record, a map key).
use std::{ffi::OsStr, fmt};

/// Longest id accepted (container runtimes use 64-hex ids; leave room for readable names).
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a container id; every variant but `Empty` shows the id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerIdError {
    /// The id is empty.
    #[error("container id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("container id {id:?} is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong {
        /// Its first [`MAX_ID_LEN`] characters, then `…`.
        id: String,
        /// Its length, in bytes.
        len: usize,
    },
    /// The id is `.` or `..`, or holds a `/`, a NUL, a control character or whitespace.
    #[error("container id {id:?} contains {what}, which could escape its cgroup path")]
    Forbidden {
        /// The id.
        id: String,
        /// What it holds (`a '/'`, `whitespace`, …).
        what: &'static str,
    },
    /// The id is not valid UTF-8 ([`ContainerId::from_os_str`], [`ContainerId::from_bytes`]).
    #[error("container id {id:?} is not valid UTF-8")]
    NotUtf8 {
        /// The id shown lossily (each invalid byte sequence becomes U+FFFD), clipped to
        /// [`MAX_ID_LEN`] bytes.
        id: String,
    },
}

/// A container id that is safe to use as one path component.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl From<ContainerId> for String {
    fn from(id: ContainerId) -> Self {
        id.0
    }
}

/// Deserializing checks the id as [`ContainerId::parse`] does.
impl TryFrom<String> for ContainerId {
    type Error = ContainerIdError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::parse(&id)
    }
}

impl ContainerId {
    /// Checks `id`: 1 to [`MAX_ID_LEN`] bytes, not `.` or `..`, and no `/`, NUL, control
    /// character or whitespace, so that it is one safe path component.
    ///
    /// ```
    /// use guard::{ContainerId, ContainerIdError};
    ///
    /// assert_eq!(ContainerId::parse("web-1")?.as_str(), "web-1");
    /// assert_eq!(ContainerId::parse(""), Err(ContainerIdError::Empty));
    /// for hostile in ["..", "../etc", "a b", "a\nb"] {
    ///     assert!(matches!(ContainerId::parse(hostile), Err(ContainerIdError::Forbidden { .. })));
    /// }
    /// assert!(ContainerId::parse(&"x".repeat(129)).is_err());
    /// assert!(ContainerId::from_bytes(b"web\xff").is_err());
    /// # Ok::<(), ContainerIdError>(())
    /// ```
    pub fn parse(id: &str) -> Result<Self, ContainerIdError> {
        let forbidden = |what| ContainerIdError::Forbidden {
            id: id.to_string(),
            what,
        };
        if id.is_empty() {
            return Err(ContainerIdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(ContainerIdError::TooLong {
                id: id.chars().take(MAX_ID_LEN).collect::<String>() + "…",
                len: id.len(),
            });
        }
        if id == "." || id == ".." {
            return Err(forbidden("only dots"));
        }
        if id.contains('/') {
            return Err(forbidden("a '/'"));
        }
        if id.contains('\0') {
            return Err(forbidden("a NUL byte"));
        }
        if id.chars().any(char::is_control) {
            return Err(forbidden("a control character"));
        }
        if id.chars().any(char::is_whitespace) {
            return Err(forbidden("whitespace"));
        }
        Ok(Self(id.to_string()))
    }

    /// Like [`ContainerId::parse`] for ids that arrive as OS strings (command-line arguments,
    /// directory names), which may not be UTF-8.
    pub fn from_os_str(id: &OsStr) -> Result<Self, ContainerIdError> {
        Self::from_bytes(id.as_encoded_bytes())
    }

    /// Like [`ContainerId::parse`] for raw bytes.
    pub fn from_bytes(id: &[u8]) -> Result<Self, ContainerIdError> {
        match std::str::from_utf8(id) {
            Ok(id) => Self::parse(id),
            Err(_) => {
                // Clip first (on bytes), so a huge hostile id cannot make a huge message.
                let clipped = &id[..id.len().min(MAX_ID_LEN)];
                let mut shown = String::from_utf8_lossy(clipped).into_owned();
                if clipped.len() < id.len() {
                    shown.push('…');
                }
                Err(ContainerIdError::NotUtf8 { id: shown })
            }
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ContainerId {
    type Err = ContainerIdError;
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::parse(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["web-1", "a", "3f2a9c", "job_42.v2", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(ContainerId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn rejects_hostile_ids_naming_them() {
        let cases = [
            ("", "empty"),
            (".", "dots"),
            ("..", "dots"),
            ("../etc", "'/'"),
            ("a/b", "'/'"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            ("a\x1bb", "control"),
            ("a b", "whitespace"),
        ];
        for (id, expected) in cases {
            let error = ContainerId::parse(id).unwrap_err().to_string();
            assert!(error.contains(expected), "{id:?}: {error}");
            if !id.is_empty() {
                assert!(error.contains(&format!("{id:?}")), "{id:?}: {error}");
            }
        }
        let long = "y".repeat(MAX_ID_LEN + 1);
        let error = ContainerId::parse(&long).unwrap_err().to_string();
        assert!(error.contains("129 bytes"), "{error}");
    }
}
