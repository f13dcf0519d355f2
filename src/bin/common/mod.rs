//! What both binaries do around a command: install the warning sink, pick the device and say
//! which, and print the whole error chain and exit non-zero on failure.

use oe::cli::DeviceArgs;
use std::io::Write;
use std::process::ExitCode;

/// The exit status after the reader of standard output went away (a closed pipe: `| head`), as
/// for a process ended by SIGPIPE (128 + 13), without a message.
pub const EXIT_STDOUT_CLOSED: u8 = 141;

/// Standard output was closed by its reader; the command stops without saying more.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to standard output and flushes: a closed pipe is [`StdoutClosed`] (a quiet exit in
/// [`main`]), any other failure (a full disk: `> /dev/full`) an error saying so. `print!` would
/// panic on either.
pub fn write_stdout(args: std::fmt::Arguments) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `print!` through [`write_stdout`]: evaluates to `anyhow::Result<()>`.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::common::write_stdout(format_args!($($t)*))
    };
}

/// `println!` through [`write_stdout`]: evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::common::write_stdout(format_args!("{}\n", format_args!($($t)*)))
    };
}

#[allow(unused_imports)]
pub(crate) use {out, outln};

/// Whether `e` comes from the reader of standard output going away: [`StdoutClosed`], or the
/// library's own writes to standard output (`score` rows, named `<stdout>`) failing with a broken
/// pipe.
fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || matches!(
                c.downcast_ref::<oe::OeError>(),
                Some(oe::OeError::Io { path, source })
                    if path.as_os_str() == "<stdout>"
                        && source.kind() == std::io::ErrorKind::BrokenPipe
            )
    })
}

/// Sets libtorch's threads, resolves `--device` and says (unless `quiet`) which device was chosen
/// and why.
pub fn device(args: &DeviceArgs, quiet: bool) -> anyhow::Result<tch::Device> {
    let choice = args.select()?;
    if !quiet {
        eprintln!("{}", choice.description);
    }
    Ok(choice.device)
}

/// Whether `e` (or one of its causes) is a stop on a signal after saving resumable state.
pub fn interrupted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<oe::OeError>(),
            Some(oe::OeError::Interrupted(_))
        )
    })
}

/// Runs a binary's command: warnings from the library go to standard error; an error is printed
/// with its whole cause chain, and the exit status is non-zero. A command stopped by a signal
/// after saving resumable state ([`oe::interrupt`]) requeues its Slurm array task (when it runs as
/// one) and exits with [`oe::interrupt::EXIT_INTERRUPTED`].
pub fn main(run: fn() -> anyhow::Result<()>) -> ExitCode {
    oe::error::warnings::set_warning_sink(|w| eprintln!("warning: {w}"));
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if stdout_closed(&e) => ExitCode::from(EXIT_STDOUT_CLOSED),
        Err(e) => {
            eprintln!("{}", oe::cli::error_chain(e.as_ref()));
            if !interrupted(&e) {
                return ExitCode::FAILURE;
            }
            match oe::interrupt::requeue_slurm_task() {
                Ok(Some(m)) => eprintln!("{m}"),
                Ok(None) => {}
                Err(e) => eprintln!("warning: {e}"),
            }
            ExitCode::from(oe::interrupt::EXIT_INTERRUPTED)
        }
    }
}

/// Keeps memory freed by libtorch in the process instead of returning it to the kernel (glibc:
/// no `mmap` for large blocks, no trimming). Training a WRN frees and reallocates its activations
/// every step; with glibc's defaults each of those blocks is a fresh mapping whose pages the kernel
/// zeroes again (6.6 million page faults in 4 WRN-40-2 steps of 384 images). Measured with
/// `oe-vision bench --depth 40 --steps 3` on 2 cores: 9.5 s a step with the defaults, 8.4 s without
/// the mappings, for 18% more resident memory. `OE_MALLOC=system` keeps glibc's defaults.
#[allow(dead_code)] // oe-vision only
pub fn keep_freed_memory() {
    if std::env::var_os("OE_MALLOC").is_some_and(|v| v == "system") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate (at the start of a command).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
