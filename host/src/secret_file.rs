//! Secret files in the data directory (the admin token, the privacy key, the licence service's
//! signing seed and TLS key): written so that no symbolic link is followed and the mode is
//! exactly the one asked for whatever was there before; read without following a link.
//!
//! Writing makes a new file beside the target (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, a
//! random name), writes and syncs it, sets its mode, and renames it over the target: a rename
//! replaces a link at the target's name, never the file the link points to, and readers see
//! the old content or the new, never half. Reading refuses a link (`O_NOFOLLOW`) and anything
//! but a regular file, and tightens a secret's mode to 0600 through the open descriptor.
//!
//! It does not defend against the data directory's own owner (who can read the secrets
//! anyway) nor choose where the directory is: the directory itself may be a link.

use rustix::fs::OFlags;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of a secret file: its owner (the user pbx runs as) reads and writes it, nobody else.
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Bytes a secret file may hold when read: secrets are small, a huge file is a mistake.
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Writes `bytes` to `path` with `mode`, durably and atomically, never through a link.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| std::io::Error::other("a secret file needs a file name"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), hex::encode(rand::random::<[u8; 8]>())));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(SECRET_FILE_MODE)
            .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a secret file: `None` when there is none. A link, a directory, a device or a file
/// larger than [`SECRET_FILE_BYTES_MAX`] is an error saying so; a file readable or writable
/// by others gets mode 0600 (logged).
pub fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO planted at the name must not hang the start.
        .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK).bits() as i32)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(std::io::Error::other(
                "is a symbolic link; pbx does not follow links for its secrets (replace it by the file itself)",
            ));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("is not a regular file"));
    }
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!("is larger than {SECRET_FILE_BYTES_MAX} bytes")));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & !SECRET_FILE_MODE != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(SECRET_FILE_MODE))?;
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "secret file was open to others; now 0600");
    }
    let mut bytes = Vec::new();
    file.take(SECRET_FILE_BYTES_MAX).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Writes a secret and its newline to a file only its owner can read (mode 0600, whatever the
/// file had), durably, replacing a link at `path` rather than writing through it.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    write(path, format!("{secret}\n").as_bytes(), SECRET_FILE_MODE)
}

/// The admin token's file in a data directory (the node's and the licence service's).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Reads `DATA_DIR/admin.token`, or creates it (mode 0600) with 256 random bits at first start
/// (or when it is empty). A link at its name, or a file that cannot be read, stops the start
/// rather than being replaced; a file open to others becomes 0600.
pub fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Some(existing) = read(&path).with_context(|| format!("read {}", path.display()))? {
        let existing = String::from_utf8_lossy(&existing).trim().to_string();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    write_secret(&path, &token).with_context(|| format!("write {}", path.display()))?;
    tracing::info!(path = %path.display(), "admin token created");
    Ok(token)
}

/// Sets `path`'s mode (a data directory: 0700), best effort: a directory pbx does not own
/// keeps its mode, and the secrets in it are 0600 anyway.
pub fn restrict_permissions(path: &Path, mode: u32) {
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// An existing secret file with mode 0644 is replaced by one with mode 0600 and the new
    /// content; no temporary file is left beside it.
    #[test]
    fn an_existing_file_ends_up_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&path, b"new\n", SECRET_FILE_MODE).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the secret is left");
    }

    /// A link at the secret's name pointing elsewhere: the target is not written (nor its
    /// mode changed); the link is replaced by the secret file itself.
    #[test]
    fn a_link_at_the_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "precious\n").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("privacy.key");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        write(&path, b"secret\n", SECRET_FILE_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "precious\n");
        assert_eq!(mode(&elsewhere), 0o644);
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file(), "the link is gone");
        assert_eq!((std::fs::read_to_string(&path).unwrap(), mode(&path)), ("secret\n".into(), 0o600));
    }

    /// Reading: a missing file is `None`; a link is refused (its target untouched); a file
    /// open to others is read and tightened to 0600; a directory is refused.
    #[test]
    fn reading_refuses_links_and_tightens_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        assert!(read(&path).unwrap().is_none());
        std::fs::write(&path, "t\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"t\n"[..]));
        assert_eq!(mode(&path), 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read(&link).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(mode(&path), 0o644, "the link's target is not touched");
        assert!(read(dir.path()).is_err(), "a directory is no secret");
    }

    /// `write_secret` (admin token, privacy key) over an existing 0644 file leaves
    /// 0600; over a link it leaves the link's target alone.
    #[test]
    fn write_secret_sets_0600_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&path, "abc").unwrap();
        assert_eq!((std::fs::read_to_string(&path).unwrap(), mode(&path)), ("abc\n".into(), 0o600));
        let target = dir.path().join("target");
        std::fs::write(&target, "keep\n").unwrap();
        let link = dir.path().join("privacy.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_secret(&link, "def").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "def\n");
    }

    /// `admin_token`: made 0600 at first start and read back after; an existing
    /// 0644 token is kept and tightened; a link at its name stops the start, target untouched.
    #[test]
    fn the_admin_token_is_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = admin_token(dir.path()).unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!((token.len(), mode(&path)), (64, 0o600));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(admin_token(dir.path()).unwrap(), token);
        assert_eq!(mode(&path), 0o600);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "not a token of ours\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let error = format!("{:#}", admin_token(dir.path()).unwrap_err());
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "not a token of ours\n");
    }
}
