//! Where a client's secret comes from: `--secret`, `PEERLINK_SECRET`, or a
//! file it generates once under the user's data directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use peerlink_core::ids::{PeerId, Secret};

/// The default data directory: `$XDG_DATA_HOME/peerlink`, else
/// `$HOME/.local/share/peerlink`.
pub(crate) fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("peerlink"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/peerlink")),
        None => bail!("cannot find a data directory: set --data-dir, PEERLINK_DATA_DIR or HOME"),
    }
}

/// The secret stored for `peer` in `dir`, created (with fresh randomness,
/// readable only by the user) if there is none yet.
pub(crate) fn load_or_create(dir: &Path, peer: &PeerId) -> anyhow::Result<Secret> {
    let path = dir.join(format!("{peer}.secret"));
    match fs::read_to_string(&path) {
        Ok(text) => {
            return Secret::new(text.trim())
                .with_context(|| format!("the secret in {} is unusable", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(&path) {
        Ok(file) => file,
        // Another client created it a moment ago: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return load_or_create(dir, peer),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Secret::new(text).expect("64 hex digits are a valid secret"))
}
