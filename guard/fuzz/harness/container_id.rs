//! `ContainerId::from_bytes` (and through it `parse`): an accepted id is safe as one path
//! component and round-trips; a rejected one is named in the error, non-UTF-8 lossily.
use guard::{ContainerId, ContainerIdError, MAX_ID_LEN};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ContainerId::from_bytes(data) {
        Ok(id) => {
            let s = id.as_str();
            assert_eq!(s, text);
            assert!(!s.is_empty() && s.len() <= MAX_ID_LEN, "{s:?}");
            assert!(s != "." && s != "..", "{s:?}");
            assert!(
                !s.chars()
                    .any(|c| c == '/' || c.is_control() || c.is_whitespace()),
                "{s:?} could escape its path component"
            );
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<ContainerId>().as_ref(), Ok(&id));
            let json = guard::forensic::serde_json::to_string(&id).unwrap();
            assert_eq!(
                guard::forensic::serde_json::from_str::<String>(&json).unwrap(),
                s
            );
        }
        Err(error) => {
            let message = error.to_string();
            match &error {
                ContainerIdError::Empty => assert!(text.is_empty()),
                ContainerIdError::TooLong { len, .. } => {
                    assert_eq!(*len, text.len());
                    assert!(*len > MAX_ID_LEN);
                    assert!(message.contains(&len.to_string()), "{message}");
                }
                ContainerIdError::Forbidden { id, .. } => {
                    assert_eq!(id, &text);
                    assert!(message.contains(&format!("{text:?}")), "{message}");
                }
                ContainerIdError::NotUtf8 { id } => {
                    assert!(std::str::from_utf8(data).is_err());
                    // Clipped to the first bytes, so a huge id cannot make a huge message.
                    assert!(id.chars().count() <= MAX_ID_LEN + 1, "{id:?}");
                    assert!(message.contains("is not valid UTF-8"), "{message}");
                }
            }
        }
    }
}
