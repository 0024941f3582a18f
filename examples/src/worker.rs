//! Workers as a system's processes: each on a thread and runtime of its own with its own
//! connection, so that killing one takes everything it runs (the SDK's background tasks too) as
//! a crash would: no leave, no last commit, its connections dropped.

use std::future::Future;

use tokio::sync::watch;

use crate::DemoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    /// Finish cleanly: commit what it is done with, leave its group.
    Close,
    /// Vanish: its runtime is dropped with every task on it, at whatever await they are.
    Kill,
}

/// A worker's handle.
pub(crate) struct Worker {
    pub(crate) name: String,
    stop: watch::Sender<Stop>,
    thread: std::thread::JoinHandle<Result<(), DemoError>>,
}

/// What a worker's work watches to learn that it should finish cleanly.
pub(crate) struct Closing(watch::Receiver<Stop>);

impl Closing {
    /// Resolves once the worker is asked to close (or its handle is gone). Cancel safe: it
    /// looks at the current request first.
    pub(crate) async fn requested(&mut self) {
        let _ = self.0.wait_for(|s| *s == Stop::Close).await;
    }
}

impl Worker {
    /// Starts `work` on a thread of its own; `work` should finish once [`Closing::requested`]
    /// resolves.
    pub(crate) fn spawn<F, Fut>(name: String, work: F) -> Result<Worker, DemoError>
    where
        F: FnOnce(Closing) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), DemoError>> + 'static,
    {
        let (stop, stopped) = watch::channel(Stop::Run);
        let worker = name.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| DemoError::Setup(format!("{worker}: starting its runtime: {e}")))?;
                let mut killed = stopped.clone();
                let result = runtime.block_on(async move {
                    tokio::select! {
                        result = work(Closing(stopped)) => result,
                        _ = killed.wait_for(|s| *s == Stop::Kill) => Ok(()),
                    }
                });
                // Killed: the tasks `work` started (a consumer's heartbeats, a client's
                // connections) are dropped here, never polled again.
                drop(runtime);
                result
            })
            .map_err(|e| DemoError::Setup(format!("starting {name}: {e}")))?;
        Ok(Worker { name, stop, thread })
    }

    /// Whether its work ended by itself (its thread is done).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks the worker to finish cleanly and waits for it: its error, if it had one.
    pub(crate) async fn close(self) -> Result<(), DemoError> {
        self.stop_with(Stop::Close).await
    }

    /// Kills the worker (see the module's comment) and waits until it is gone.
    pub(crate) async fn kill(self) -> Result<(), DemoError> {
        self.stop_with(Stop::Kill).await
    }

    async fn stop_with(self, how: Stop) -> Result<(), DemoError> {
        let _ = self.stop.send(how);
        let name = self.name;
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(result)) => result,
            _ => Err(DemoError::Setup(format!("{name} panicked"))),
        }
    }
}

/// Closes a worker's consumer: its last commit, then leaving the group. A last commit refused
/// because the group moved on meanwhile (`ILLEGAL_GENERATION`, `NOT_ASSIGNED`: a rebalance
/// gave its partitions to another member while it finished) is no failure of the worker: the
/// next owner reads those records again from the last commit, and the systems' checks count what
/// was applied, not what was committed. It has left the group all the same.
pub(crate) async fn close_consumer(
    consumer: basalt_client::Consumer,
    name: &str,
    group: &str,
) -> Result<(), DemoError> {
    use crate::Doing;
    use basalt_client::ErrorCode;
    match consumer.close().await {
        Err(e) if matches!(e.code(), Some(ErrorCode::IllegalGeneration | ErrorCode::NotAssigned)) => Ok(()),
        other => other.doing(|| format!("{name} leaving group {group}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_closed_worker_finishes_its_work_and_a_killed_one_does_not() {
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let closed = Worker::spawn("closed".into(), move |mut closing| async move {
            closing.requested().await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        })
        .expect("spawn");
        closed.close().await.expect("close");
        assert!(finished.load(Ordering::SeqCst));

        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let killed = Worker::spawn("killed".into(), move |mut closing| async move {
            closing.requested().await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        })
        .expect("spawn");
        killed.kill().await.expect("kill");
        assert!(!finished.load(Ordering::SeqCst));
    }
}
