//! Opening the files an operator names: replays, feed files, keys,
//! certificates, histograms to plot.
//!
//! Only regular files are read. A FIFO would block start-up until something
//! wrote to it, a device such as `/dev/zero` never ends, and a replay is read
//! twice (once to declare its symbols, once to play it), which a pipe cannot
//! be. Settings files are small, so they are read whole up to a cap instead
//! of trusting a path that turns out to name a multi-gigabyte file.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

/// The largest settings file read: feed files, keys and certificates are a
/// few kilobytes.
pub const MAX_SETTINGS_FILE: u64 = 1 << 20;

/// Opens `path` for reading if it is a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    // Looked at before opening too: opening a FIFO blocks until a writer comes.
    let regular = |metadata: std::fs::Metadata| {
        if metadata.is_file() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (pipes, FIFOs and devices cannot be read twice or may never end)",
            ))
        }
    };
    regular(std::fs::metadata(path)?)?;
    let file = File::open(path)?;
    regular(file.metadata()?)?;
    Ok(file)
}

/// Reads the whole of the regular file at `path`, refusing one larger than
/// `max_bytes`.
pub fn read_capped(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    // The length in the metadata can change under us; the cap holds anyway.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// A settings file's bytes: [`read_capped`] at [`MAX_SETTINGS_FILE`].
pub fn read_settings_bytes(path: &Path) -> io::Result<Vec<u8>> {
    read_capped(path, MAX_SETTINGS_FILE)
}

/// A settings file as UTF-8 text.
pub fn read_settings(path: &Path) -> io::Result<String> {
    let bytes = read_settings_bytes(path)?;
    String::from_utf8(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_directories_are_refused() {
        for path in ["/dev/zero", "/dev/null", "/"] {
            let error = open_regular(Path::new(path)).map(drop);
            assert!(error.is_err(), "{path}");
        }
        let error = read_settings(Path::new("/dev/zero")).map(drop);
        assert!(
            error.is_err_and(|e| e.to_string().contains("not a regular file")),
            "the reason is said"
        );
    }

    #[test]
    fn files_over_the_cap_are_refused_whole() {
        let dir = std::env::temp_dir().join(format!("tickwire-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("settings.toml");
        std::fs::write(&path, "x".repeat(10)).expect("written");
        assert_eq!(read_capped(&path, 10).map(|b| b.len()).ok(), Some(10));
        let error = read_capped(&path, 9).map(drop);
        assert!(error.is_err_and(|e| e.to_string() == "larger than 9 bytes"));
        std::fs::write(&path, [0xff, 0xfe]).expect("written");
        assert!(read_settings(&path).is_err(), "not UTF-8");
        std::fs::remove_dir_all(&dir).ok();
    }
}
