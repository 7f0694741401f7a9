//! The model repository on disk, in Triton's layout: `<root>/<name>/<version>/model.onnx`
//! with an optional `<root>/<name>/herd.toml`. The highest numbered version is served.

use std::path::{Path, PathBuf};

use crate::limits::quoted_name;
use crate::settings::{ClusterPolicy, ModelSettings, SettingsError};

/// Names in these errors are as [`quoted_name`] gives them: a caller's long name is not
/// echoed in full.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepositoryError {
    #[error("model '{0}' is not in the model repository")]
    ModelNotFound(String),
    #[error("invalid model name {0:?}: use a plain directory name of the model repository")]
    InvalidModelName(String),
    #[error("model '{model}' cannot be loaded: {}: {reason}", .path.display())]
    BadSettings {
        model: String,
        path: PathBuf,
        reason: SettingsError,
    },
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
}

impl Repository {
    pub fn new(root: PathBuf, defaults: ModelSettings) -> Repository {
        Repository { root, defaults }
    }

    pub fn root(&self) -> &Path {
        &self.root
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
        let err = repo.find("m").expect_err("bad herd.toml").to_string();
        assert!(err.contains("herd.toml"), "{err}");
    }
}
