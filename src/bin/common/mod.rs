//! What both binaries do around a command: install the warning sink, pick the device and say
//! which, and print the whole error chain and exit non-zero on failure.

use oe::cli::DeviceArgs;
use std::process::ExitCode;

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
