//! A guard that cannot run is refused at start: a tokio runtime without the IO or time driver
//! would otherwise start it, then panic in every one of its tasks and leave the containers it
//! watches impossible to unwatch. No root needed: the runtime is checked first.
use guard::{Guard, GuardOptions, Tier};

/// `Guard::start` on a current-thread runtime built by `build`, with tier 0 (no BPF).
fn start_on(build: impl FnOnce(&mut tokio::runtime::Builder)) -> Result<Tier, String> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    build(&mut builder);
    let runtime = builder.build().expect("a runtime");
    runtime.block_on(async {
        let mut options = GuardOptions::default();
        options.max_tier = Tier::CgroupFilesOnly;
        Guard::start(options)
            .await
            .map(|guard| guard.tier())
            .map_err(|error| error.to_string())
    })
}

#[test]
fn a_runtime_without_io_or_time_is_refused_at_start() {
    assert_eq!(
        start_on(|builder| {
            builder.enable_time();
        }),
        Err(
            "guard cannot run here: the tokio runtime has no io driver (build it with \
             enable_io() or enable_all())"
                .to_string()
        )
    );
    assert_eq!(
        start_on(|builder| {
            builder.enable_io();
        }),
        Err(
            "guard cannot run here: the tokio runtime has no time driver (build it with \
             enable_time() or enable_all())"
                .to_string()
        )
    );
    // The check refuses only what cannot run: with both drivers the same start succeeds.
    assert_eq!(
        start_on(|builder| {
            builder.enable_all();
        }),
        Ok(Tier::CgroupFilesOnly)
    );
}

#[test]
fn a_start_outside_any_runtime_is_refused() {
    // Polled by hand, outside tokio: no runtime to spawn the guard's tasks on.
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut start = std::pin::pin!(Guard::start(GuardOptions::default()));
    match start.as_mut().poll(&mut context) {
        std::task::Poll::Ready(Err(error)) => assert_eq!(
            error.to_string(),
            "guard cannot run here: Guard::start was not called inside a tokio runtime"
        ),
        std::task::Poll::Ready(Ok(_)) => panic!("a guard started outside any runtime"),
        std::task::Poll::Pending => panic!("the start waited instead of refusing"),
    }
}
