//! `ringcast ctl`: a command-line client of the control socket (docs/control.md).

/// Arguments of `ringcast ctl`.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Control address: unix:PATH or tcp:ADDR [default: $RINGCAST_CONTROL, else unix:/tmp/ringcast.sock].
    #[arg(long)]
    pub control: Option<String>,
    /// Print raw JSON replies.
    #[arg(long)]
    pub json: bool,
    /// The method and its arguments, or `-` to read NDJSON requests from stdin.
    #[arg(trailing_var_arg = true)]
    pub args: Vec<String>,
}

/// Runs the client; returns the process exit status.
pub fn run(args: CtlArgs) -> i32 {
    eprintln!("ringcast ctl: not built yet ({:?})", args.args);
    2
}
