//! Standard output for every command, and what happens when it is closed early.
//!
//! Every `basalt` process keeps Rust's default of ignoring SIGPIPE: a command holds sockets (the
//! SDK's connections, `basalt demo`'s link proxies and origin, `basalt dev`'s nodes), and a peer
//! closing one of them must be an error the command handles, never a signal that kills it
//! without a word. (It once did: `basalt demo rate-limiting` died silently when its link proxy
//! cut a connection under an SDK client.)
//!
//! Standard output is the exception: when the reader of a pipe goes away (`basalt kv scan |
//! head`), a command stops as other Unix tools do, killed by SIGPIPE with nothing on stderr. So
//! every line goes through [`write_stdout`] (via [`outln!`] and [`out!`]), which turns a broken
//! pipe on stdout, and only there, into that signal.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by commands that own node processes or temporary clusters (`dev`, `demo`, `bench`): a
/// closed stdout must not end them by a signal, which would run no destructor and leave their
/// nodes running. Their output is then dropped and they go on until they stop as they would.
static SUPERVISING: AtomicBool = AtomicBool::new(false);

/// Marks this process as one that must stop in order, whatever happens to its stdout.
pub fn supervising() {
    SUPERVISING.store(true, Ordering::Relaxed);
}

/// Writes `args` to stdout and flushes it. A broken pipe ends the process by SIGPIPE; any other
/// write error is ignored as `crate::outln!`'s callers could not act on it either.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe && !SUPERVISING.load(Ordering::Relaxed) {
            die_by_sigpipe();
        }
    }
}

/// Ends the process as the default SIGPIPE disposition would, for the shell to see.
fn die_by_sigpipe() -> ! {
    // SAFETY: restoring a signal's default disposition and raising it on this thread; the
    // process is meant to end here.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Only if the signal is blocked on this thread: end with the status a shell reports for it.
    std::process::exit(128 + libc::SIGPIPE)
}

/// `crate::outln!` for the `basalt` command: see [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the `basalt` command: see [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}
