//! The three ways a dependent names guard, each checked to resolve to guard's vendored loader
//! and to no other aya: by path (the dependent crate's own lock file), by git (this
//! repository's HEAD) and from a registry (guard, guard-common and the three vendored crates
//! packaged by `cargo package`, unpacked, and put in crates.io's place by `[patch.crates-io]`:
//! the files a registry would serve).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{stable_cargo, stand_ins, stdout_of, target_dir};

/// The vendored loader: its package and library names.
const LOADER_PACKAGE: &str = "guard-aya";
const LOADER_LIB: &str = "aya";
const LOGGER_PACKAGE: &str = "guard-aya-log";
/// crates.io's names: a dependent's graph holds neither.
const STOCK: &[&str] = &["aya", "aya-log", "libcontainer"];
/// The vendored crates and guard's own, as a registry would hold them (directories of the
/// workspace, and their package names).
const PUBLISHED: &[(&str, &str)] = &[
    ("vendor/aya", "guard-aya"),
    ("vendor/aya-log", "guard-aya-log"),
    ("vendor/libcontainer", "guard-libcontainer"),
    ("guard-common", "guard-common"),
    ("guard", "guard"),
];

/// The path form: the dependent's fresh lock file holds the vendored loader and no stock aya.
pub(super) fn check_lock(lock: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(lock).with_context(|| format!("reading {}", lock.display()))?;
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .collect();
    if let Some(stock) = names.iter().find(|name| STOCK.contains(name)) {
        bail!(
            "{}: the dependent resolves crates.io's {stock} beside guard's vendored loader",
            lock.display()
        );
    }
    for vendored in [LOADER_PACKAGE, LOGGER_PACKAGE] {
        if !names.contains(&vendored) {
            bail!(
                "{}: the dependent does not resolve {vendored}",
                lock.display()
            );
        }
    }
    println!("dependent (path): {LOADER_PACKAGE} and {LOGGER_PACKAGE}, no stock aya");
    Ok(())
}

/// The git form: `guard = { git = "file://<this repository>", rev = HEAD }`.
pub(super) fn check_git() -> anyhow::Result<()> {
    let root = xtask::paths::workspace_root();
    let head = stdout_of(
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "HEAD"]),
    )?;
    let head = head.trim();
    let dirty = !stdout_of(
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["status", "--porcelain", "--untracked-files=no"]),
    )?
    .trim()
    .is_empty();
    if dirty {
        println!("note: the git form checks HEAD ({head}); the working tree has changes");
    }
    let scratch = target_dir().join("forms").join("git");
    let dependency = format!(
        "guard = {{ git = \"file://{}\", rev = \"{head}\" }}",
        root.display()
    );
    let metadata = resolve(&scratch, &dependency, "")?;
    check_metadata(&metadata, "git+file://", "git")
}

/// The registry form: `guard = "=0.1.0"` from the packaged crates. Also checked to build
/// (`cargo check`) from the packaged files alone, against the prebuilt `object`.
pub(super) fn check_registry(object: &Path) -> anyhow::Result<()> {
    let scratch = target_dir().join("forms").join("registry");
    let unpacked = package(&scratch)?;
    let mut patch = String::from("[patch.crates-io]\n");
    let mut guard_version = String::new();
    for (name, dir) in &unpacked {
        patch.push_str(&format!("{name} = {{ path = \"{}\" }}\n", dir.display()));
        if name == "guard" {
            guard_version = dir
                .file_name()
                .and_then(|file| file.to_str())
                .and_then(|file| file.strip_prefix("guard-"))
                .unwrap_or_default()
                .to_string();
        }
    }
    let dependency = format!("guard = \"={guard_version}\"");
    let metadata = resolve(&scratch.join("dependent"), &dependency, &patch)?;
    check_metadata(&metadata, "path+file://", "registry")?;
    let stand_ins = stand_ins(&target_dir())?;
    let mut check = stable_cargo(&stand_ins)?;
    check
        .arg("check")
        .arg("--manifest-path")
        .arg(scratch.join("dependent").join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", scratch.join("target"))
        .env("GUARD_EBPF_OBJECT", object);
    crate::cmd::run(&mut check).context("the registry form of guard did not build")?;
    println!("dependent (registry): the packaged crates build against the prebuilt object");
    Ok(())
}

/// Writes a dependent named by `dependency` (and `patch`) into `dir` and resolves it fresh:
/// `cargo metadata`'s JSON.
fn resolve(dir: &Path, dependency: &str, patch: &str) -> anyhow::Result<Value> {
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let manifest = format!(
        "[package]\nname = \"guard-dependent-form\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
         publish = false\n\n[dependencies]\n{dependency}\n\n[workspace]\nresolver = \"2\"\n\n{patch}"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(dir.join("src").join("main.rs"), "fn main() {}\n")?;
    let _ = std::fs::remove_file(dir.join("Cargo.lock"));
    let mut command = stable_cargo(&stand_ins(&target_dir())?)?;
    command
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(dir.join("Cargo.toml"));
    let json = stdout_of(&mut command)?;
    serde_json::from_str(&json).context("parsing cargo metadata")
}

/// One aya in the graph: the vendored loader from `source`, whose `src/bpf.rs` is this
/// workspace's, used by guard and by the vendored aya-log alike.
fn check_metadata(metadata: &Value, source: &str, form: &str) -> anyhow::Result<()> {
    let packages = metadata["packages"].as_array().context("no packages")?;
    let name = |package: &Value| package["name"].as_str().unwrap_or_default().to_string();
    if let Some(stock) = packages.iter().find(|p| STOCK.contains(&name(p).as_str())) {
        bail!("the {form} form resolves crates.io's {}", name(stock));
    }
    let loaders: Vec<&Value> = packages
        .iter()
        .filter(|package| {
            package["targets"].as_array().is_some_and(|targets| {
                targets.iter().any(|target| {
                    target["name"] == LOADER_LIB
                        && target["kind"]
                            .as_array()
                            .is_some_and(|kinds| kinds.iter().any(|k| k == "lib"))
                })
            })
        })
        .collect();
    let [loader] = loaders.as_slice() else {
        bail!(
            "the {form} form has {} crates named aya, not one",
            loaders.len()
        );
    };
    let id = loader["id"].as_str().unwrap_or_default();
    if name(loader) != LOADER_PACKAGE || !id.starts_with(source) {
        bail!("the {form} form's aya is {id}, not {LOADER_PACKAGE} from {source}…");
    }
    let manifest = PathBuf::from(loader["manifest_path"].as_str().unwrap_or_default());
    let bpf_rs = manifest.with_file_name("src").join("bpf.rs");
    let ours = xtask::paths::workspace_root().join("vendor/aya/src/bpf.rs");
    if std::fs::read(&bpf_rs).ok() != std::fs::read(&ours).ok() {
        bail!(
            "the {form} form's loader {} is not the vendored {}",
            bpf_rs.display(),
            ours.display()
        );
    }
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .context("no resolve")?;
    for user in ["guard", LOGGER_PACKAGE] {
        let uses = nodes.iter().any(|node| {
            node["id"]
                .as_str()
                .is_some_and(|node_id| super::package_name(node_id) == user)
                && node["dependencies"]
                    .as_array()
                    .is_some_and(|deps| deps.iter().any(|dep| dep == id))
        });
        if !uses {
            bail!("the {form} form's {user} does not use {id}");
        }
    }
    println!("dependent ({form}): one aya, {id}, for guard and {LOGGER_PACKAGE}");
    Ok(())
}

/// Packages guard, guard-common and the vendored crates as a registry would hold them: a
/// scratch workspace with them as members (cargo packages unpublished path dependencies
/// together), `cargo package`, each `.crate` unpacked. Returns (package name, unpacked dir).
fn package(scratch: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let root = xtask::paths::workspace_root();
    let workspace = scratch.join("workspace");
    let _ = std::fs::remove_dir_all(&workspace);
    for (dir, _) in PUBLISHED {
        // The files git would hold (tracked or new, ignored ones left out).
        let files = stdout_of(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&root)
                .args([
                    "ls-files",
                    "--cached",
                    "--others",
                    "--exclude-standard",
                    "--",
                    dir,
                ]),
        )?;
        for file in files
            .lines()
            .filter(|file| !file.starts_with("guard/fuzz/"))
        {
            let from = root.join(file);
            if !from.is_file() {
                continue; // deleted in the working tree
            }
            let to = workspace.join(file);
            std::fs::create_dir_all(to.parent().unwrap_or(&workspace))?;
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let members: Vec<String> = PUBLISHED
        .iter()
        .map(|(dir, _)| format!("\"{dir}\""))
        .collect();
    let mut rewritten = String::new();
    for line in manifest.lines() {
        if line.starts_with("members = ") {
            rewritten.push_str(&format!("members = [{}]\n", members.join(", ")));
        } else if !line.starts_with("default-members = ") && !line.starts_with("exclude = ") {
            rewritten.push_str(line);
            rewritten.push('\n');
        }
    }
    std::fs::write(workspace.join("Cargo.toml"), rewritten)?;
    let packaged = scratch.join("target");
    let mut command = stable_cargo(&stand_ins(&target_dir())?)?;
    command
        .args([
            "package",
            "--workspace",
            "--no-verify",
            "--allow-dirty",
            "--quiet",
        ])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &packaged);
    crate::cmd::run(&mut command).context("packaging guard and its vendored crates")?;
    let registry = scratch.join("registry");
    let _ = std::fs::remove_dir_all(&registry);
    std::fs::create_dir_all(&registry)?;
    let mut unpacked = Vec::new();
    for entry in std::fs::read_dir(packaged.join("package"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "crate") {
            continue;
        }
        crate::cmd::run(
            std::process::Command::new("tar")
                .arg("-xzf")
                .arg(&path)
                .arg("-C")
                .arg(&registry),
        )?;
        let stem = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or_default();
        if let Some((_, name)) = PUBLISHED.iter().find(|(_, name)| {
            stem.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with("-") && rest[1..].starts_with(|c: char| c.is_ascii_digit())
            })
        }) {
            unpacked.push((name.to_string(), registry.join(stem)));
        }
    }
    if unpacked.len() != PUBLISHED.len() {
        bail!(
            "cargo package made {} of the {} crates",
            unpacked.len(),
            PUBLISHED.len()
        );
    }
    Ok(unpacked)
}
