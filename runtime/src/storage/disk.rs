//! The few file operations a router's storage needs, behind a trait: the
//! real directory ([`FileDisk`]) in production, a simulated disk in `sim`
//! that loses what was not synced when its host crashes.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One directory of files. Writes reach stable storage only once synced:
/// a file's contents with [`Disk::sync`], a new, renamed or removed name
/// with [`Disk::sync_dir`]. A crash may lose anything not synced, and may
/// tear the last write.
pub trait Disk {
    /// The names of the files in the directory, in any order.
    fn list(&mut self) -> io::Result<Vec<String>>;
    /// The whole contents of `name`.
    fn read(&mut self, name: &str) -> io::Result<Vec<u8>>;
    /// Appends `bytes` to `name`, creating it if it does not exist.
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Cuts `name` to its first `len` bytes.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Makes the contents of `name` durable.
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name`; a missing file is not an error.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Makes the directory's names durable.
    fn sync_dir(&mut self) -> io::Result<()>;
    /// Where the files are, for messages.
    fn describe(&self) -> String;
}

/// The file that [`FileDisk::open`] locks, so that two processes never
/// write one directory.
pub const LOCK_FILE: &str = "lock";

/// A real directory, locked for as long as this value lives. Files
/// appended to stay open.
#[derive(Debug)]
pub struct FileDisk {
    dir: PathBuf,
    open: BTreeMap<String, File>,
    _lock: File,
}

impl FileDisk {
    /// The directory `dir`, created (with its parents) if missing, readable
    /// only by the user, and locked: a second process that opens it gets an
    /// error (`WouldBlock`) instead of writing over the first one's files.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another process", dir.display()),
            ),
            fs::TryLockError::Error(e) => e,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            open: BTreeMap::new(),
            _lock: lock,
        })
    }

    fn file(&mut self, name: &str) -> io::Result<&mut File> {
        if !self.open.contains_key(name) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))?;
            self.open.insert(name.to_owned(), file);
        }
        Ok(self.open.get_mut(name).expect("inserted above"))
    }
}

impl Disk for FileDisk {
    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all(bytes)
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.file(name)?.set_len(len)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.open.remove(from);
        self.open.remove(to);
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.open.remove(name);
        match fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}
