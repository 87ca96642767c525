//! The one seam to the operating system: epoll, non-blocking sockets, timerfd, the file limit,
//! CPU time and the monotonic clock. Everything above this module is plain data and decisions.
//!
//! Contract: every function here is a thin wrapper that returns `io::Result`; none keeps state
//! besides the fd it owns. Sockets are non-blocking and close-on-exec; an `OwnedFd` closes its
//! socket on drop, which also removes it from every epoll set (the last reference is gone).

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// CLOCK_MONOTONIC in nanoseconds. The server under test runs on the same host, so a payload
/// stamped with this clock by the publisher can be compared with this clock at the subscriber.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// What readiness a registration asks for. Level-triggered unless noted: a subscriber socket is
/// read once per event with a large buffer, and a level-triggered set reports it again if bytes
/// remain, which saves the extra `read` returning `EAGAIN` that edge-triggering needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// EPOLLIN.
    Read,
    /// EPOLLOUT (a connect in progress).
    Write,
    /// EPOLLIN | EPOLLOUT (output is queued).
    ReadWrite,
    /// EPOLLIN | EPOLLOUT | EPOLLET: for a stream that is written often (a publisher), so that it
    /// never needs an `epoll_ctl` to switch interest; the owner reads and writes until `EAGAIN`.
    EdgeBoth,
}

impl Interest {
    fn bits(self) -> u32 {
        let bits = match self {
            Interest::Read => libc::EPOLLIN,
            Interest::Write => libc::EPOLLOUT,
            Interest::ReadWrite => libc::EPOLLIN | libc::EPOLLOUT,
            Interest::EdgeBoth => libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET,
        };
        (bits | libc::EPOLLRDHUP) as u32
    }
}

/// One readiness event: the registration's token and the flags.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// The token given at registration.
    pub token: u64,
    /// Raw epoll flags.
    pub flags: u32,
}

impl Event {
    /// Data (or EOF, or an error) can be read.
    pub fn readable(&self) -> bool {
        self.flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
            != 0
    }
    /// The socket can be written (or has an error to report).
    pub fn writable(&self) -> bool {
        self.flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
}

/// An epoll instance and its event array.
pub struct Poller {
    epfd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// Creates the epoll set; `capacity` events are returned by one `wait` at most.
    pub fn new(capacity: usize) -> io::Result<Poller> {
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)];
        Ok(Poller { epfd, events })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: `ev` lives across the call; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Registers `fd` with `token`.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Changes the interest of a registered `fd`.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Removes `fd` from the set: no event of any kind (not even EPOLLHUP or EPOLLERR) is
    /// reported for it until it is added again.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // The event argument is ignored for EPOLL_CTL_DEL (non-null since Linux 2.6.9).
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::Read)
    }

    /// Waits up to `timeout_ms` (0: do not block) and returns the number of events ready;
    /// read them with `event(i)`. `EINTR` counts as zero events.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `self.events`, which outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(n as usize)
    }

    /// The `i`-th event of the last `wait`.
    pub fn event(&self, i: usize) -> Event {
        // Copy the fields out: `epoll_event` is packed on x86-64.
        let ev = self.events[i];
        Event {
            token: ev.u64,
            flags: ev.events,
        }
    }
}

/// A new non-blocking TCP socket for `dst`'s family, optionally bound to a loopback source
/// address with `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2), so the port is chosen at `connect` time
/// from the whole 4-tuple: each source address then has its own ~28k ephemeral ports.
pub fn tcp_socket(dst: &SocketAddr, src: Option<IpAddr>) -> io::Result<OwnedFd> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is checked and then owned.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if let Some(src) = src {
        set_int_opt(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        let (addr, len) = sockaddr(&SocketAddr::new(src, 0));
        // SAFETY: `addr` holds a valid sockaddr of `len` bytes.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        })?;
    }
    Ok(fd)
}

/// Sets `SO_RCVBUF` (the kernel doubles it for its bookkeeping, and turns off receive-buffer
/// autotuning for the socket). Set before `connect`, it also bounds the window scale offered in
/// the SYN, so the peer sees a small window for the connection's whole life.
pub fn set_rcvbuf(fd: &OwnedFd, bytes: u32) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
}

/// Sets `SO_LINGER` to on with a zero timeout: closing the socket then sends an RST at once
/// instead of a FIN, and leaves no TIME_WAIT behind (an abortive close, RFC 793 "ABORT").
pub fn set_linger_zero(fd: &OwnedFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value is a `linger` that lives across the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int that lives across the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Starts a non-blocking connect: `Ok(true)` connected at once, `Ok(false)` in progress (wait for
/// writability, then `take_error`).
pub fn connect(fd: &OwnedFd, dst: &SocketAddr) -> io::Result<bool> {
    let (addr, len) = sockaddr(dst);
    // SAFETY: `addr` holds a valid sockaddr of `len` bytes.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The pending error of a socket (`SO_ERROR`), which is how a non-blocking connect reports.
pub fn take_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of their sizes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok((value != 0).then(|| io::Error::from_raw_os_error(value)))
}

/// `read(2)`; 0 is end of stream.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) })
}

/// `send(2)` with MSG_NOSIGNAL, so a peer that closed yields EPIPE instead of killing us.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`.
    cvt_size(unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

/// Makes an fd created by std (a `UnixStream`, a `TcpStream`) non-blocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on an fd the caller owns.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// A CLOCK_MONOTONIC timerfd armed at absolute times, for publish schedules finer than epoll's
/// millisecond timeout.
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// Creates a disarmed, non-blocking timer.
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the fd is checked and then owned.
        let fd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Timer {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The fd to register for readability.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Fires once at `at_ns` (CLOCK_MONOTONIC); a time in the past fires at once.
    pub fn arm_at(&self, at_ns: u64) -> io::Result<()> {
        let at_ns = at_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is valid for reads; the old value is not requested.
        cvt(unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Consumes an expiration so a level-triggered registration stops reporting it.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // An EAGAIN (already cleared) is fine; nothing else can fail on a valid timerfd.
        let _ = read(self.fd.as_raw_fd(), &mut count);
    }
}

/// Sleeps `ns` nanoseconds (an interruption ends the sleep early, which is harmless here).
pub fn sleep_ns(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is valid for reads; the remaining time is not requested.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// Sets this thread's timer slack (default 50 µs for normal threads) so short sleeps and
/// timerfd expirations are not stretched.
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long; no pointers involved.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) after the change.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for writes.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is valid for reads.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// CPU time (user + system) this process has used, in nanoseconds (getrusage: µs precision,
/// unlike /proc/self/stat's clock ticks).
pub fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is valid; the kernel fills it.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1_000
}

/// Whether stderr is a terminal (the live progress line is drawn only then).
pub fn stderr_is_terminal() -> bool {
    // SAFETY: plain syscall on fd 2.
    unsafe { libc::isatty(2) == 1 }
}

/// Clock ticks per second, the unit of /proc/PID/stat's utime and stime.
pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Whether the kernel has this process's pid (for checking `--server-pid` early).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
