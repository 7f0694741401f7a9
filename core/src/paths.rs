//! Where herd keeps things by default, and what a node is called.

use std::path::PathBuf;

/// The host's name, the default node name.
pub fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

/// A per-user data directory: $XDG_DATA_HOME/herd, ~/.local/share/herd, or ./.herd.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("herd"))
        .unwrap_or_else(|| PathBuf::from(".herd"))
}
