//! The catalog on disk: one JSON file, replaced atomically on every change.
//!
//! A change is written to a temporary file in the same folder, flushed to disk,
//! renamed over the old file and the folder flushed, so after a crash the file
//! holds either the old catalog or the new one, never a mix.

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file's name inside the data dir.
const FILE_NAME: &str = "catalog.json";
/// The format version written; a newer one is refused rather than misread.
const FORMAT: u32 = 1;

/// The catalog as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CatalogFile {
    /// Format version of the file.
    format: u32,
    /// The services, sorted by name.
    pub(crate) services: Vec<StoredService>,
    /// The named consumers, sorted by name. A file written before there
    /// were any has none: the format stays 1.
    #[serde(default)]
    pub(crate) consumers: Vec<StoredConsumer>,
}

/// One service as stored: its name and the hashes of its tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredService {
    pub(crate) name: String,
    pub(crate) created_at_unix: i64,
    /// Hex SHA-256 of the service token.
    pub(crate) token_sha256: String,
    /// Hex SHA-256 of the consumer token.
    pub(crate) consumer_token_sha256: String,
}

/// One named consumer as stored: its name, the hash of its token and the
/// services it may read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredConsumer {
    pub(crate) name: String,
    /// Hex SHA-256 of its token.
    pub(crate) token_sha256: String,
    /// The services it may read, sorted.
    pub(crate) services: Vec<String>,
}

/// Where the catalog lives.
#[derive(Debug, Clone)]
pub(crate) struct CatalogPath(PathBuf);

impl CatalogPath {
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self(dir.join(FILE_NAME))
    }

    /// Reads the catalog; a missing file is an empty catalog.
    pub(crate) fn load(&self) -> io::Result<CatalogFile> {
        let bytes = match fs::read(&self.0) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CatalogFile::default()),
            Err(e) => return Err(e),
        };
        let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid catalog: {e}", self.0.display()),
            )
        })?;
        if file.format != FORMAT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} has format {}, this registryd reads format {FORMAT}",
                    self.0.display(),
                    file.format
                ),
            ));
        }
        Ok(file)
    }

    /// Replaces the catalog atomically.
    pub(crate) fn save(
        &self,
        services: Vec<StoredService>,
        consumers: Vec<StoredConsumer>,
    ) -> io::Result<()> {
        let dir = self.0.parent().unwrap_or(Path::new("."));
        let file = CatalogFile {
            format: FORMAT,
            services,
            consumers,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, &file)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.0).map_err(|e| e.error)?;
        fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = CatalogPath::in_dir(dir.path());
        assert!(path.load().unwrap().services.is_empty());
        let service = StoredService {
            name: "ratings".into(),
            created_at_unix: 1,
            token_sha256: "00".repeat(32),
            consumer_token_sha256: "11".repeat(32),
        };
        let consumer = StoredConsumer {
            name: "market-web".into(),
            token_sha256: "22".repeat(32),
            services: vec!["ratings".into()],
        };
        path.save(vec![service], vec![consumer]).unwrap();
        let loaded = path.load().unwrap();
        assert_eq!(loaded.services.len(), 1);
        assert_eq!(loaded.services[0].name, "ratings");
        assert_eq!(loaded.consumers.len(), 1);
        assert_eq!(loaded.consumers[0].services, ["ratings"]);
        // Only the catalog is left in the folder: no temporary file lingers.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A catalog written before named consumers existed still loads, with none.
    #[test]
    fn a_file_without_consumers_loads() {
        let dir = tempfile::tempdir().unwrap();
        let old = format!(
            r#"{{"format":1,"services":[{{"name":"ratings","created_at_unix":1,"token_sha256":"{}","consumer_token_sha256":"{}"}}]}}"#,
            "00".repeat(32),
            "11".repeat(32)
        );
        fs::write(dir.path().join(FILE_NAME), old).unwrap();
        let loaded = CatalogPath::in_dir(dir.path()).load().unwrap();
        assert_eq!(loaded.services.len(), 1);
        assert!(loaded.consumers.is_empty());
    }

    #[test]
    fn garbage_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let err = CatalogPath::in_dir(dir.path()).load().unwrap_err();
        assert!(
            err.to_string()
                .contains("catalog.json is not a valid catalog"),
            "{err}"
        );
    }
}
