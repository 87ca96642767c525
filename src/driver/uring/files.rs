//! Registered files: each connection's socket is entered in the ring's file table at its slab
//! slot, so its sends and receives name it as `Fixed(slot)` and the kernel takes no file
//! reference per operation. With a plain descriptor every submission looks the file up in the
//! process's descriptor table and takes and drops a reference on it (`fget`/`fput`, atomic
//! operations: a shard's threads share that table); with one send per subscriber per publish that
//! is work per delivery (measured in docs/benchmarks.md, "Registered files").
//!
//! The table is sparse (5.19+), sized once at start (`slots`): slots beyond it, or a kernel that
//! refuses the table, use plain descriptors, which behave the same, only slower. The kernel holds
//! a reference to every registered socket, so a connection's entry is removed *before* its
//! descriptor is closed, or closing it would not end the connection.
//!
//! Kernel memory, not the process's: about 8 bytes per table entry, per shard.

use io_uring::IoUring;
use std::os::fd::RawFd;

/// Entries of the largest table the kernel takes (`IORING_MAX_FIXED_FILES`).
const KERNEL_MAX_FILES: usize = 1 << 20;

/// A connection's socket as a submission names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Its entry in the ring's file table.
    Fixed(u32),
    /// Its plain descriptor.
    Fd(RawFd),
}

/// The shard's file table.
#[derive(Debug)]
pub struct FixedFiles {
    /// Entries in the kernel's table (0: no table).
    table: u32,
    /// Whether sockets are named by entry (off for good after the kernel refuses an entry).
    active: bool,
    /// Why the table is off, when it is.
    off_reason: Option<String>,
}

impl FixedFiles {
    /// A table of `slots` entries, capped by the kernel's maximum and the open-files limit (the
    /// kernel refuses a larger one); without one if the kernel refuses.
    pub fn new(ring: &IoUring, slots: usize) -> FixedFiles {
        let table = slots.min(KERNEL_MAX_FILES).min(open_files_limit()) as u32;
        if table == 0 {
            return FixedFiles::off("the open-files limit leaves no room".into());
        }
        match ring.submitter().register_files_sparse(table) {
            Ok(()) => FixedFiles {
                table,
                active: true,
                off_reason: None,
            },
            Err(e) => FixedFiles::off(format!("the kernel refused a table of {table}: {e}")),
        }
    }

    fn off(reason: String) -> FixedFiles {
        FixedFiles {
            table: 0,
            active: false,
            off_reason: Some(reason),
        }
    }

    /// Entries sockets are named by (0 when off).
    pub fn size(&self) -> u32 {
        if self.active { self.table } else { 0 }
    }

    /// Why sockets are not named by entry, if they are not.
    pub fn off_reason(&self) -> Option<&str> {
        self.off_reason.as_deref()
    }

    /// How submissions name the socket of the connection in `slot`.
    #[inline]
    pub fn target(&self, slot: u32, fd: RawFd) -> Target {
        if self.active && slot < self.table {
            Target::Fixed(slot)
        } else {
            Target::Fd(fd)
        }
    }

    /// Enters `fd` at `slot` (replacing whatever was there). If the kernel refuses, sockets are
    /// named by descriptor from then on (always valid while a socket is open), and the entries
    /// already made are still removed when their sockets close.
    pub fn enter(&mut self, ring: &IoUring, slot: u32, fd: RawFd) {
        if !self.active || slot >= self.table {
            return;
        }
        if let Err(e) = ring.submitter().register_files_update(slot, &[fd]) {
            self.off_reason = Some(format!("the kernel refused an entry: {e}"));
            self.active = false;
        }
    }

    /// Removes the entry at `slot` (its socket closes next).
    pub fn leave(&mut self, ring: &IoUring, slot: u32) {
        if slot < self.table {
            // Clearing an entry that is already empty is harmless.
            let _ = ring.submitter().register_files_update(slot, &[-1]);
        }
    }
}

/// The soft open-files limit (the kernel refuses a table larger than it).
fn open_files_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Builds `$op` on the target: the opcode builders take `Fixed` and `Fd` as different types.
macro_rules! on_target {
    ($target:expr, |$fd:ident| $build:expr) => {
        match $target {
            $crate::driver::uring::files::Target::Fixed(i) => {
                let $fd = io_uring::types::Fixed(i);
                $build
            }
            $crate::driver::uring::files::Target::Fd(raw) => {
                let $fd = io_uring::types::Fd(raw);
                $build
            }
        }
    };
}
pub(crate) use on_target;

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    fn pair() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array it is given.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        (fds[0], fds[1])
    }

    fn read_now(fd: RawFd) -> isize {
        let mut buf = [0u8; 16];
        // SAFETY: reads into a local buffer of the given length.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
    }

    /// A send names the socket by entry, and the entry's reference must go before the close:
    /// closed while entered, the socket stays open (the peer sees no end); once the entry is
    /// removed, the peer sees it.
    #[test]
    fn entries_name_sockets_and_hold_them_open_until_removed() {
        let Ok(mut ring) = IoUring::new(8) else {
            return; // io_uring blocked here: the driver is not used either.
        };
        let mut files = FixedFiles::new(&ring, 16);
        if files.off_reason().is_some() {
            return; // a kernel before 5.19: plain descriptors, nothing to check.
        }
        assert_eq!(files.size(), 16);
        let (a, b) = pair();
        files.enter(&ring, 3, a);
        assert_eq!(files.target(3, a), Target::Fixed(3));
        assert_eq!(files.target(16, a), Target::Fd(a), "beyond the table");

        let msg = b"hi";
        let entry = on_target!(files.target(3, a), |fd| opcode::Send::new(
            fd,
            msg.as_ptr(),
            2
        )
        .build())
        .user_data(7);
        // SAFETY: `msg` outlives the submission, which completes before `submit_and_wait`
        // returns.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        assert_eq!((cqe.user_data(), cqe.result()), (7, 2));
        assert_eq!(read_now(b), 2);

        // SAFETY: closing our own descriptor.
        unsafe { libc::close(a) };
        assert_eq!(read_now(b), -1, "the table still holds the socket open");
        files.leave(&ring, 3);
        assert_eq!(
            read_now(b),
            0,
            "removed from the table, the socket is closed"
        );
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(b) };
    }
}
