//! The `entries` field of a `/predict` form: which tasks to run, each stage's model
//! and options, as Immich's server sends it
//! (`{"clip":{"visual":{"modelName":"ViT-B-32__openai"}}}`).

use serde_json::{Map, Value};

/// An Immich task: the first level of `entries` and of the model cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Clip,
    FacialRecognition,
    Ocr,
}

/// A model type within a task: the second level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Visual,
    Textual,
    Detection,
    Recognition,
}

impl Task {
    pub fn parse(text: &str) -> Option<Task> {
        Some(match text {
            "clip" => Task::Clip,
            "facial-recognition" => Task::FacialRecognition,
            "ocr" => Task::Ocr,
            _ => return None,
        })
    }

    /// As in `entries`, in responses and in the model cache's folders.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Clip => "clip",
            Task::FacialRecognition => "facial-recognition",
            Task::Ocr => "ocr",
        }
    }

    /// The stages this task has.
    pub fn stages(self) -> &'static [Stage] {
        match self {
            Task::Clip => &[Stage::Visual, Stage::Textual],
            Task::FacialRecognition | Task::Ocr => &[Stage::Detection, Stage::Recognition],
        }
    }
}

impl Stage {
    pub fn parse(text: &str) -> Option<Stage> {
        Some(match text {
            "visual" => Stage::Visual,
            "textual" => Stage::Textual,
            "detection" => Stage::Detection,
            "recognition" => Stage::Recognition,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Visual => "visual",
            Stage::Textual => "textual",
            Stage::Detection => "detection",
            Stage::Recognition => "recognition",
        }
    }

    /// The stage whose output this one needs (recognition needs its task's detection).
    pub fn depends_on(self) -> Option<Stage> {
        match self {
            Stage::Recognition => Some(Stage::Detection),
            _ => None,
        }
    }
}

/// One stage to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub task: Task,
    pub stage: Stage,
    /// The model name as Immich's cache names it ([`clean_name`]).
    pub model: String,
    pub options: Map<String, Value>,
}

impl Entry {
    /// A numeric option (`minScore`, `maxResolution`), or `default` when absent.
    pub fn number(&self, key: &str, default: f64) -> Result<f64, EntriesError> {
        match self.options.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                EntriesError(format!(
                    "{}.{}.options.{key} must be a number",
                    self.task.as_str(),
                    self.stage.as_str()
                ))
            }),
        }
    }

    /// A text option (`language`), if present.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.options.get(key).and_then(Value::as_str)
    }
}

/// `entries` is not a pipeline: Immich answers 422 "Invalid request format.".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid request format: {0}")]
pub struct EntriesError(pub String);

/// Most stages one request may name (every stage of every task, once).
const MAX_ENTRIES: usize = 6;

/// Parses `entries`, in the order given.
pub fn parse(text: &str) -> Result<Vec<Entry>, EntriesError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| EntriesError(format!("entries is not JSON: {e}")))?;
    let tasks = value
        .as_object()
        .ok_or_else(|| EntriesError("entries must be a JSON object of tasks".into()))?;
    let mut out = Vec::new();
    for (task_name, stages) in tasks {
        let task = Task::parse(task_name).ok_or_else(|| {
            EntriesError(format!(
                "unknown task {task_name:?}: use clip, facial-recognition or ocr"
            ))
        })?;
        let stages = stages
            .as_object()
            .ok_or_else(|| EntriesError(format!("{task_name} must be an object of model types")))?;
        for (stage_name, entry) in stages {
            let stage = Stage::parse(stage_name)
                .filter(|s| task.stages().contains(s))
                .ok_or_else(|| {
                    let known: Vec<&str> = task.stages().iter().map(|s| s.as_str()).collect();
                    EntriesError(format!(
                        "unknown model type {stage_name:?} for {task_name}: use {}",
                        known.join(" or ")
                    ))
                })?;
            let entry = entry.as_object().ok_or_else(|| {
                EntriesError(format!("{task_name}.{stage_name} must be an object"))
            })?;
            let model = entry
                .get("modelName")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    EntriesError(format!("{task_name}.{stage_name}.modelName is missing"))
                })?;
            let model = clean_name(model);
            if model.is_empty() {
                return Err(EntriesError(format!(
                    "{task_name}.{stage_name}.modelName is empty"
                )));
            }
            let options = match entry.get("options") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(o)) => o.clone(),
                Some(_) => {
                    return Err(EntriesError(format!(
                        "{task_name}.{stage_name}.options must be an object"
                    )))
                }
            };
            out.push(Entry {
                task,
                stage,
                model,
                options,
            });
        }
    }
    if out.is_empty() {
        return Err(EntriesError("entries names no task".into()));
    }
    if out.len() > MAX_ENTRIES {
        return Err(EntriesError(format!(
            "entries names {} stages, at most {MAX_ENTRIES}",
            out.len()
        )));
    }
    Ok(out)
}

/// Immich's `clean_name`: the part after the last `/`, `:` and `\` made `_`, `.`
/// deleted (`immich-app/ViT-B-32__openai` → `ViT-B-32__openai`).
pub fn clean_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.chars()
        .filter(|&c| c != '.')
        .map(|c| if c == ':' || c == '\\' { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_immichs_default_entries() {
        let faces = parse(
            r#"{"facial-recognition":{"detection":{"modelName":"buffalo_l","options":{"minScore":0.7}},"recognition":{"modelName":"buffalo_l"}}}"#,
        )
        .expect("parsed");
        assert_eq!(faces.len(), 2);
        assert_eq!(faces[0].task, Task::FacialRecognition);
        assert_eq!(faces[0].stage, Stage::Detection);
        assert_eq!(faces[0].number("minScore", 0.0), Ok(0.7));
        assert_eq!(faces[1].stage, Stage::Recognition);
        assert_eq!(faces[1].stage.depends_on(), Some(Stage::Detection));
        assert_eq!(faces[1].number("minScore", 0.5), Ok(0.5));

        let text = parse(
            r#"{"clip":{"textual":{"modelName":"immich-app/ViT-B-32__openai","options":{"language":"en"}}}}"#,
        )
        .expect("parsed");
        assert_eq!(text[0].model, "ViT-B-32__openai");
        assert_eq!(text[0].text("language"), Some("en"));
    }

    #[test]
    fn cleans_names_as_immich_does() {
        assert_eq!(
            clean_name("a/b/ViT-B-16-SigLIP__webli"),
            "ViT-B-16-SigLIP__webli"
        );
        assert_eq!(clean_name("x:y\\z.v1"), "x_y_zv1");
    }

    #[test]
    fn refuses_what_is_not_a_pipeline() {
        for bad in [
            "not json",
            "[]",
            "{}",
            r#"{"clip":1}"#,
            r#"{"clip":{"visual":{}}}"#,
            r#"{"clip":{"detection":{"modelName":"m"}}}"#,
            r#"{"speech":{"visual":{"modelName":"m"}}}"#,
            r#"{"clip":{"visual":{"modelName":"m","options":3}}}"#,
            r#"{"clip":{"visual":{"modelName":"..."}}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        let entry =
            &parse(r#"{"ocr":{"detection":{"modelName":"m","options":{"minScore":"high"}}}}"#)
                .expect("parsed")[0];
        assert!(entry.number("minScore", 0.5).is_err());
    }
}
