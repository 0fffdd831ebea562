use super::*;

fn limits() -> Limits {
    Limits {
        memory_max: Some(64 << 20),
        swap_max: Some(0),
        pids_max: Some(512),
    }
}

fn spec() -> Spec {
    for_rootfs(Path::new("/tmp/rootfs"), &["sh".to_string()], &[]).unwrap()
}

#[test]
fn applies_limits_path_namespace_readonly_cgroupfs_and_score() {
    let mut spec = spec();
    apply(&mut spec, "web-1", &limits(), &SpecOptions::default()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/guard/web-1"))
    );
    let resources = linux.resources().as_ref().unwrap();
    let memory = resources.memory().unwrap();
    assert_eq!(memory.limit(), Some(64 << 20));
    assert_eq!(
        memory.swap(),
        Some(64 << 20),
        "memory+swap = memory: no swap"
    );
    assert_eq!(resources.pids().unwrap().limit(), 512);
    assert!(
        linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Cgroup)
    );
    let cgroupfs: Vec<_> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination() == Path::new(CGROUP_MOUNT))
        .collect();
    assert_eq!(cgroupfs.len(), 1);
    assert!(
        cgroupfs[0]
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string())
    );
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
}

#[test]
fn max_limits_are_minus_one_and_namespace_is_added_once() {
    let mut spec = spec();
    let unlimited = Limits {
        memory_max: None,
        swap_max: None,
        pids_max: None,
    };
    // A bundle without a cgroup namespace gets one; one that has it keeps exactly one.
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .namespaces_mut()
        .as_mut()
        .unwrap()
        .retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
    apply(&mut spec, "a", &unlimited, &SpecOptions::default()).unwrap();
    apply(&mut spec, "a", &unlimited, &SpecOptions::default()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let memory = linux.resources().as_ref().unwrap().memory().unwrap();
    assert_eq!((memory.limit(), memory.swap()), (Some(-1), Some(-1)));
    assert_eq!(
        linux.resources().as_ref().unwrap().pids().unwrap().limit(),
        -1
    );
    let cgroup_namespaces = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|n| n.typ() == LinuxNamespaceType::Cgroup)
        .count();
    assert_eq!(cgroup_namespaces, 1);
}

#[test]
fn configurable_root_and_score_and_omitted_path() {
    let mut spec = spec();
    let options = SpecOptions {
        cgroup_root: "/agent/boxes".into(),
        oom_score_adj: 500,
        ..SpecOptions::default()
    };
    apply(&mut spec, "x", &limits(), &options).unwrap();
    assert_eq!(
        spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
        Some(Path::new("/agent/boxes/x"))
    );
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(500));
    // An infrastructure init has its own score in the spec (the spec's process is the init).
    let options = SpecOptions {
        oom_score_adj: 500,
        init_oom_score_adj: Some(-998),
        ..SpecOptions::default()
    };
    apply(&mut spec, "x", &limits(), &options).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-998));
    let options = SpecOptions {
        omit_cgroups_path: true,
        ..Default::default()
    };
    apply(&mut spec, "x", &limits(), &options).unwrap();
    assert_eq!(spec.linux().as_ref().unwrap().cgroups_path(), &None);
}

/// A hostile id is an error naming it, and no path is built from it.
#[test]
fn hostile_ids_are_errors_not_paths() {
    let long = "z".repeat(200);
    for id in [
        "",
        "..",
        ".",
        "../../etc",
        "a/b",
        "/abs",
        "a\0b",
        "a\nb",
        "tab\tid",
        "a b",
        &long,
    ] {
        let mut spec = spec();
        let before = spec.clone();
        let error = apply(&mut spec, id, &limits(), &SpecOptions::default())
            .unwrap_err()
            .to_string();
        assert_eq!(spec, before, "{id:?}: the spec was changed");
        if id.is_empty() {
            assert!(error.contains("empty"), "{error}");
        } else if id.len() > 128 {
            assert!(error.contains("200 bytes"), "{error}");
        } else {
            assert!(error.contains(&format!("{id:?}")), "{id:?}: {error}");
        }
    }
}

#[test]
fn bad_roots_and_scores_are_rejected_by_value() {
    for root in ["guard", "/guard/../x", "/a//b", "/./a", "/a\nb", ""] {
        let options = SpecOptions {
            cgroup_root: root.into(),
            ..Default::default()
        };
        let error = options.cgroups_path("ok").unwrap_err().to_string();
        assert!(error.contains(&format!("{root:?}")), "{root:?}: {error}");
    }
    for score in [-1000, -5000, 1001] {
        for options in [
            SpecOptions {
                oom_score_adj: score,
                ..Default::default()
            },
            SpecOptions {
                init_oom_score_adj: Some(score),
                ..Default::default()
            },
        ] {
            let error = options.cgroups_path("ok").unwrap_err().to_string();
            assert!(error.contains(&score.to_string()), "{error}");
        }
    }
    assert!(
        SpecOptions {
            cgroup_root: "/".into(),
            ..Default::default()
        }
        .cgroups_path("c")
        .is_ok()
    );
}

#[test]
fn without_swap_accounting_no_swap_limit_is_asked_for() {
    let options = SpecOptions {
        swap_accounting: false,
        ..SpecOptions::default()
    };
    for memory_max in [Some(64 << 20), None] {
        let mut spec = spec();
        let limits = Limits {
            memory_max,
            ..limits()
        };
        apply(&mut spec, "a", &limits, &options).unwrap();
        let resources = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let memory = resources.memory().unwrap();
        assert_eq!(memory.swap(), None, "{memory_max:?}");
        // Unlimited memory is left at the cgroup's own `max`, not written.
        let expected = memory_max.map(|bytes| bytes as i64);
        assert_eq!(memory.limit(), expected, "{memory_max:?}");
    }
}

#[test]
fn mounts_of_filesystems_the_kernel_lacks_are_dropped_and_named() {
    let mut spec = spec();
    apply(&mut spec, "a", &limits(), &SpecOptions::default()).unwrap();
    let known: Vec<String> = ["proc", "tmpfs", "devpts", "sysfs"]
        .map(String::from)
        .into();
    let dropped = drop_unsupported_mounts(&mut spec, &known);
    assert_eq!(dropped, [PathBuf::from("/dev/mqueue")]);
    let destinations: Vec<_> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|mount| mount.destination().to_path_buf())
        .collect();
    // The read-only cgroupfs is guard's own and stays (libcontainer mounts it as cgroup2).
    assert!(
        destinations.contains(&PathBuf::from(CGROUP_MOUNT)),
        "{destinations:?}"
    );
    assert!(
        destinations.contains(&PathBuf::from("/proc")),
        "{destinations:?}"
    );
    // A kernel with everything drops nothing.
    let all: Vec<String> = ["proc", "tmpfs", "devpts", "sysfs", "mqueue"]
        .map(String::from)
        .into();
    let mut full = spec.clone();
    assert!(drop_unsupported_mounts(&mut full, &all).is_empty());
}

#[test]
fn empty_command_is_rejected() {
    assert!(matches!(
        for_rootfs(Path::new("/r"), &[], &[]),
        Err(SpecError::EmptyCommand)
    ));
}
