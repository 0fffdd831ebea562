//! Where events go once the hub has them: the hash-chained forensic log ([`event_log`]) and
//! plain JSON lines ([`json_lines`]). Each is a subscriber with a bounded queue of its own,
//! and each folds storms into interval summaries ([`summary`]) so that neither grows without
//! bound.
pub mod event_log;
pub mod events_budget;
pub mod json_lines;
pub mod summary;
