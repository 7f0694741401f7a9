//! `herd infer MODEL --input NAME=FILE ...`: one inference from files, outputs printed
//! as a summary, as JSON, or written as `.npy`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use herd_proto::DataType;
use serde::Serialize;

use crate::connect::ConnectArgs;
use crate::inputs::{load_inputs, InputSource};
use herd_client::tensor::{NamedTensor, Shape, TensorData};

#[derive(clap::Args, Debug, Clone)]
pub struct InferArgs {
    /// The model to run.
    pub model: String,

    /// An input: NAME=FILE.npy, NAME=FILE.json or an inline JSON array NAME=[[1,2],[3,4]]
    /// (repeat for each input). Dtype and shape are checked against the model first.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
    pub inputs: Vec<InputSource>,

    /// Write each output to DIR/OUTPUT.npy.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// For classifier outputs: the K largest values of each row, with their indices.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,

    /// Print the outputs in full, as one JSON object.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(args: InferArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let meta = client.metadata(&args.model).await?;
    let inputs = load_inputs(&meta, &args.inputs)?;
    let outputs = client.infer(&args.model, &inputs).await?;
    let top_k = args.top_k.map(|k| k as usize);
    let mut files = Vec::new();
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for out in &outputs {
            let path = output_path(dir, &out.name);
            out.data.write_npy(&path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write output '{}' to {}: {e}",
                    out.name,
                    path.display()
                )
            })?;
            files.push(path);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&json_report(&args.model, &outputs, &files, top_k))?
        );
    } else {
        for out in &outputs {
            print!("{}", summarise(out, top_k));
        }
        for (out, path) in outputs.iter().zip(&files) {
            println!("wrote {} to {}", out.name, path.display());
        }
    }
    Ok(())
}

/// An output name as a file name: path separators and odd characters become `_`.
pub fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match stem.trim_start_matches('.') {
        "" => "output".to_string(),
        s => s.to_string(),
    }
}

#[derive(Serialize)]
pub struct InferReport {
    pub model: String,
    pub outputs: Vec<OutputReport>,
}

#[derive(Serialize)]
pub struct OutputReport {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    /// Row-major values, as KServe v2's REST `data`.
    pub data: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Vec<Vec<Ranked>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Ranked {
    pub index: usize,
    pub value: f64,
}

pub fn json_report(
    model: &str,
    outputs: &[NamedTensor],
    files: &[PathBuf],
    top_k: Option<usize>,
) -> InferReport {
    InferReport {
        model: model.to_string(),
        outputs: outputs
            .iter()
            .enumerate()
            .map(|(i, out)| OutputReport {
                name: out.name.clone(),
                datatype: out.data.dtype().as_str().to_string(),
                shape: out.data.shape(),
                data: out.data.to_json(),
                top_k: top_k.and_then(|k| ranked_rows(&out.data, k)),
                file: files.get(i).cloned(),
            })
            .collect(),
    }
}

/// The K largest values of each row (the last dimension), best first; `None` for
/// tensors that are not numbers or have more than two dimensions.
pub fn ranked_rows(t: &TensorData, k: usize) -> Option<Vec<Vec<Ranked>>> {
    let shape = t.shape();
    if shape.len() > 2 {
        return None;
    }
    let values = t.to_f64()?;
    let width = shape.last().copied().unwrap_or(1).max(1);
    Some(
        values
            .chunks(width)
            .map(|row| {
                let mut ranked: Vec<Ranked> = row
                    .iter()
                    .enumerate()
                    .map(|(index, &value)| Ranked { index, value })
                    .collect();
                ranked.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.index.cmp(&b.index)));
                ranked.truncate(k);
                ranked
            })
            .collect(),
    )
}

const MAX_ROWS: usize = 8;
const MAX_VALUES: usize = 8;

fn is_float(dtype: DataType) -> bool {
    matches!(
        dtype,
        DataType::Fp16 | DataType::Fp32 | DataType::Fp64 | DataType::Bf16
    )
}

fn number(v: f64, float: bool) -> String {
    if !float {
        format!("{v}")
    } else if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// A readable summary of one output: name, dtype and shape, then the first rows with
/// their first values and, for float rows, the argmax (or the top K when asked).
pub fn summarise(out: &NamedTensor, top_k: Option<usize>) -> String {
    let t = &out.data;
    let dtype = t.dtype();
    let shape = t.shape();
    let mut s = format!("{}  {} {}\n", out.name, dtype, Shape(&shape));
    let Some(values) = t.to_f64() else {
        let _ = writeln!(s, "  ({} bytes of {dtype})", t.to_raw().len());
        return s;
    };
    let float = is_float(dtype);
    let width = if shape.len() >= 2 {
        shape[1..].iter().product::<usize>().max(1)
    } else {
        values.len().max(1)
    };
    let rows: Vec<&[f64]> = values.chunks(width).collect();
    let ranked = top_k.and_then(|k| ranked_rows(t, k));
    for (r, row) in rows.iter().take(MAX_ROWS).enumerate() {
        let label = if shape.len() >= 2 {
            format!("[{r}]")
        } else {
            String::new()
        };
        let body = match &ranked {
            Some(rows) => rows[r]
                .iter()
                .map(|x| format!("{}: {}", x.index, number(x.value, float)))
                .collect::<Vec<_>>()
                .join("  "),
            None => {
                let mut shown: Vec<String> = row
                    .iter()
                    .take(MAX_VALUES)
                    .map(|&v| number(v, float))
                    .collect();
                if row.len() > MAX_VALUES {
                    shown.push(format!("… ({} more)", row.len() - MAX_VALUES));
                }
                let mut body = shown.join(" ");
                if float && row.len() > 1 && shape.len() <= 2 {
                    if let Some((index, best)) = argmax(row) {
                        let _ = write!(body, "   argmax {index} ({})", number(best, float));
                    }
                }
                body
            }
        };
        let _ = writeln!(
            s,
            "  {label}{}{body}",
            if label.is_empty() { "" } else { " " }
        );
    }
    if rows.len() > MAX_ROWS {
        let _ = writeln!(s, "  … ({} more rows)", rows.len() - MAX_ROWS);
    }
    s
}

/// The index and value of a row's largest value (the first, on ties).
fn argmax(row: &[f64]) -> Option<(usize, f64)> {
    row.iter()
        .copied()
        .enumerate()
        .fold(None, |best, (i, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
}

/// Where `--output-dir` puts an output.
pub fn output_path(dir: &Path, output: &str) -> PathBuf {
    dir.join(format!("{}.npy", file_stem(output)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn f32s(shape: &[usize], values: Vec<f32>) -> NamedTensor {
        NamedTensor::new(
            "y",
            ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape"),
        )
    }

    #[test]
    fn summaries_show_dtype_shape_values_and_argmax() {
        let out = f32s(&[2, 3], vec![0.1, 0.7, 0.2, 5.0, -1.0, 0.0]);
        assert_eq!(
            summarise(&out, None),
            "y  FP32 [2, 3]\n  \
             [0] 0.1000 0.7000 0.2000   argmax 1 (0.7000)\n  \
             [1] 5.0000 -1.0000 0.0000   argmax 0 (5.0000)\n"
        );
    }

    #[test]
    fn large_outputs_are_cut_with_counts() {
        let out = f32s(&[20, 10], (0..200).map(|i| i as f32).collect());
        let s = summarise(&out, None);
        assert!(s.contains("… (2 more)"), "{s}");
        assert!(s.contains("… (12 more rows)"), "{s}");
        assert_eq!(s.lines().count(), 1 + MAX_ROWS + 1, "{s}");
    }

    #[test]
    fn top_k_lists_the_best_indices_of_each_row() {
        let out = f32s(&[2, 4], vec![0.1, 0.4, 0.3, 0.2, 9.0, 8.0, 7.0, 10.0]);
        let rows = ranked_rows(&out.data, 2).expect("2-D floats rank");
        let indices: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| r.iter().map(|x| x.index).collect())
            .collect();
        assert_eq!(indices, vec![vec![1, 2], vec![3, 0]]);
        let s = summarise(&out, Some(2));
        assert!(s.contains("[0] 1: 0.4000  2: 0.3000"), "{s}");
        assert!(s.contains("[1] 3: 10.0000  0: 9.0000"), "{s}");
    }

    #[test]
    fn json_reports_hold_every_value() {
        let out = f32s(&[1, 2], vec![0.5, 1.5]);
        let report = json_report("m", &[out], &[], Some(1));
        let v = serde_json::to_value(&report).expect("serialises");
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([0.5, 1.5]));
        assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 2]));
        assert_eq!(v["outputs"][0]["top_k"][0][0]["index"], 1);
        assert!(v["outputs"][0].get("file").is_none());
    }

    #[test]
    fn output_names_become_safe_file_names() {
        assert_eq!(file_stem("y"), "y");
        assert_eq!(file_stem("../etc/passwd"), "_etc_passwd");
        assert_eq!(file_stem("logits:0"), "logits_0");
        assert_eq!(output_path(Path::new("d"), "a/b"), Path::new("d/a_b.npy"));
    }
}
