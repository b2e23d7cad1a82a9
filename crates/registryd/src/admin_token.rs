//! The admin token's file in the data dir.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::auth::{self, TokenKind};

/// The file's name inside the data dir.
pub const FILE_NAME: &str = "admin-token";

/// Where a data dir keeps its admin token.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the admin token from the data dir, or makes one and writes it there
/// readable by its owner only. Returns the token and whether it is new.
pub fn load_or_create(data_dir: &Path) -> io::Result<(String, bool)> {
    let path = path_in(data_dir);
    match fs::read_to_string(&path) {
        Ok(token) => {
            let mode = fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is readable by others (mode {:o}); run `chmod 600` on it",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
            let token = token.trim().to_owned();
            if token.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is empty; delete it to get a new admin token",
                        path.display()
                    ),
                ));
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let token = auth::generate(TokenKind::Admin);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            writeln!(file, "{token}")?;
            file.sync_all()?;
            Ok((token, true))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (token, created) = load_or_create(dir.path()).unwrap();
        assert!(created && token.starts_with("adm_"));
        let mode = fs::metadata(path_in(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), (token, false));
    }

    #[test]
    fn a_world_readable_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        fs::set_permissions(path_in(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
