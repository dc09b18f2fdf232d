//! Where the cluster keys come from: `--cluster-key` values (fixed for the life of the process), or
//! `--cluster-key-file`, re-read when it changes so a rotation needs no restart (edit the file on every node
//! in three rolling steps; a swarm or Kubernetes secret mounted as a file works the same way).

use std::path::{Path, PathBuf};

use super::seal::{KeyError, Keyring};

/// A secret that never shows in `Debug` output (`--check` prints the configuration).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// The configured key source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeySource {
    /// Gossip in the clear (loopback only, or `--gossip-insecure`).
    #[default]
    None,
    Keys(Vec<Secret>),
    File(PathBuf),
}

impl KeySource {
    pub fn is_none(&self) -> bool {
        matches!(self, KeySource::None)
    }

    /// The keyring as configured now; `None` for open gossip.
    pub fn load(&self) -> Result<Option<Keyring>, String> {
        match self {
            KeySource::None => Ok(None),
            KeySource::Keys(keys) => {
                let texts: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
                Keyring::parse(&texts).map(Some).map_err(|e| e.to_string())
            }
            KeySource::File(path) => read_file(path).map(Some),
        }
    }
}

/// Keys from a file: one per line, the first sealing; blank lines and `#` comments are ignored.
pub fn read_file(path: &Path) -> Result<Keyring, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let keys: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    Keyring::parse(&keys).map_err(|e| match e {
        KeyError::Empty => format!("{} holds no key", path.display()),
        e => format!("{}: {e}", path.display()),
    })
}

/// Notices when a key file's contents change, polled by the gossip task (a read of a small file each time:
/// modification times are too coarse to catch two quick edits).
pub struct Watch {
    path: PathBuf,
    seen: Option<String>,
}

impl Watch {
    pub fn new(source: &KeySource) -> Option<Watch> {
        match source {
            KeySource::File(path) => Some(Watch { path: path.clone(), seen: std::fs::read_to_string(path).ok() }),
            _ => None,
        }
    }

    /// The file's new keys if it changed since the last call; an unreadable or invalid file keeps the old
    /// keys and is logged.
    pub fn changed(&mut self) -> Option<Keyring> {
        let text = std::fs::read_to_string(&self.path).ok();
        if text == self.seen {
            return None;
        }
        self.seen = text;
        match read_file(&self.path) {
            Ok(keyring) => Some(keyring),
            Err(e) => {
                tracing::error!("cluster keys not reloaded, keeping the current ones: {e}");
                None
            }
        }
    }
}
