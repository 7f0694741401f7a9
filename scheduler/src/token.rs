//! The cluster token: given, or kept in the data directory (generated and printed
//! once on first start).

use std::io::Write;
use std::path::Path;

use rand::Rng;

pub fn load_or_create(given: Option<String>, data_dir: &Path) -> Result<String, String> {
    if let Some(t) = given.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    let path = data_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token: String = (0..32)
        .map(|_| format!("{:x}", rand::rng().random_range(0..16u8)))
        .collect();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| format!("cannot write the token to {}: {e}", path.display()))?;
    file.write_all(token.as_bytes())
        .map_err(|e| format!("cannot write the token to {}: {e}", path.display()))?;
    eprintln!(
        "herd: generated the cluster token {token}; it is kept in {} — agents join with --token {token} (or HERD_TOKEN)",
        path.display()
    );
    Ok(token)
}
