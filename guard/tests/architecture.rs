//! The library's rooms form a DAG (docs/ARCHITECTURE.md): no top-level module of `guard/src`
//! reaches, through `crate::…` paths, a module that reaches it back; and no source file outside
//! the tests grows past 500 lines. Both are read off the source text, so a change that breaks
//! either fails here, naming the cycle or the file.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const MAX_LINES: usize = 500;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The room a library file belongs to: its top-level module (None for lib.rs and the binary).
fn room(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_string()),
    }
}

/// The rooms a file names through `crate::…`, including `use crate::{a, b::c}` groups.
fn references(text: &str) -> BTreeSet<String> {
    // Only code: comments may name any room, and the test modules may reach anywhere.
    names_after(&code_of(text), "crate::")
}

/// The first name of every path that starts with `prefix` (`crate::`, `super::`), including
/// each item of a `prefix{a, b::c}` group.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Each item of the group at depth 1 starts with the room it names.
            let mut depth = 0;
            let mut at_item_start = true;
            let mut name = String::new();
            for c in group.chars() {
                if c.is_alphanumeric() || c == '_' {
                    if depth == 0 && at_item_start {
                        name.push(c);
                    }
                    continue;
                }
                if !name.is_empty() {
                    rooms.insert(std::mem::take(&mut name));
                    at_item_start = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_item_start = true,
                    _ => {}
                }
            }
            if !name.is_empty() {
                rooms.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            rooms.insert(name);
        }
    }
    rooms
}

/// The room of each name `lib.rs` re-exports at the root (`crate::Guard` is the `guard` room).
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let room: String = path
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        for name in path.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                names.insert(name.to_string(), room.clone());
            }
        }
    }
    names
}

#[test]
fn the_rooms_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let root = root_names(&lib);
    assert_eq!(root.get("Guard").map(String::as_str), Some("guard"));
    for file in &files {
        let Some(from) = room(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let edges = graph.entry(from.clone()).or_default();
        for name in references(&text) {
            // A name re-exported at the root (`crate::Guard`) stands for its room.
            let to = root.get(&name).cloned().unwrap_or(name);
            let is_room = lib.contains(&format!("mod {to};"));
            if to != from && is_room {
                edges.insert(to);
            }
        }
    }
    assert!(graph.len() > 10, "read too few rooms: {graph:?}");
    // Peel off rooms that depend on nothing left; whatever remains is a cycle.
    let mut remaining = graph.clone();
    let mut layers = Vec::new();
    while !remaining.is_empty() {
        let free: Vec<String> = remaining
            .iter()
            .filter(|(_, deps)| deps.iter().all(|dep| !remaining.contains_key(dep)))
            .map(|(room, _)| room.clone())
            .collect();
        assert!(
            !free.is_empty(),
            "the rooms of guard/src have a cycle among {:?}",
            remaining
                .iter()
                .map(|(room, deps)| format!("{room} -> {deps:?}"))
                .collect::<Vec<_>>()
        );
        for room in &free {
            remaining.remove(room);
        }
        layers.push(free);
    }
    eprintln!("layers, bottom first: {layers:?}");
    for (room, deps) in &graph {
        eprintln!("  {room} -> {deps:?}");
    }
}

#[test]
fn no_source_file_is_over_500_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

/// The code of a source file: before its test module, without comment lines.
fn code_of(text: &str) -> String {
    text.split("#[cfg(test)]")
        .next()
        .unwrap_or(text)
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The file names a controller's module declares (`pub const MAX: &str = "memory.max";`).
fn declared_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .filter_map(|rest| rest.split_once("&str = \"")?.1.split_once('"'))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Each controller's files are named in its own module (`cgroup/memory.rs`, `cgroup/pids.rs`)
/// and nowhere else in the library or the binary, so that every write of a limit goes through
/// the controller's `apply_*`: a string literal naming one of them elsewhere fails here.
#[test]
fn controller_files_are_named_by_their_controller_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut names = Vec::new();
    for controller in ["memory", "pids"] {
        let file = src.join(format!("cgroup/{controller}.rs"));
        let declared = declared_names(&std::fs::read_to_string(&file).unwrap());
        assert!(
            declared.contains(&format!("{controller}.max")),
            "{} declares {declared:?}",
            file.display()
        );
        names.extend(declared.into_iter().map(|name| (name, file.clone())));
    }
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        if file.file_name().is_some_and(|name| name == "tests.rs")
            || names.iter().any(|(_, home)| home == file)
        {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for (name, _) in &names {
            if code.contains(&format!("\"{name}\"")) {
                found.push(format!("{} names {name:?}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use the controller's constant or apply_* (guard::cgroup::memory, ::pids): {found:#?}"
    );
}

/// Within each room, its files (each a module below the room's `mod.rs`) depend on each other in
/// one direction only, as the rooms do: `super::x` and `crate::room::x` are read as edges
/// between the room's modules (the room's own `mod.rs`, which gathers them, is left out). A
/// cycle such as two files importing each other fails here, naming them.
#[test]
fn the_modules_of_each_room_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let dir = entry.unwrap().path();
        let Some(room) = dir.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if !dir.is_dir() || room == "bin" {
            continue;
        }
        let mut files = Vec::new();
        sources(&dir, &mut files);
        // A module of the room: the first component below it (`writer` for writer/output.rs).
        let module_of = |file: &Path| -> Option<String> {
            let first = file.strip_prefix(&dir).ok()?.components().next()?;
            let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
            (name != "mod" && name != "tests").then(|| name.to_string())
        };
        let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(from) = module_of(file) else {
                continue;
            };
            let code = code_of(&std::fs::read_to_string(file).unwrap());
            let mut named = names_after(&code, &format!("crate::{room}::"));
            // `super::` is the room itself only one level down.
            if file.parent() == Some(dir.as_path()) {
                named.extend(names_after(&code, "super::"));
            }
            let edges = graph.entry(from.clone()).or_default();
            edges.extend(
                named
                    .into_iter()
                    .filter(|name| *name != from && modules.contains(name)),
            );
        }
        let mut remaining = graph;
        while !remaining.is_empty() {
            let free: Vec<String> = remaining
                .iter()
                .filter(|(_, deps)| deps.iter().all(|dep| !remaining.contains_key(dep)))
                .map(|(module, _)| module.clone())
                .collect();
            assert!(
                !free.is_empty(),
                "the modules of guard/src/{room} have a cycle among {:?}",
                remaining
                    .iter()
                    .map(|(module, deps)| format!("{module} -> {deps:?}"))
                    .collect::<Vec<_>>()
            );
            for module in &free {
                remaining.remove(module);
            }
        }
        checked += 1;
    }
    assert!(checked > 10, "read too few rooms: {checked}");
}

/// The text of docs/ARCHITECTURE.md from the heading `from` to the next heading of its level.
fn doc_section(from: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{} has no {from:?}", path.display()));
    let level = from.split(' ').next().unwrap();
    let rest = &text[start + from.len()..];
    let end = rest
        .match_indices(&format!("\n{level} "))
        .map(|(at, _)| at)
        .next()
        .unwrap_or(rest.len());
    rest[..end].to_string()
}

/// Lines of `lib.rs` at its top level (not inside `internals` or a deprecated module).
fn top_level(lib: &str) -> impl Iterator<Item = &str> {
    lib.lines()
        .filter(|line| !line.starts_with(char::is_whitespace))
}

/// Every room `lib.rs` declares is on the map: docs/ARCHITECTURE.md's table of rooms names it in
/// its rooms column.
#[test]
fn every_room_is_in_the_architecture() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let section = doc_section("## The rooms of the library");
    let table: String = section
        .split("\n### ")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|line| line.starts_with('|'))
        // The rooms column: `| layer | rooms | what they hold |`.
        .filter_map(|line| line.split('|').nth(2))
        .collect();
    let missing: Vec<&str> = top_level(&lib)
        .filter_map(|line| line.strip_prefix("pub mod ").or(line.strip_prefix("mod ")))
        .filter_map(|rest| rest.strip_suffix(';'))
        .filter(|room| {
            !table.contains(&format!("`{room}`")) && !table.contains(&format!("`{room}/`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "rooms of lib.rs missing from docs/ARCHITECTURE.md's table: {missing:?}"
    );
}

/// Every name and module `lib.rs` exports is in docs/ARCHITECTURE.md's public surface.
#[test]
fn the_public_surface_is_in_the_architecture() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let surface = doc_section("### The public surface");
    let mut exported: Vec<String> = top_level(&lib)
        .filter_map(|line| line.strip_prefix("pub mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .map(str::to_string)
        .collect();
    for statement in lib.split(';') {
        let statement = statement.trim_start();
        let Some(path) = statement.strip_prefix("pub use ") else {
            continue;
        };
        if statement.starts_with("pub use crate::") {
            continue; // `internals`, hidden
        }
        let items = match path.split_once('{') {
            Some((_, group)) => group.trim_end_matches('}').to_string(),
            None => path.to_string(),
        };
        for item in items.split(',') {
            let name = item.trim().rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() && name != "self" {
                exported.push(name.to_string());
            }
        }
    }
    assert!(exported.len() > 20, "read too few names: {exported:?}");
    let missing: Vec<&String> = exported
        .iter()
        .filter(|name| !surface.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "exported by lib.rs but not in docs/ARCHITECTURE.md's public surface: {missing:?}"
    );
}

/// Every signal has its eBPF file and its row in docs/ARCHITECTURE.md's table of signals, and
/// a signal with a ring-buffer record decodes it with `Streamed` (and one without, does not).
#[test]
fn every_signal_has_its_files_and_its_row() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let table = doc_section("## Signals");
    let mut signals = Vec::new();
    for entry in std::fs::read_dir(root.join("guard/src/signals")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if name == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            root.join(format!("guard-ebpf/src/{name}.rs")).exists(),
            "signal {name} has no guard-ebpf/src/{name}.rs"
        );
        assert!(
            table.contains(&format!("| `{name}` |")),
            "signal {name} has no row in docs/ARCHITECTURE.md's table of signals"
        );
        let record = root
            .join(format!("guard-common/src/events/{name}.rs"))
            .exists();
        assert_eq!(
            record,
            text.contains("impl Streamed for"),
            "signal {name}: a ring-buffer record (guard-common/src/events/{name}.rs) and a \
             payload with `Streamed` come together"
        );
        signals.push(name);
    }
    assert!(signals.len() >= 7, "read too few signals: {signals:?}");
}

#[test]
fn references_reads_groups_and_paths() {
    let text = "use crate::{\n    Tier,\n    cgroup::{self, EventFiles},\n    verdict::report::Report,\n};\nlet x = crate::events::decode(b);";
    let found = references(text);
    for room in ["Tier", "cgroup", "verdict", "events"] {
        assert!(found.contains(room), "{found:?}");
    }
    assert!(
        !found.contains("EventFiles") && !found.contains("report"),
        "{found:?}"
    );
}
