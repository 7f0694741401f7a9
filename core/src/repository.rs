//! The model repository on disk, in Triton's layout: `<root>/<name>/<version>/model.onnx`
//! with an optional `<root>/<name>/herd.toml`. The highest numbered version is served.

use std::path::{Path, PathBuf};

use crate::limits::quoted_name;
use crate::settings::{ClusterPolicy, ModelSettings, SettingsError};

/// Names in these errors are as [`quoted_name`] gives them: a caller's long name is not
/// echoed in full. Their words may reach clients, so they name files as the repository
/// does (`<model>/herd.toml`), never by where the repository is; `path` is for logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepositoryError {
    #[error("model '{0}' is not in the model repository")]
    ModelNotFound(String),
    #[error("invalid model name {0:?}: use a plain directory name of the model repository")]
    InvalidModelName(String),
    #[error("model '{model}' cannot be loaded: {model}/herd.toml: {reason}")]
    BadSettings {
        model: String,
        path: PathBuf,
        reason: SettingsError,
    },
}

/// `text` with every absolute path in it cut to what a client may see: a file of the
/// repository as the repository names it (`<model>/herd.toml`,
/// `<model>/<version>/model.onnx`), any other file by its name alone. For messages
/// that leave a server, whose words may quote paths (ONNX Runtime's load errors do);
/// the whole path belongs in the server's log.
pub fn without_server_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut at_boundary = true;
    while let Some(c) = rest.chars().next() {
        if c == '/' && at_boundary {
            let end = path_end(rest);
            out.push_str(&client_path(&rest[..end]));
            rest = &rest[end..];
            at_boundary = false;
            continue;
        }
        out.push(c);
        at_boundary = c.is_whitespace() || "([{\"'=,;".contains(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Where the path that starts `text` ends: at white space, a quote or a closing
/// bracket, or a colon that ends it (`/a/herd.toml: bad`).
fn path_end(text: &str) -> usize {
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let ends = c.is_whitespace()
            || "\"'`)]},;".contains(c)
            || (c == ':' && bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace()));
        if ends {
            return i;
        }
    }
    text.len()
}

fn client_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let keep = match parts.last() {
        None => return path.to_string(),
        Some(&"herd.toml") => 2,
        Some(&"model.onnx") => 3,
        Some(_) => 1,
    };
    parts[parts.len().saturating_sub(keep)..].join("/")
}

#[derive(Clone, Debug)]
pub struct Repository {
    root: PathBuf,
    defaults: ModelSettings,
}

/// One model as the repository holds it.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub settings: ModelSettings,
    /// Scheduler-side settings from herd.toml.
    pub policy: ClusterPolicy,
    /// sha256 of the file, when known (models the scheduler sent).
    pub digest: Option<String>,
    /// The GPU (NVML index) placement chose to run it on; `None` runs it on the CPU.
    pub gpu: Option<u32>,
}

impl Repository {
    pub fn new(root: PathBuf, defaults: ModelSettings) -> Repository {
        Repository { root, defaults }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The settings a model without herd.toml gets.
    pub fn defaults(&self) -> &ModelSettings {
        &self.defaults
    }

    /// Names of the models in the repository, sorted. Folders without a version
    /// holding a model.onnx are not models and are left out.
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| latest_version(&self.root.join(name)).is_some())
            .collect();
        names.sort();
        names
    }

    /// Finds a model by name. Errors name what is wrong: a bad name, no such model,
    /// or a herd.toml that does not parse.
    pub fn find(&self, name: &str) -> Result<ModelFiles, RepositoryError> {
        check_name(name)?;
        // No repository (an agent whose models all come from the scheduler): never
        // look for models relative to the working directory.
        if self.root.as_os_str().is_empty() {
            return Err(RepositoryError::ModelNotFound(quoted_name(name)));
        }
        let dir = self.root.join(name);
        let version = latest_version(&dir)
            .ok_or_else(|| RepositoryError::ModelNotFound(quoted_name(name)))?;
        let path = dir.join(version.to_string()).join("model.onnx");
        let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let bad = |reason: SettingsError| RepositoryError::BadSettings {
            model: name.to_string(),
            path: dir.join("herd.toml"),
            reason,
        };
        let (settings, policy) = match std::fs::read_to_string(dir.join("herd.toml")) {
            Ok(text) => (
                self.defaults.with_file(&text).map_err(bad)?,
                ClusterPolicy::from_file(&text).map_err(bad)?,
            ),
            Err(_) => (self.defaults.clone(), ClusterPolicy::default()),
        };
        Ok(ModelFiles {
            name: name.to_string(),
            version,
            path,
            file_bytes,
            settings,
            policy,
            digest: None,
            gpu: None,
        })
    }
}

/// A model name is one plain path component, so that no request can reach outside
/// the repository.
pub fn check_name(name: &str) -> Result<(), RepositoryError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if plain {
        Ok(())
    } else {
        Err(RepositoryError::InvalidModelName(quoted_name(name)))
    }
}

fn latest_version(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|v| dir.join(v.to_string()).join("model.onnx").is_file())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_highest_version_and_reads_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        for v in ["1", "3", "2"] {
            std::fs::create_dir_all(dir.path().join("m").join(v)).expect("mkdir");
            std::fs::write(dir.path().join("m").join(v).join("model.onnx"), b"x").expect("write");
        }
        std::fs::create_dir_all(dir.path().join("m/4")).expect("empty version");
        std::fs::create_dir_all(dir.path().join("notamodel")).expect("mkdir");
        std::fs::write(dir.path().join("m/herd.toml"), "max_batch_size = 4").expect("write");
        let repo = Repository::new(dir.path().to_path_buf(), ModelSettings::default());
        assert_eq!(repo.names(), vec!["m".to_string()]);
        let m = repo.find("m").expect("found");
        assert_eq!(m.version, 3);
        assert_eq!(m.settings.max_batch_size, 4);
        assert!(matches!(
            repo.find("notamodel"),
            Err(RepositoryError::ModelNotFound(_))
        ));
        for bad in ["", "..", "../m", "a/b"] {
            assert!(
                matches!(repo.find(bad), Err(RepositoryError::InvalidModelName(_))),
                "{bad:?}"
            );
        }
        std::fs::write(dir.path().join("m/herd.toml"), "max_batch_size = \"lots\"").expect("write");
        let err = repo.find("m").expect_err("bad herd.toml");
        let RepositoryError::BadSettings { path, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            path,
            &dir.path().join("m/herd.toml"),
            "the whole path, for logs"
        );
        let err = err.to_string();
        assert!(
            err.starts_with("model 'm' cannot be loaded: m/herd.toml: "),
            "named as the repository names it: {err}"
        );
        assert!(!err.contains(&*dir.path().to_string_lossy()), "{err}");
    }

    #[test]
    fn server_paths_are_cut_to_what_the_repository_calls_them() {
        let cases = [
            (
                "Load model from /srv/models/m/3/model.onnx failed:Protobuf parsing failed.",
                "Load model from m/3/model.onnx failed:Protobuf parsing failed.",
            ),
            (
                "/home/me/models/m/herd.toml: expected a table",
                "m/herd.toml: expected a table",
            ),
            (
                "cannot start a model worker (/usr/local/bin/herd): No such file",
                "cannot start a model worker (herd): No such file",
            ),
            (
                "ONNX Runtime at \"/opt/ort/lib/libonnxruntime.so.1\" failed",
                "ONNX Runtime at \"libonnxruntime.so.1\" failed",
            ),
            ("path=/var/lib/herd/models/abc.onnx", "path=abc.onnx"),
            // Not paths: fractions, URLs, words with slashes, a lone slash.
            (
                "1/2 of http://host:8001/x and/or a / b",
                "1/2 of http://host:8001/x and/or a / b",
            ),
            ("", ""),
            ("é /tmp/é/x", "é x"),
        ];
        for (text, client) in cases {
            assert_eq!(without_server_paths(text), client, "{text}");
        }
    }
}
