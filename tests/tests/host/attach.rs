//! Host-kernel tests of the task → container map: it follows a task's moves between cgroups
//! (the attach signal) and forgets a task at its exit. A forked child enters the map with its
//! parent's container; that test spans fork and exit, and is here because what it asserts is
//! the map.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use guard::{EventDetail, Guard};
use guard_tests::host::{TestCgroup, move_to_cgroup, root_or_skip, unbounded, watched_container};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_map_follows_moves_between_containers_and_exit() {
    if !root_or_skip("task_map_follows_moves_between_containers_and_exit") {
        return;
    }
    let first = TestCgroup::create("first");
    let second = TestCgroup::create("second");
    let elsewhere = TestCgroup::create("elsewhere");
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("first", &first.path).unwrap();
    guard.watch("second", &second.path).unwrap();

    // A task that waits on stdin until we close it.
    let mut task = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = task.id();
    assert_eq!(guard.task_container(pid).unwrap(), None);

    move_to_cgroup(pid, &first.path);
    assert_eq!(guard.task_container(pid).unwrap().as_deref(), Some("first"));
    move_to_cgroup(pid, &second.path);
    assert_eq!(
        guard.task_container(pid).unwrap().as_deref(),
        Some("second")
    );
    move_to_cgroup(pid, &elsewhere.path);
    assert_eq!(guard.task_container(pid).unwrap(), None);
    move_to_cgroup(pid, &first.path);
    assert_eq!(guard.task_container(pid).unwrap().as_deref(), Some("first"));

    drop(task.stdin.take());
    task.wait().unwrap();
    assert_eq!(
        guard.task_container(pid).unwrap(),
        None,
        "exit must forget the task"
    );
    let counters = guard.counters("first").await.unwrap();
    assert_eq!(counters.bpf.unwrap().exits, 1, "{counters:?}");
    assert_eq!(
        guard.counters("second").await.unwrap().bpf.unwrap().exits,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_children_are_tracked_and_forgotten() {
    if !root_or_skip("forked_children_are_tracked_and_forgotten") {
        return;
    }
    let (cgroup, guard) = watched_container("tracked").await;
    let mut events = guard.subscribe(10_000);

    // A shell that forks `sleep` only once told to (after it has been moved into the container):
    // the forked sleep must be in the task map while it lives, and gone after.
    let mut shell = Command::new("sh")
        .args(["-c", "read go; sleep 1000 & read stop; kill $!; wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    move_to_cgroup(shell.id(), &cgroup.path);
    let mut stdin = shell.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    let child = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("a fork event within 60 s")
            .expect("the event stream stays open");
        if let EventDetail::Fork(fork) = event.detail {
            assert_eq!(event.container.as_deref(), Some("tracked"));
            break fork.child_pid;
        }
    };
    assert_eq!(
        guard.task_container(child).unwrap().as_deref(),
        Some("tracked")
    );
    std::io::Write::write_all(&mut stdin, b"stop\n").unwrap();
    shell.wait().unwrap();
    assert_eq!(guard.task_container(child).unwrap(), None);
    let counters = guard.counters("tracked").await.unwrap();
    // The shell and its sleep: two exits, one fork.
    assert_eq!(counters.bpf.unwrap().forks, 1, "{counters:?}");
    assert_eq!(counters.bpf.unwrap().exits, 2, "{counters:?}");
}

/// A `cat` that waits on stdin until it is dropped.
fn idle_task() -> std::process::Child {
    Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_cgroups_and_tasks_there_first_belong_to_the_container() {
    if !root_or_skip("sub_cgroups_and_tasks_there_first_belong_to_the_container") {
        return;
    }
    let outer = TestCgroup::create("outer");
    let early = outer.child("early");
    let elsewhere = TestCgroup::create("elsewhere");
    // There before the watch, in a sub-cgroup, and never forks: seeded from cgroup.threads.
    let mut first = idle_task();
    move_to_cgroup(first.id(), &early.path);
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("outer", &outer.path).unwrap();
    assert_eq!(
        guard.task_container(first.id()).unwrap().as_deref(),
        Some("outer"),
        "a task in a sub-cgroup before the watch"
    );

    // Moved by another process (this test) into a sub-cgroup that existed at the watch: the
    // attach program resolves it through the registered sub-cgroups.
    let mut moved = idle_task();
    move_to_cgroup(moved.id(), &early.path);
    assert_eq!(
        guard.task_container(moved.id()).unwrap().as_deref(),
        Some("outer")
    );

    // A sub-cgroup created after the watch, a task moved in at once: found by inotify and
    // seeded (or seen by the program once registered), whichever comes first.
    let late = early.child("late");
    let mut later = idle_task();
    move_to_cgroup(later.id(), &late.path);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while guard.task_container(later.id()).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "a task in a new sub-cgroup was never attributed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        guard.task_container(later.id()).unwrap().as_deref(),
        Some("outer")
    );

    // Out of every container: forgotten.
    move_to_cgroup(moved.id(), &elsewhere.path);
    assert_eq!(guard.task_container(moved.id()).unwrap(), None);

    for task in [&mut first, &mut moved, &mut later] {
        drop(task.stdin.take());
        task.wait().unwrap();
    }
    guard.unwatch("outer").await.unwrap();
    drop(late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_cgroup_is_refused() {
    if !root_or_skip("the_root_cgroup_is_refused") {
        return;
    }
    let guard = Guard::start(unbounded()).await.unwrap();
    let root = guard::cgroup::Hierarchy::find().unwrap().mount;
    let error = guard.watch("everything", &root).unwrap_err().to_string();
    assert!(error.contains("root cgroup"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatch_after_the_cgroup_was_removed_says_so() {
    if !root_or_skip("unwatch_after_the_cgroup_was_removed_says_so") {
        return;
    }
    let cgroup = TestCgroup::create("gone");
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("gone", &cgroup.path).unwrap();
    std::fs::remove_dir(&cgroup.path).unwrap();
    let report = guard.unwatch("gone").await.unwrap();
    let flags = report.reconciliation.flags.join("\n");
    assert!(flags.contains("removed before this report"), "{flags}");
    assert_eq!(report.reconciliation.verdict, guard::Verdict::Incomplete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_slot_does_not_count_the_unwatched_containers_tasks() {
    if !root_or_skip("a_reused_slot_does_not_count_the_unwatched_containers_tasks") {
        return;
    }
    // The task map's entries outlive an unwatch and the next container gets the freed counter
    // slot: a task of the old container that forks afterwards must count nowhere. Two-sided:
    // with the programs' slot check removed (`tasks::container_of` trusting any entry) its
    // forks land in the new container's row.
    const FORKS: u64 = 40;
    let old = TestCgroup::create("slot-old");
    let new = TestCgroup::create("slot-new");
    let guard = Guard::start(unbounded()).await.unwrap();
    guard.watch("old", &old.path).unwrap();
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read go; i=0; while [ $i -lt {FORKS} ]; do /bin/true; i=$((i+1)); done"
        ))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // The attach program records the shell as a task of "old" during this write.
    move_to_cgroup(shell.id(), &old.path);
    guard.unwatch("old").await.unwrap();
    guard.watch("new", &new.path).unwrap();
    {
        use std::io::Write as _;
        let mut stdin = shell.stdin.take().unwrap();
        writeln!(stdin, "go").unwrap();
    }
    assert!(shell.wait().unwrap().success());
    // The slot works for the new container's own tasks.
    let tally = guard_tests::host::run_stress(crate::STRESS, Some(&new.path), &["fork", "25"]);
    assert!(tally.contains("\"succeeded\":25"), "{tally}");

    let counters = guard.counters("new").await.unwrap();
    let bpf = counters.bpf.unwrap();
    assert_eq!(
        bpf.forks, 25,
        "only the new container's forks: {counters:?}"
    );
    // Its 25 children and guard-stress itself, which ran in the container.
    assert_eq!(
        bpf.exits, 26,
        "only the new container's exits: {counters:?}"
    );
    drop((old, new));
}
