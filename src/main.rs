//! The `regpoll` binary: parse the command line, set up logging, dispatch.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: a poll allocates and frees a few
/// small buffers on one worker thread and they are freed on another, which
/// glibc handles with arena locks and keeps as fragmented heap; measured with
/// `regpoll-bench` at 10,000 devices, see BENCHMARKS.md.
///
/// Without transparent huge pages (the `no_thp` feature, and `main` turns
/// them off for the process): mimalloc asks for them on its arenas, and
/// every touched 2 MiB range then stays resident whole. That was 12 of a
/// 1-device run's 27 MB, and 20 MB of the resident set at 10,000 devices.
///
/// Freed pages go back to the kernel at once (purge delay 0) instead of
/// after mimalloc 3's default second: regpoll frees a steady stream of
/// reports, batches and buffers, and with the delay a second's worth of
/// freed pages stayed resident. At 10,000 devices that was 65 MiB at the
/// peak against 44 MiB without it, at no measurable CPU cost (BENCHMARKS.md).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (15 in both
/// mimalloc 2 and 3); libmimalloc-sys does not name it. Check it when
/// upgrading mimalloc.
const MI_OPTION_PURGE_DELAY: libc::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: libc::c_int, value: libc::c_long);
}

fn main() -> std::process::ExitCode {
    // Also for kernels set to use huge pages always, not only on request.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's options may be set at any time; this one is a
        // plain integer it reads when deciding whether to purge.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    run()
}

#[tokio::main]
async fn run() -> std::process::ExitCode {
    let cli = regpoll::cli::Cli::parse();
    if !cli.command.is_service() {
        quiet_on_closed_stdout();
    }
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "error: --log / REGPOLL_LOG `{}` is not a log filter ({e}); use a level such as info or debug, or directives such as info,regpoll::sink=debug",
                cli.log
            );
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    regpoll::commands::dispatch(cli.command).await
}

/// A one-shot command whose reader went away (`regpoll check … | head -1`)
/// ends quietly, as command-line tools do, instead of panicking on the
/// broken pipe: the process takes SIGPIPE's default action again (Rust
/// ignores it). Not for the service commands, which own sockets and must
/// outlive any one reader.
fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restores a signal's default disposition; no handler of ours runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
