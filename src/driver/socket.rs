//! Sockets for the Linux drivers: listeners (one per shard on the same address with
//! `SO_REUSEPORT`, so the kernel spreads new connections over the shards without a shared
//! accept queue), Unix control sockets, and the few socket calls the engine's intents map to.
//! The first listener on an address checks that no other process serves it, since
//! `SO_REUSEPORT` would otherwise let the two share it silently. A Unix control socket is owned
//! through an flock on `PATH.lock`, the one liveness test that a killed server cannot leave
//! behind.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Backlog of each listener (capped by `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live c_int.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Converts a socket address to its C form.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
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
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
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
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A fresh TCP socket of `addr`'s family.
fn stream_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the fd is owned at once.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds `fd` to `addr`.
fn bind(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a valid address of length len.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

/// How long `check_unserved` keeps probing an address that is held before it calls it served.
///
/// A server killed with SIGKILL leaves its listener bound for a while after the process is
/// gone: the kernel tears down the process's io_uring, which still holds an accept on the
/// socket, in a worker, not at exit. Measured on a loaded 2-core host: 5 to 20 ms, more when
/// the ring has many connections to cancel. Without this wait, a restart right after a kill
/// would fail. A live server holds the address for the whole wait, so what the wait costs is a
/// start-up error that comes this much later.
const PROBE_WAIT_MS_MAX: u64 = 500;

/// The pause between two probes of a held address.
const PROBE_INTERVAL_MS: u64 = 2;

/// Binds a probe socket to `addr` without `SO_REUSEPORT` and closes it again.
///
/// The probe sets `SO_REUSEADDR`: that lets it bind past the TIME_WAIT connections an earlier
/// server left behind (no one serves those), but never beside a listening socket. It leaves out
/// `SO_REUSEPORT`, and that is the point: a listener with it set admits only sockets that set it
/// too, so a live server with `SO_REUSEPORT` (another ringcast, or our own earlier shard)
/// makes the probe's bind fail with EADDRINUSE.
fn probe(addr: &SocketAddr) -> io::Result<()> {
    let probe = stream_socket(addr)?;
    set_int_opt(&probe, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&probe, addr)
}

/// Fails with `AddrInUse` when a socket holds `addr` for longer than `PROBE_WAIT_MS_MAX`.
///
/// Between the last probe and the real bind lie a few system calls, so two servers started
/// within microseconds of each other could both pass; the check is for the common mistake, a
/// second server started while the first runs.
fn check_unserved(addr: &SocketAddr) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(PROBE_WAIT_MS_MAX);
    loop {
        match probe(addr) {
            Ok(()) => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EADDRINUSE) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "another process is already listening on {addr} (stop it; for a \
                             rolling restart that shares the port on purpose, pass --reuse-port)"
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(PROBE_INTERVAL_MS));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Opens a listener on `addr` with `SO_REUSEPORT`; returns it and the bound address (the port
/// the kernel chose when `addr` had port 0).
///
/// `SO_REUSEPORT` lets every shard bind the same address, but it would just as well let a
/// second server of the same user bind it, and the kernel would then split new clients between
/// the two processes. So with `exclusive` and a fixed port, the address must first be held by
/// no socket at all (see `check_unserved`). Pass `exclusive` only for the first listener on an
/// address: the later shards' listeners join it on purpose and would fail the check.
pub fn listen(addr: SocketAddr, exclusive: bool) -> io::Result<(OwnedFd, SocketAddr)> {
    // Port 0 asks the kernel for a port nobody holds, so there is nothing to check.
    if exclusive && addr.port() != 0 {
        check_unserved(&addr)?;
    }
    let fd = stream_socket(&addr)?;
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    bind(&fd, &addr)?;
    // SAFETY: plain listen(2) on our socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) })?;
    let bound = local_addr(&fd)?;
    Ok((fd, bound))
}

/// The address a socket is bound to.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: zeroed storage is valid; getsockname writes at most len bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    check(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    socket_addr(&storage).ok_or_else(|| io::Error::other("unknown address family"))
}

/// Reads an IPv4 or IPv6 address out of a `sockaddr_storage` the kernel filled.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

/// Sets `TCP_NODELAY` on an accepted socket: pushes are latency-sensitive and ringcast already
/// coalesces a connection's frames into one send per loop turn.
pub fn set_nodelay(fd: libc::c_int) {
    let one: libc::c_int = 1;
    // SAFETY: the pointer and length describe a live c_int; failure only costs latency.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn unix_sockaddr(path: &std::path::Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::other(format!(
            "socket path {} is longer than {} bytes",
            path.display(),
            addr.sun_path.len() - 1
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// A Unix stream listener and the lock that marks it as the live one.
#[derive(Debug)]
pub struct UnixListener {
    /// The listening socket.
    pub fd: OwnedFd,
    /// `PATH.lock`, held with `flock(LOCK_EX)`. Keep it open for as long as the socket serves,
    /// and past the removal of the socket file: its release tells the next server that the
    /// socket file is stale. Never hand it to the ring or to a child, which would keep the
    /// lock alive after this process dies.
    pub lock: OwnedFd,
}

/// The lock file next to a control socket: `PATH.lock`.
fn lock_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    lock.into()
}

/// Opens `PATH.lock` (mode 0600, created if missing) and takes `flock(LOCK_EX | LOCK_NB)` on it.
fn lock_socket_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock_path = lock_path(path);
    // O_NOFOLLOW: the socket may live in a shared directory such as /tmp, where a symlink
    // planted at the lock path must not make us create or lock a file elsewhere. std opens
    // with O_CLOEXEC, so no child inherits the lock.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| io::Error::new(e.kind(), format!("lock file {}: {e}", lock_path.display())))?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "lock file {} exists and is not a regular file",
            lock_path.display()
        )));
    }
    let lock = OwnedFd::from(file);
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another server is listening on {} (stop it, or choose another --control \
                     path)",
                    path.display()
                ),
            ));
        }
        return Err(err);
    }
    Ok(lock)
}

/// Opens a Unix stream listener at `path` with mode 0660, holding the lock `PATH.lock`.
///
/// Whether a server is alive is decided by the lock, not by the socket file: a process that
/// dies, even by SIGKILL, drops its flock as its descriptors close, while its listening socket
/// can go on accepting `connect()` for a few milliseconds (the kernel tears down an io_uring
/// that still holds an accept on it asynchronously). So a lock held by another process means a
/// live server, which is an error; a lock taken means any socket file at `path` is stale, and
/// it is replaced. The lock file is left on disk when the server stops: removing it would let a
/// successor that opened the old file and one that creates a new file both hold "the" lock.
pub fn listen_unix(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let (addr, len) = unix_sockaddr(path)?;
    let lock = lock_socket_path(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: plain socket(2); owned at once.
    let fd =
        check(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: addr is a valid sockaddr_un of length len.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    // SAFETY: plain listen(2) on our socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) })?;
    Ok(UnixListener { fd, lock })
}

/// The peer's IP address of an accepted socket (`None` if the kernel cannot say).
pub fn peer_ip(fd: libc::c_int) -> Option<std::net::IpAddr> {
    // SAFETY: zeroed storage is valid; getpeername writes at most len bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above, on a socket we own.
    let ret = unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return None;
    }
    socket_addr(&storage).map(|a| a.ip())
}

/// Writes `response` if it fits the fresh socket's send buffer at once (best effort: a failed or
/// short write only means the peer sees a reset instead of the status line), then closes.
pub fn refuse(fd: libc::c_int, response: &[u8]) {
    // SAFETY: fd is a socket the driver owns and nobody else knows; the buffer is live for the
    // call.
    unsafe {
        if !response.is_empty() {
            libc::send(
                fd,
                response.as_ptr().cast(),
                response.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
        libc::close(fd);
    }
}

/// Half-closes a socket: our FIN goes out after what is queued in the kernel.
pub fn shutdown_write(fd: libc::c_int) {
    // SAFETY: shutdown(2) on a socket the driver owns.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// Shuts a socket down both ways, then closes it. shutdown first, because an operation in
/// flight (a multishot receive) holds a reference to the socket, so close alone would neither
/// send FIN nor end the operation.
pub fn close(fd: libc::c_int) {
    // SAFETY: the fd is the driver's; the engine emits one Close per socket.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
        libc::close(fd);
    }
}

/// The peer's address of an accepted socket as the engine's plain `PeerAddr` (IPv4 mapped).
pub fn peer_addr(fd: libc::c_int) -> Option<crate::engine::io::PeerAddr> {
    let ip = match peer_ip(fd)? {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    Some(crate::engine::io::PeerAddr(u128::from(ip)))
}

/// Shuts a listening socket down: a pending accept (a multishot accept in io_uring, or epoll's
/// readiness) ends, and no new connection is accepted.
pub fn shutdown_listener(fd: libc::c_int) {
    // SAFETY: shutdown(2) on a listener the driver holds.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn served_elsewhere(addr: SocketAddr) -> String {
        format!(
            "another process is already listening on {addr} (stop it; for a rolling restart \
             that shares the port on purpose, pass --reuse-port)"
        )
    }

    /// A free port, found by letting the kernel pick one and closing it again.
    fn free_port() -> SocketAddr {
        let (fd, bound) = listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
        drop(fd);
        bound
    }

    #[test]
    fn listen_tcp_exclusive_check() {
        let addr = free_port();
        let (first, bound) = listen(addr, true).unwrap();
        assert_eq!(bound, addr);
        // A second server on the same fixed port is refused, naming the cause and the fix.
        let err = listen(addr, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(err.to_string(), served_elsewhere(addr));
        // A later shard's listener shares the port on purpose.
        let (second, bound) = listen(addr, false).unwrap();
        assert_eq!(bound, addr);
        drop((first, second));
        // Once nobody serves it, the port is free for an exclusive listen again.
        let (_third, _) = listen(addr, true).unwrap();
    }

    /// A listener without `SO_REUSEPORT` (another program) is found by the same check.
    #[test]
    fn exclusive_check_sees_a_plain_listener() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        let err = listen(addr, true).unwrap_err();
        assert_eq!(err.to_string(), served_elsewhere(addr));
        // Port 0 is never checked: the kernel picks a port nobody holds.
        assert!(listen("127.0.0.1:0".parse().unwrap(), true).is_ok());
    }

    /// A socket path unique to this process and test, with its lock file cleared.
    fn socket_path(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "ringcast-listener-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(lock_path(&path));
        path
    }

    fn cleanup(path: &std::path::Path) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(lock_path(path));
    }

    #[test]
    fn unix_listener_held_lock_refuses_and_released_lock_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let path = socket_path("held");
        let first = listen_unix(&path).unwrap();
        let mode = std::fs::metadata(lock_path(&path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = listen_unix(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            err.to_string(),
            format!(
                "another server is listening on {} (stop it, or choose another --control path)",
                path.display()
            )
        );
        // The first server dies without cleaning up: its socket file stays, its lock goes.
        drop(first);
        assert!(std::fs::symlink_metadata(&path).is_ok());
        let second = listen_unix(&path).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_accepted, _) = std::os::unix::net::UnixListener::from(second.fd)
            .accept()
            .unwrap();
        cleanup(&path);
    }

    /// Right after a SIGKILL the dead server's socket may still accept `connect()`, but its
    /// lock is already free: the socket is stale and must be replaced, not taken for a live
    /// server.
    #[test]
    fn unix_listener_replaces_a_stale_socket_that_still_accepts() {
        let path = socket_path("stale");
        let dead = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        let live = listen_unix(&path).unwrap();
        // New clients reach the new listener, not the stale one.
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let live = std::os::unix::net::UnixListener::from(live.fd);
        live.set_nonblocking(true).unwrap();
        assert!(live.accept().is_ok());
        drop(dead);
        cleanup(&path);
    }

    #[test]
    fn unix_listener_refuses_odd_files() {
        let path = socket_path("odd");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = listen_unix(&path).unwrap_err();
        assert!(
            err.to_string().ends_with("exists and is not a socket"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        // A symlink at the lock path is not followed.
        std::fs::remove_file(lock_path(&path)).unwrap();
        let elsewhere = socket_path("odd-target");
        std::os::unix::fs::symlink(&elsewhere, lock_path(&path)).unwrap();
        let err = listen_unix(&path).unwrap_err();
        assert!(err.to_string().starts_with("lock file "), "{err}");
        assert!(std::fs::symlink_metadata(&elsewhere).is_err());
        cleanup(&path);
    }

    /// A killed server's listener stays bound until the kernel has torn down its io_uring; an
    /// exclusive listen waits that out instead of calling the address served.
    #[test]
    fn exclusive_check_waits_out_a_listener_that_goes_away() {
        let (dying, addr) = listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let (started, start) = std::sync::mpsc::channel();
        let closer = std::thread::spawn(move || {
            start.recv().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            drop(dying);
        });
        started.send(()).unwrap();
        let (_restarted, bound) = listen(addr, true).unwrap();
        assert_eq!(bound, addr);
        closer.join().unwrap();
    }

    /// Connections an earlier server closed first linger in TIME_WAIT on its port; they serve
    /// no one, so a restart on that port must pass the check.
    #[test]
    fn exclusive_check_ignores_time_wait() {
        let addr = free_port();
        let (fd, _) = listen(addr, true).unwrap();
        let server = std::net::TcpListener::from(fd);
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = server.accept().unwrap();
        // The server side closes first, so it is the side that enters TIME_WAIT.
        drop(accepted);
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
        drop(client);
        drop(server);
        let (_restarted, bound) = listen(addr, true).unwrap();
        assert_eq!(bound, addr);
    }
}
