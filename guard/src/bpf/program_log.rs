//! The programs' own aya-log messages, forwarded as they arrive.

/// Forwards the programs' own aya-log messages to our `log`/`tracing` subscriber.
pub(crate) async fn forward_program_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd for its lifetime, which the AsyncFd owns.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            tracing::warn!(error = %error.into_parts().1, "eBPF programs' own log messages will not be shown");
            return;
        }
    };
    while let Ok(mut ready) = logger.readable_mut().await {
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
