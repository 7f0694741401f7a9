//! An Immich model cache (`<dir>/<task>/<modelName>/<type>/model.onnx`, with
//! `config.json`, `preprocess_cfg.json`, `tokenizer.json` … beside it) read as models
//! of the catalog, named `immich.<task>.<type>.<modelName>`. A user's existing cache
//! works unchanged; herd never writes to it.

use std::path::{Path, PathBuf};

use herd_core::repository::ModelFiles;
use herd_core::settings::{ClusterPolicy, ModelSettings};
use herd_immich::entries::{Stage, Task};
use herd_immich::stage::StageKind;
use herd_proto::herd::{ImmichStage, SideFile};

use crate::model::CatalogModel;

/// Files beside model.onnx the agent's processing may read. Others (Immich's
/// `model.armnn`, `*.rknn`, other exports) are not sent.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "preprocess_cfg.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "dict.txt",
    "ppocrv5_dict.txt",
];

/// What the catalog keeps of an Immich model besides its model.onnx.
#[derive(Debug, Clone, PartialEq)]
pub struct ImmichSource {
    /// As sent to the agent with a load.
    pub stage: ImmichStage,
    /// Where each of `stage.files` is, in the same order.
    pub paths: Vec<PathBuf>,
}

impl ImmichSource {
    /// The side file with this digest, for an agent fetching it.
    pub fn file_with_digest(&self, digest: &str) -> Option<&Path> {
        self.stage
            .files
            .iter()
            .zip(&self.paths)
            .find(|(f, _)| f.digest == digest)
            .map(|(_, p)| p.as_path())
    }
}

/// Every model of the Immich cache at `dir`; what cannot be read is logged and left
/// out. `digest` hashes a file (the scheduler's cache of digests).
pub fn scan(
    dir: &Path,
    defaults: &ModelSettings,
    digest: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Vec<CatalogModel> {
    let mut found = Vec::new();
    for task in [Task::Clip, Task::FacialRecognition, Task::Ocr] {
        for model_dir in subdirectories(&dir.join(task.as_str())) {
            let Some(model) = model_dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            for &stage in task.stages() {
                let stage_dir = model_dir.join(stage.as_str());
                found.extend(model_in(&stage_dir, task, stage, model, defaults, digest));
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The one model of the Immich cache at `dir` a catalog name (`immich.<task>.<type>.<model>`)
/// names, when it is there. The name is checked before any path is built: a model name
/// Immich would send is already clean (no `/`, `\\`, `:` or `.`).
pub fn find(
    dir: &Path,
    name: &str,
    defaults: &ModelSettings,
    digest: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Option<CatalogModel> {
    let mut parts = name.splitn(4, '.');
    let (Some("immich"), Some(task), Some(stage), Some(model)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (task, stage) = (Task::parse(task)?, Stage::parse(stage)?);
    StageKind::of(task, stage)?;
    if model.is_empty() || herd_immich::entries::clean_name(model) != model {
        return None;
    }
    let stage_dir = dir.join(task.as_str()).join(model).join(stage.as_str());
    model_in(&stage_dir, task, stage, model, defaults, digest)
}

/// The model in `stage_dir`, if it holds a model.onnx; one that cannot be read is logged
/// and left out.
fn model_in(
    stage_dir: &Path,
    task: Task,
    stage: Stage,
    model: &str,
    defaults: &ModelSettings,
    digest: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Option<CatalogModel> {
    if !stage_dir.join("model.onnx").is_file() {
        return None;
    }
    read(stage_dir, task, stage, model, defaults, digest)
        .map_err(|e| {
            tracing::warn!(dir = %stage_dir.display(), error = %e, "immich model left out of the catalog")
        })
        .ok()
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn read(
    stage_dir: &Path,
    task: Task,
    stage: Stage,
    model: &str,
    defaults: &ModelSettings,
    digest: &dyn Fn(&Path) -> std::io::Result<String>,
) -> std::io::Result<CatalogModel> {
    let kind = StageKind::of(task, stage).ok_or_else(|| std::io::Error::other("no such stage"))?;
    let name = StageKind::catalog_name(task, stage, model);
    herd_core::repository::check_name(&name).map_err(std::io::Error::other)?;
    let path = stage_dir.join("model.onnx");
    let file_bytes = std::fs::metadata(&path)?.len();
    // Each Immich request runs several models of a node in turn: ONNX Runtime's threads
    // spinning after one model's run take the cores the next stage needs (measured in
    // BENCHMARKS.md). herd.toml may turn it back on.
    let defaults = &ModelSettings {
        intra_op_spinning: false,
        ..defaults.clone()
    };
    // herd.toml beside model.onnx tunes it as in a repository; none is usual.
    let (settings, policy) = match std::fs::read_to_string(stage_dir.join("herd.toml")) {
        Ok(text) => (
            defaults.with_file(&text).map_err(std::io::Error::other)?,
            ClusterPolicy::from_file(&text).map_err(std::io::Error::other)?,
        ),
        Err(_) => (defaults.clone(), ClusterPolicy::default()),
    };
    let mut files = Vec::new();
    let mut paths = Vec::new();
    for side in SIDE_FILES {
        let Some(p) = side_file(stage_dir, side) else {
            continue;
        };
        files.push(SideFile {
            name: side.to_string(),
            digest: digest(&p)?,
            file_bytes: std::fs::metadata(&p)?.len(),
        });
        paths.push(p);
    }
    let model_digest = digest(&path)?;
    let mut m = CatalogModel::new(
        ModelFiles {
            name,
            version: 1,
            path,
            file_bytes,
            settings,
            policy,
            digest: Some(model_digest.clone()),
            gpu: None,
        },
        model_digest,
    );
    m.immich = Some(ImmichSource {
        stage: ImmichStage {
            stage: kind.as_str().to_string(),
            model: model.to_string(),
            files,
        },
        paths,
    });
    Ok(m)
}

/// Where a side file is: beside model.onnx, or for CLIP's `config.json` in the
/// model's folder above its visual/textual folders (Immich's `cache_dir / "config.json"`).
fn side_file(stage_dir: &Path, name: &str) -> Option<PathBuf> {
    let beside = stage_dir.join(name);
    if beside.is_file() {
        return Some(beside);
    }
    if name != "config.json" {
        return None;
    }
    let above = stage_dir.parent()?.join(name);
    above.is_file().then_some(above)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }

    #[test]
    fn reads_an_immich_cache_as_catalog_models() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        put(root, "clip/ViT-B-32__openai/visual/model.onnx", b"v");
        put(
            root,
            "clip/ViT-B-32__openai/visual/preprocess_cfg.json",
            b"{}",
        );
        put(root, "clip/ViT-B-32__openai/textual/model.onnx", b"t");
        put(root, "clip/ViT-B-32__openai/textual/tokenizer.json", b"{}");
        put(root, "clip/ViT-B-32__openai/textual/model.armnn", b"x");
        put(
            root,
            "clip/ViT-B-32__openai/config.json",
            b"{\"embed_dim\": 512}",
        );
        put(
            root,
            "facial-recognition/buffalo_l/detection/model.onnx",
            b"d",
        );
        put(
            root,
            "facial-recognition/buffalo_l/recognition/README",
            b"no model",
        );
        put(root, "speech/whisper/encoder/model.onnx", b"unknown task");
        let digest = |p: &Path| herd_core::digest::sha256_file(p);
        let models = scan(root, &ModelSettings::default(), &digest);
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "immich.clip.textual.ViT-B-32__openai",
                "immich.clip.visual.ViT-B-32__openai",
                "immich.facial-recognition.detection.buffalo_l",
            ]
        );
        let textual = models[0].immich.as_ref().expect("immich");
        assert_eq!(textual.stage.stage, "clip-textual");
        assert_eq!(textual.stage.model, "ViT-B-32__openai");
        let side: Vec<&str> = textual
            .stage
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(side, ["config.json", "tokenizer.json"]);
        let tokenizer_digest = &textual.stage.files[1].digest;
        assert!(textual
            .file_with_digest(tokenizer_digest)
            .is_some_and(|p| p.ends_with("textual/tokenizer.json")));
        assert!(textual.file_with_digest(&models[0].digest).is_none());
    }

    #[test]
    fn one_model_is_found_by_its_catalog_name_and_odd_names_find_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        put(root, "clip/ViT-B-32__openai/textual/model.onnx", b"t");
        put(root, "clip/ViT-B-32__openai/textual/tokenizer.json", b"{}");
        let digest = |p: &Path| herd_core::digest::sha256_file(p);
        let d = ModelSettings::default();
        let found = find(root, "immich.clip.textual.ViT-B-32__openai", &d, &digest).expect("found");
        assert_eq!(found.name, "immich.clip.textual.ViT-B-32__openai");
        for name in [
            "immich.clip.visual.ViT-B-32__openai",
            "immich.clip.detection.ViT-B-32__openai",
            "immich.clip.textual.",
            "immich.clip.textual.../../clip/ViT-B-32__openai",
            "immich.clip.textual.a/b",
            "clip.textual.ViT-B-32__openai",
        ] {
            assert!(find(root, name, &d, &digest).is_none(), "{name}");
        }
    }

    #[test]
    fn a_missing_cache_has_no_models() {
        let digest = |p: &Path| herd_core::digest::sha256_file(p);
        assert!(scan(
            Path::new("/nonexistent/immich"),
            &ModelSettings::default(),
            &digest
        )
        .is_empty());
    }
}
