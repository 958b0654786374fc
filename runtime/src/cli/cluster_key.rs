//! Where the cluster key comes from: `--cluster-key FILE`, or one file kept
//! in the user's data directory and created on first use, so that every
//! `peerlink` process of one user on one machine shares it with no setup.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use peerlink_core::cluster_auth::ClusterKey;
use peerlink_runtime::cluster_link::ClusterAuth;

use super::secret;

/// The file name of the default key in the data directory.
const DEFAULT_FILE: &str = "cluster.key";

/// The `--cluster-key` flag, shared by every command that joins or asks a
/// cluster.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterKeyArgs {
    /// The cluster key file: 16 to 1024 random bytes in hex. Every router,
    /// the replica manager and `status` of one cluster need the same key;
    /// only they may hold it (docs/security.md)
    /// [default: DATA_DIR/cluster.key, created on first use]
    #[arg(long, env = "PEERLINK_CLUSTER_KEY", value_name = "FILE")]
    pub(crate) cluster_key: Option<PathBuf>,
    /// While rotating the cluster key: also admit members that prove this
    /// (older or newer) key. This process itself proves --cluster-key.
    /// Repeatable (docs/security.md, "Rotating the cluster key").
    #[arg(long, value_name = "FILE")]
    pub(crate) accept_cluster_key: Vec<PathBuf>,
}

impl ClusterKeyArgs {
    /// The key file's path: the one given, or the default one, which is
    /// created if missing. A given file must exist.
    pub(crate) fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.cluster_key {
            Some(path) => Ok(path.clone()),
            None => {
                let path = secret::default_data_dir()?.join(DEFAULT_FILE);
                create_if_missing(&path)?;
                Ok(path)
            }
        }
    }

    /// Reads the key.
    pub(crate) fn load(&self) -> anyhow::Result<ClusterKey> {
        read(&self.path()?)
    }

    /// The key and the keys also admitted, with nonces drawn from the OS.
    pub(crate) fn auth(&self) -> anyhow::Result<ClusterAuth> {
        let also = self
            .accept_cluster_key
            .iter()
            .map(|p| read(p))
            .collect::<anyhow::Result<_>>()?;
        Ok(ClusterAuth::new(self.load()?, rand::random()).also_accepting(also))
    }
}

/// Reads the key file at `path`.
fn read(path: &Path) -> anyhow::Result<ClusterKey> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the cluster key {} (copy the key file from an existing member)",
            path.display()
        )
    })?;
    ClusterKey::from_hex(&text).with_context(|| format!("{} holds no usable cluster key", path.display()))
}

/// Creates a key file at `path` with 32 fresh random bytes, readable only by
/// the user, unless one exists. Two processes starting at once agree on one
/// key: the file appears whole (written aside, then linked into place) or
/// not at all.
fn create_if_missing(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().context("the cluster key needs a folder")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = ClusterKey::new(rand::random::<[u8; 32]>().to_vec()).expect("32 bytes make a key");
    let aside = dir.join(format!(".{DEFAULT_FILE}.{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&aside).and_then(|mut file| {
        file.write_all(key.to_hex().as_bytes())
            .and_then(|()| file.sync_all())
    });
    let linked = written.and_then(|()| fs::hard_link(&aside, path));
    let _ = fs::remove_file(&aside);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the cluster key");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create the cluster key {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_created_once_and_then_kept() {
        let dir = std::env::temp_dir().join(format!("peerlink-key-test-{}", std::process::id()));
        let path = dir.join(DEFAULT_FILE);
        let _ = fs::remove_dir_all(&dir);
        create_if_missing(&path).unwrap();
        let first = fs::read_to_string(&path).unwrap();
        assert!(ClusterKey::from_hex(&first).is_ok());
        create_if_missing(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            first,
            "an existing key is never replaced"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by the user only: {mode:o}");
        }
        let args = ClusterKeyArgs {
            cluster_key: Some(dir.join("missing.key")),
            accept_cluster_key: Vec::new(),
        };
        let error = format!("{:#}", args.load().unwrap_err());
        assert!(error.contains("cannot read the cluster key"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
