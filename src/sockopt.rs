//! The socket options that neither std nor socket2 sets, through one
//! `setsockopt` call site (Linux: the options are Linux's).

use std::io;
use std::os::fd::AsRawFd;

/// Sets an integer socket option (`level`, `name` as in `setsockopt(2)`).
#[expect(
    unsafe_code,
    reason = "a socket option that neither std nor socket2 sets"
)]
pub(crate) fn set_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the descriptor is open for as long as `socket` is borrowed, and
    // the option value is a `c_int` read for its exact size during the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
