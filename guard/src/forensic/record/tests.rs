use super::*;

#[test]
fn encoded_line_is_sealed_and_parses() {
    let mut out = Vec::new();
    let head = LineHead {
        seq: 7,
        boot_id_json: b"\"b\"",
        wall: b"2026-11-29T20:03:15.000000000Z",
        mono_ns: 5,
        kind: "fork",
        container: Some("c\n1"),
        prev: &GENESIS_DIGEST,
    };
    let digest = encode_line(&mut out, &head, &serde_json::json!({"pid": 1})).unwrap();
    assert_eq!(out.last(), Some(&b'\n'));
    let line = &out[..out.len() - 1];
    assert!(!line.contains(&b'\n'));
    let d = digest_line(line);
    assert_eq!(d.seal, Seal::Valid);
    assert_eq!(d.line, digest);
    let record: Record = serde_json::from_slice(line).unwrap();
    assert_eq!(record.seq, 7);
    assert_eq!(record.container.as_deref(), Some("c\n1"));
    assert_eq!(record.prev, GENESIS);
    let mut edited = line.to_vec();
    edited[1] ^= 1;
    assert_eq!(digest_line(&edited).seal, Seal::Mismatch);
    assert_eq!(digest_line(b"{}").seal, Seal::Missing);
}

/// Every record kind the writer emits, and strings that need escaping in every field the
/// writer fills in: the same bytes and digest as the reference encoder.
#[test]
fn encode_line_as_serde_json_did() {
    use serde_json::json;
    let mut start = StartInfo::new(2, json!({"memory_max": 67_108_864, "pids_max": null}));
    start.extra.insert(
        "capabilities".into(),
        json!({"tier": "2", "x": [1.5, -3, true]}),
    );
    let payloads: Vec<(&str, serde_json::Value)> = vec![
        (kinds::START, serde_json::to_value(&start).unwrap()),
        (
            kinds::ROTATE,
            serde_json::to_value(Rotate {
                prev_file: "guard-000004.jsonl".into(),
                prev_records: 155_345,
                prev_bytes: 67_108_752,
            })
            .unwrap(),
        ),
        (
            kinds::CHECKPOINT,
            serde_json::to_value(Checkpoint {
                count: 1000,
                head: GENESIS.into(),
            })
            .unwrap(),
        ),
        (
            kinds::STOP,
            serde_json::to_value(Checkpoint {
                count: u64::MAX,
                head: to_hex(&[0xab; 32]),
            })
            .unwrap(),
        ),
        (
            kinds::REPAIR,
            serde_json::to_value(Repair {
                file: "guard-000000.jsonl".into(),
                line: 3,
                removed_bytes: 17,
            })
            .unwrap(),
        ),
        (
            kinds::LOST,
            serde_json::to_value(Lost {
                source: "bpf_ringbuf".into(),
                event_kind: Some("fork".into()),
                cpu: Some(1),
                count: 9,
            })
            .unwrap(),
        ),
        (
            kinds::LOST,
            serde_json::to_value(Lost {
                source: "user_queue".into(),
                event_kind: None,
                cpu: None,
                count: 0,
            })
            .unwrap(),
        ),
        (
            kinds::THROTTLE,
            serde_json::to_value(Throttle {
                event_kind: "any".into(),
                suppressed: 12,
                window_ms: 1000,
            })
            .unwrap(),
        ),
        (
            "fork",
            json!({"cpu": 0, "seq": 1, "kind": "fork", "child_pid": 101}),
        ),
        ("report", json!("text \" \\ \n \u{1} \u{7f} é 🦀")),
        ("limits_applied", json!(null)),
    ];
    let containers = [None, Some("web"), Some("c\n\"1\\"), Some("é\u{1f}\u{7f}x")];
    let boot_ids = ["38d2a705-21b4-4970-8f33-2b78943172f3", "b\"\t\u{0}"];
    let walls = [0, -1, 1_796_000_000_123_456_789, i64::MIN, i64::MAX];
    let mut seq = 0u64;
    for (kind, payload) in &payloads {
        for container in containers {
            for boot_id in boot_ids {
                let boot_id_json = serde_json::to_vec(boot_id).unwrap();
                for wall_ns in walls {
                    let wall = super::super::time::format_rfc3339_nanos(wall_ns);
                    let prev = sha256(&seq.to_le_bytes());
                    let head = LineHead {
                        seq: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        boot_id_json: &boot_id_json,
                        wall: wall.as_bytes(),
                        mono_ns: seq * 1_000_003,
                        kind,
                        container,
                        prev: &prev,
                    };
                    seq += 1;
                    // The typed payload where there is one, the JSON value otherwise: the
                    // payload itself goes through serde_json on both paths.
                    let (mut new, mut old) = (Vec::new(), Vec::new());
                    let digest = encode_line(&mut new, &head, payload).unwrap();
                    let expected = encode_line_reference(&mut old, &head, payload).unwrap();
                    assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
                    assert_eq!(digest, expected);
                }
            }
        }
    }
    // The typed payloads themselves, not only their JSON values (key order is the
    // struct's, not the map's).
    let prev = GENESIS_DIGEST;
    let head = |kind| LineHead {
        seq: 1,
        boot_id_json: b"\"b\"",
        wall: b"1970-01-01T00:00:00.000000005Z",
        mono_ns: 6,
        kind,
        container: None,
        prev: &prev,
    };
    let (mut new, mut old) = (Vec::new(), Vec::new());
    encode_line(&mut new, &head(kinds::START), &start).unwrap();
    encode_line_reference(&mut old, &head(kinds::START), &start).unwrap();
    assert_eq!(new, old);
}

#[test]
fn strings_are_escaped_as_serde_json_escapes_them() {
    let mut texts: Vec<String> = (0..=0x7fu8).map(|b| format!("a{}b", b as char)).collect();
    texts.extend(["", "é", "🦀\u{7f}\u{80}", "\"\"\\\\", "\u{1f}x\u{0}"].map(str::to_owned));
    texts.push((0..=0x7fu8).map(char::from).collect());
    for text in texts {
        let mut pushed = Vec::new();
        push_json_str(&mut pushed, &text);
        assert_eq!(pushed, serde_json::to_vec(&text).unwrap(), "{text:?}");
    }
}

#[test]
fn hex_is_lowercase_two_digits_per_byte() {
    let bytes: Vec<u8> = (0..=255).chain(0..40).collect();
    let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(to_hex(&bytes), expected);
    assert_eq!(to_hex(&[]), "");
}

#[test]
fn kinds_are_checked() {
    assert!(is_valid_kind("oom_kill"));
    assert!(is_valid_kind("fork2"));
    for bad in ["", "Fork", "2fork", "fork-denied", "a b"] {
        assert!(!is_valid_kind(bad), "{bad}");
    }
}
