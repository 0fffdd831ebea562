//! Helpers shared by guard's integration tests.
pub mod guest;
pub mod host;

use serde_json::Value;

/// Events of `kind` that `records` hold for `container` (None: any container): individual
/// records of the kind plus the `count` of every `summary` record of it. `records` are
/// forensic log records (`kind`, `payload`) or `--events` lines (`detail.kind`, the payload in
/// `detail`). Every test that counts logged events of a kind the sinks may summarize counts
/// with this.
pub fn logged_count<'a>(
    records: impl IntoIterator<Item = &'a Value>,
    kind: &str,
    container: Option<&str>,
) -> u64 {
    records
        .into_iter()
        .filter(|record| container.is_none_or(|id| record["container"] == id))
        .map(|record| {
            let payload = match record.get("detail") {
                Some(detail) => detail,
                None => &record["payload"],
            };
            let own_kind = record.get("kind").unwrap_or(&payload["kind"]);
            if own_kind == kind {
                1
            } else if own_kind == "summary" && payload["of"] == kind {
                payload["count"].as_u64().unwrap_or(0)
            } else {
                0
            }
        })
        .sum()
}

/// Every record of the forensic log in `dir`, as JSON (for [`logged_count`]).
pub fn log_records(dir: &std::path::Path) -> Vec<Value> {
    guard::forensic::LogReader::open(dir)
        .unwrap_or_else(|error| panic!("reading the log in {}: {error}", dir.display()))
        .map(|entry| serde_json::to_value(entry.expect("a readable record").record).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn logged_count_adds_summaries_to_records() {
        let records = [
            json!({"kind": "fork", "container": "a", "payload": {}}),
            json!({"kind": "fork", "container": "b", "payload": {}}),
            json!({"kind": "summary", "container": "a", "payload": {"of": "fork", "count": 7}}),
            json!({"kind": "summary", "container": "a", "payload": {"of": "reclaim", "count": 9}}),
            json!({"container": "a", "detail": {"kind": "fork"}}),
            json!({"container": "a", "detail": {"kind": "summary", "of": "fork", "count": 5}}),
        ];
        assert_eq!(logged_count(&records, "fork", Some("a")), 1 + 7 + 1 + 5);
        assert_eq!(logged_count(&records, "fork", None), 15);
        assert_eq!(logged_count(&records, "reclaim", Some("b")), 0);
    }
}
