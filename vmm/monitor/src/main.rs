//! `xpmem-vmm`: see `xpmem-vmm --help`.

use std::process::ExitCode;

use xpmem_vmm::cli::{self, Command, USAGE};
use xpmem_vmm::config::Processes;
use xpmem_vmm::monitor;

/// Exit status for command-line and configuration errors.
const EXIT_USAGE: u8 = 2;
/// Exit status when the VMs could not be set up.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    xpmem_vmm::logging::install();
    if std::env::args().nth(1).as_deref() == Some("exec") {
        return ExitCode::from(xpmem_vmm::exec::main(std::env::args().skip(2)));
    }
    if std::env::args().nth(1).as_deref() == Some("vm") {
        return finish(xpmem_vmm::join::run(std::env::args().skip(2).collect()));
    }
    if std::env::args().nth(1).as_deref() == Some("vm-process") {
        let result = xpmem_vmm::vm_process::parse(std::env::args().skip(2))
            .map_err(xpmem_vmm::monitor::MonitorError::VmProcess)
            .and_then(|p| xpmem_vmm::vm_process::run(&p));
        return finish(result);
    }
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            xpmem_vmm::report!("xpmem-vmm: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match command {
        Command::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("xpmem-vmm {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(config) => config,
        Command::Switch { socket, mtu } => return run_switch(&socket, mtu),
    };
    let result = match config.processes {
        Processes::PerVm => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            xpmem_vmm::broker::run(&config, &args)
        }
        Processes::One => monitor::run(&config),
    };
    finish(result)
}

/// The exit status for how the run ended (errors reported on one line).
fn finish(result: Result<monitor::Outcome, monitor::MonitorError>) -> ExitCode {
    match result {
        Ok(outcome) => {
            let code = outcome.exit_code();
            // A VM process that could not set its VM up has said why, in one line.
            if code != 0 && !matches!(outcome, monitor::Outcome::SetupFailed(_)) {
                xpmem_vmm::report!("xpmem-vmm: exiting with status {code}");
            }
            ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILURE))
        }
        Err(e) => {
            xpmem_vmm::report!("xpmem-vmm: error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `xpmem-vmm switch`: the switch alone, until SIGINT or SIGTERM.
fn run_switch(socket: &std::path::Path, mtu: u16) -> ExitCode {
    let stop = match xpmem_vmm::signals::install() {
        Ok(stop) => stop,
        Err(e) => {
            xpmem_vmm::report!("xpmem-vmm: error: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    xpmem_vmm::report!(
        "xpmem-vmm: switch listening at {} (MTU {mtu})",
        socket.display()
    );
    match xpmem_vmm::switch::serve(socket, mtu, stop) {
        Ok(report) => {
            for line in report.lines() {
                xpmem_vmm::report!("xpmem-vmm: switch: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            xpmem_vmm::report!("xpmem-vmm: error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
