//! The driver fallback, tested on the real binary: `ringcast serve` runs in a child process whose
//! io_uring is blocked by a seccomp filter (io_uring_setup, io_uring_enter and io_uring_register
//! fail with EPERM, as under the default profiles of Docker 25+ and containerd 2.0). The filter
//! is installed between fork and exec, so only the child is confined: this test process keeps
//! io_uring, and `filter_blocks_io_uring_in_the_child_only` checks that it does.
//!
//! The filter is written for x86_64 and aarch64 (io_uring_setup is syscall 425 on both); on other
//! architectures the tests print why and pass as skipped.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_ringcast");

/// Readiness on a loaded 2-core machine.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// From start (a refusal) or from SIGTERM (a graceful shutdown) to exit.
const EXIT_LIMIT: Duration = Duration::from_secs(30);
/// For a line the child has written (or will write at once) to reach the reader threads.
const OUTPUT_LIMIT: Duration = Duration::from_secs(10);
/// Socket reads and writes of the WebSocket client.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// `ringcast serve` on a kernel-chosen loopback port, one unpinned shard, no control socket.
const SERVE: [&str; 7] = [
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--shards",
    "1",
    "--no-control",
    "--no-pin",
];

// The io_uring syscalls: the same numbers on x86_64 and aarch64.
const NR_IO_URING_SETUP: u32 = 425;
const NR_IO_URING_ENTER: u32 = 426;
const NR_IO_URING_REGISTER: u32 = 427;

/// The audit architecture of this build (`seccomp_data.arch` of its native syscalls).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E); // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7); // AUDIT_ARCH_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// The build's audit architecture, or `None` after printing why the test is skipped.
fn audit_arch_or_skip(test: &str) -> Option<u32> {
    if AUDIT_ARCH.is_none() {
        println!(
            "{test}: skipped: the io_uring seccomp filter is written for x86_64 and aarch64 \
             only, and this build is for {}",
            std::env::consts::ARCH
        );
    }
    AUDIT_ARCH
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    let code = u16::try_from(code).expect("BPF opcodes fit in 16 bits");
    libc::sock_filter { code, jt, jf, k }
}

/// The classic-BPF seccomp program: syscalls of another architecture are allowed; of this one,
/// io_uring_setup, io_uring_enter and io_uring_register fail with EPERM and the rest is allowed.
fn io_uring_filter(arch: u32) -> Box<[libc::sock_filter]> {
    let load_word = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jump_if_equal = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let arch_offset = u32::try_from(std::mem::offset_of!(libc::seccomp_data, arch)).unwrap();
    let nr_offset = u32::try_from(std::mem::offset_of!(libc::seccomp_data, nr)).unwrap();
    let eperm = u32::try_from(libc::EPERM).unwrap() & libc::SECCOMP_RET_DATA;
    // Jump offsets count the instructions skipped after the jump itself.
    vec![
        /* 0 */ stmt(load_word, arch_offset),
        /* 1 */ jump(jump_if_equal, arch, 0, 4), // another architecture: to 6, allow
        /* 2 */ stmt(load_word, nr_offset),
        /* 3 */ jump(jump_if_equal, NR_IO_URING_SETUP, 3, 0), // to 7
        /* 4 */ jump(jump_if_equal, NR_IO_URING_ENTER, 2, 0), // to 7
        /* 5 */ jump(jump_if_equal, NR_IO_URING_REGISTER, 1, 0), // to 7
        /* 6 */ stmt(ret, libc::SECCOMP_RET_ALLOW),
        /* 7 */ stmt(ret, libc::SECCOMP_RET_ERRNO | eperm),
    ]
    .into_boxed_slice()
}

/// Installs `program` as a seccomp filter in the child that `command` spawns, between fork and
/// exec. The program is built before the fork; the hook allocates nothing.
fn confine(command: &mut Command, program: Box<[libc::sock_filter]>) {
    let len = u16::try_from(program.len()).expect("a short BPF program");
    let hook = move || {
        let zero: libc::c_ulong = 0;
        let one: libc::c_ulong = 1;
        let prog = libc::sock_fprog {
            len,
            filter: program.as_ptr().cast_mut(),
        };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes four integer arguments and touches no memory. It
        // lets an unprivileged process install a filter.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mode = libc::c_ulong::from(libc::SECCOMP_MODE_FILTER);
        let prog_ptr: *const libc::sock_fprog = &prog;
        // SAFETY: PR_SET_SECCOMP with SECCOMP_MODE_FILTER reads the `sock_fprog` it is given
        // and the `len` instructions it points to; both are alive for the call (the kernel
        // copies the program).
        if unsafe { libc::prctl(libc::PR_SET_SECCOMP, mode, prog_ptr) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe calls
    // are sound. It allocates nothing (the program was allocated before the fork and is only
    // borrowed; `sock_fprog` lives on the stack; `last_os_error` reads errno into a value) and
    // calls nothing but prctl. The closure owns the program, so it outlives both calls.
    unsafe { command.pre_exec(hook) };
}

/// Calls io_uring_setup in this (the test) process and closes the ring it gets.
fn set_up_io_uring_here() -> std::io::Result<()> {
    // struct io_uring_params: 120 bytes, all zero for a default ring; u64 for its alignment.
    let mut params = [0u64; 15];
    assert_eq!(std::mem::size_of_val(&params), 120);
    let nr = libc::c_long::from(NR_IO_URING_SETUP);
    let entries: libc::c_long = 4;
    // SAFETY: io_uring_setup(entries, params) reads and writes the 120-byte io_uring_params that
    // `params` is (zeroed, 8-aligned, alive for the call) and touches no other memory.
    let fd = unsafe { libc::syscall(nr, entries, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).expect("a file descriptor fits in c_int");
    // SAFETY: `fd` is the ring descriptor just returned to this function, which nothing else
    // knows of; it is closed once.
    unsafe { libc::close(fd) };
    Ok(())
}

/// A child process with its output read by two threads, stdout line by line into a channel and
/// stderr into a shared list. Dropping it kills the child, so no process outlives a test, even
/// one that panics.
struct Running {
    child: Child,
    stdout: Receiver<String>,
    stdout_lines: Vec<String>,
    stdout_closed: bool,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: JoinHandle<()>,
}

impl Running {
    /// Starts the ringcast binary with `args`, under the io_uring filter for `confined_arch`.
    fn start(args: &[&str], confined_arch: Option<u32>) -> Running {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(arch) = confined_arch {
            confine(&mut command, io_uring_filter(arch));
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} {args:?}: {e}"));
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Running {
            child,
            stdout,
            stdout_lines: Vec::new(),
            stdout_closed: false,
            stderr,
            stderr_reader,
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Receives one stdout line, waiting until `deadline` at most.
    fn next_stdout_line(&mut self, deadline: Instant) -> Option<String> {
        if self.stdout_closed {
            return None;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(wait) {
            Ok(line) => {
                self.stdout_lines.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_closed = true;
                None
            }
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// Waits (30 s at most) for `ringcast ready listen=127.0.0.1:PORT shards=1 pid=PID` and
    /// returns PORT; a readiness line that names another pid or shard count is an error.
    fn wait_ready(&mut self) -> Result<u16, String> {
        let deadline = Instant::now() + READY_LIMIT;
        while let Some(line) = self.next_stdout_line(deadline) {
            if line.starts_with("ringcast ready ") {
                return parse_ready(&line, self.child.id());
            }
        }
        Err(if self.stdout_closed {
            "stdout closed without a readiness line".to_string()
        } else {
            format!("no readiness line within {READY_LIMIT:?}")
        })
    }

    /// Every stdout line, once the child has closed its stdout (10 s at most after the call).
    fn stdout_to_end(&mut self) -> Vec<String> {
        let deadline = Instant::now() + OUTPUT_LIMIT;
        while self.next_stdout_line(deadline).is_some() {}
        assert!(
            self.stdout_closed,
            "stdout still open {OUTPUT_LIMIT:?} after the child exited"
        );
        self.stdout_lines.clone()
    }

    /// All of stderr, once the child has closed it (10 s at most after the call).
    fn stderr_to_end(&self) -> String {
        let deadline = Instant::now() + OUTPUT_LIMIT;
        while !self.stderr_reader.is_finished() {
            assert!(
                Instant::now() < deadline,
                "stderr still open {OUTPUT_LIMIT:?} after the child exited"
            );
            std::thread::sleep(POLL);
        }
        self.stderr_text()
    }

    /// The first stderr line that `wanted` accepts, polling for 10 s at most.
    fn wait_stderr_line(&self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + OUTPUT_LIMIT;
        loop {
            if let Some(line) = self.stderr.lock().unwrap().iter().find(|l| wanted(l)) {
                return Some(line.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The exit status, polling for `limit` at most; `None` if the child still runs.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    fn sigterm(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "the server exited before SIGTERM; stderr:\n{}",
            self.stderr_text()
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits in pid_t");
        // SAFETY: kill(2) touches no memory of this process. The child has not been reaped (it
        // was running just now and only this struct waits for it), so `pid` is still ours.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_ready(line: &str, child_pid: u32) -> Result<u16, String> {
    let bad = || format!("malformed readiness line: {line:?}");
    let rest = line
        .strip_prefix("ringcast ready listen=")
        .ok_or_else(bad)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [listen, shards, pid] = fields[..] else {
        return Err(bad());
    };
    let addr: SocketAddr = listen.parse().map_err(|_| bad())?;
    let pid: u32 = pid
        .strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    if !addr.ip().is_loopback() || addr.port() == 0 || shards != "shards=1" || pid != child_pid {
        return Err(format!(
            "readiness line {line:?} does not describe the child (pid {child_pid}) started on \
             127.0.0.1:0 with one shard"
        ));
    }
    Ok(addr.port())
}

/// Whether this binary's `serve` has the `--driver` option (the feature under test).
fn binary_has_driver_flag() -> bool {
    let mut help = Running::start(&["serve", "--help"], None);
    let status = help
        .wait_exit(EXIT_LIMIT)
        .expect("`ringcast serve --help` exits");
    let out = help.stdout_to_end().join("\n");
    assert!(status.success(), "`ringcast serve --help`: {status}");
    out.contains("--driver")
}

/// Runs `args` under the filter and expects a refusal: a non-zero exit within 30 s and no
/// readiness line. Returns the stderr.
fn refused_under_filter(arch: u32, args: &[&str]) -> String {
    let mut server = Running::start(args, Some(arch));
    let Some(status) = server.wait_exit(EXIT_LIMIT) else {
        panic!(
            "`ringcast {}` still runs after {EXIT_LIMIT:?} with io_uring blocked; stdout: {:?}; \
             stderr:\n{}",
            args.join(" "),
            server.stdout_lines,
            server.stderr_text()
        );
    };
    let stdout = server.stdout_to_end();
    let stderr = server.stderr_to_end();
    assert!(
        !status.success(),
        "exited with {status} although io_uring was blocked; stderr:\n{stderr}"
    );
    assert!(
        !stdout.iter().any(|l| l.starts_with("ringcast ready")),
        "printed a readiness line although it failed: {stdout:?}"
    );
    stderr
}

/// Opens `/ws?channel=t:x` on the server and returns the first frame's text.
fn first_ws_text(port: u16) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut ws, response) =
        tungstenite::client(format!("ws://{addr}/ws?channel=t:x"), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    match ws.read().expect("a first frame within the read timeout") {
        Message::Text(text) => text.as_str().to_string(),
        other => panic!("the first frame is not text: {other:?}"),
    }
}

#[test]
fn filter_blocks_io_uring_in_the_child_only() {
    let Some(arch) = audit_arch_or_skip("filter_blocks_io_uring_in_the_child_only") else {
        return;
    };
    if let Err(e) = set_up_io_uring_here() {
        panic!("io_uring_setup fails in the test process itself, before any filter: {e}");
    }
    // Today's binary has no --driver and always needs io_uring; once the option exists, `uring`
    // asks for the same.
    let mut args = SERVE.to_vec();
    if binary_has_driver_flag() {
        args.extend(["--driver", "uring"]);
    }
    let stderr = refused_under_filter(arch, &args);
    assert!(
        stderr.contains("io_uring") && stderr.contains("seccomp"),
        "stderr should blame io_uring being blocked by seccomp:\n{stderr}"
    );
    // The filter stayed in the child.
    if let Err(e) = set_up_io_uring_here() {
        panic!("io_uring_setup fails in the test process after confining a child: {e}");
    }
}

#[test]
fn auto_driver_falls_back_to_epoll_and_serves() {
    let Some(arch) = audit_arch_or_skip("auto_driver_falls_back_to_epoll_and_serves") else {
        return;
    };
    if !binary_has_driver_flag() {
        println!("skipped: --driver not available in this binary");
        return;
    }
    let mut args = SERVE.to_vec();
    args.extend(["--driver", "auto"]);
    let mut server = Running::start(&args, Some(arch));
    let port = server
        .wait_ready()
        .unwrap_or_else(|e| panic!("{e}; stderr:\n{}", server.stderr_text()));
    let Some(line) =
        server.wait_stderr_line(|l| l.contains("driver: epoll (io_uring unavailable:"))
    else {
        panic!(
            "no `driver: epoll (io_uring unavailable: ...` line on stderr:\n{}",
            server.stderr_text()
        );
    };
    assert!(
        line.contains("Fix:"),
        "the fallback line names no fix: {line}"
    );
    let welcome = first_ws_text(port);
    assert!(
        welcome.starts_with(r#"{"op":"welcome""#),
        "first frame: {welcome}"
    );
    server.sigterm();
    let Some(status) = server.wait_exit(EXIT_LIMIT) else {
        panic!(
            "still running {EXIT_LIMIT:?} after SIGTERM; stderr:\n{}",
            server.stderr_text()
        );
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}; stderr:\n{}",
        server.stderr_text()
    );
}

#[test]
fn uring_driver_refuses_without_io_uring() {
    let Some(arch) = audit_arch_or_skip("uring_driver_refuses_without_io_uring") else {
        return;
    };
    if !binary_has_driver_flag() {
        println!("skipped: --driver not available in this binary");
        return;
    }
    let mut args = SERVE.to_vec();
    args.extend(["--driver", "uring"]);
    let stderr = refused_under_filter(arch, &args);
    assert!(
        stderr.contains("io_uring"),
        "stderr does not name io_uring:\n{stderr}"
    );
}

/// Runs the filter program as the kernel would, on a syscall of architecture `arch` numbered
/// `nr`. Only the three opcodes the program uses are known; its jumps go forward only.
fn run_filter(program: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
    let mut data = [0u8; std::mem::size_of::<libc::seccomp_data>()];
    let nr_at = std::mem::offset_of!(libc::seccomp_data, nr);
    let arch_at = std::mem::offset_of!(libc::seccomp_data, arch);
    data[nr_at..nr_at + 4].copy_from_slice(&nr.to_ne_bytes());
    data[arch_at..arch_at + 4].copy_from_slice(&arch.to_ne_bytes());
    let mut pc = 0;
    let mut acc = 0u32;
    loop {
        let insn = program[pc];
        pc += 1;
        let code = u32::from(insn.code);
        if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
            let at = usize::try_from(insn.k).unwrap();
            acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
        } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
            pc += usize::from(if acc == insn.k { insn.jt } else { insn.jf });
        } else if code == libc::BPF_RET | libc::BPF_K {
            return insn.k;
        } else {
            panic!("unexpected BPF opcode {code:#x} at {}", pc - 1);
        }
    }
}

/// The filter's decisions, including the branch the child never takes (another architecture).
#[test]
fn filter_program_decides_as_specified() {
    let native = AUDIT_ARCH.unwrap_or(0xC000_003E);
    let other = 0x4000_0003; // AUDIT_ARCH_I386, whose io_uring_setup is also 425
    let program = io_uring_filter(native);
    let deny = libc::SECCOMP_RET_ERRNO | u32::try_from(libc::EPERM).unwrap();
    for nr in [NR_IO_URING_SETUP, NR_IO_URING_ENTER, NR_IO_URING_REGISTER] {
        assert_eq!(run_filter(&program, native, nr), deny, "syscall {nr}");
        assert_eq!(
            run_filter(&program, other, nr),
            libc::SECCOMP_RET_ALLOW,
            "syscall {nr} of another architecture"
        );
    }
    for nr in [0, 1, 59, 221, 424, 428, 435] {
        assert_eq!(
            run_filter(&program, native, nr),
            libc::SECCOMP_RET_ALLOW,
            "syscall {nr}"
        );
    }
}
