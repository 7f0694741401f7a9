//! herd as Immich's machine-learning server, checked from outside: an Immich-exact
//! Node client (FormData, Blob, fetch, as Immich's server builds its requests) talks
//! to a real cluster (scheduler in this process, two `herd agent` processes, real ONNX
//! Runtime) serving an Immich model cache; its answers are compared with a Python
//! reference pipeline built from the libraries Immich uses (PIL, numpy, onnxruntime,
//! OpenCV, RapidOCR's and insightface's post-processing) on the same models and photos.
//!
//! The cache (stand-in CLIP and face models with the real signatures, real PP-OCRv5)
//! and the reference's virtualenv come from scripts/setup_immich.sh.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::cluster_support::*;

pub(crate) fn cache() -> PathBuf {
    let cache = std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    assert!(
        cache.join("immich-models").is_dir() && cache.join("immich-venv/bin/python").is_file(),
        "no Immich model cache or reference virtualenv in {}: run scripts/setup.sh",
        cache.display()
    );
    cache
}

pub(crate) fn here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a command to its end and parses what it prints as JSON.
pub(crate) async fn json_of(command: &mut tokio::process::Command) -> Value {
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run");
    assert!(out.status.success(), "{command:?} failed: {}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{command:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The test photos (reference.py --write-images) in a directory of their own.
async fn photos() -> tempfile::TempDir {
    let work = tempfile::tempdir().expect("tempdir");
    json_of(
        tokio::process::Command::new(cache().join("immich-venv/bin/python"))
            .arg(here("tests/immich/reference.py"))
            .arg("--write-images")
            .arg(work.path()),
    )
    .await;
    work
}

/// The reference pipeline's answer to each case of `spec`.
async fn reference_answers(spec: &Path) -> Value {
    json_of(
        tokio::process::Command::new(cache().join("immich-venv/bin/python"))
            .arg(here("tests/immich/reference.py"))
            .arg("--models")
            .arg(cache().join("immich-models"))
            .arg("--batch-file")
            .arg(spec),
    )
    .await
}

/// What the Immich-exact client prints for `node client.mjs URL MODE [SPEC]`.
pub(crate) async fn immich_client(url: &str, mode: &str, spec: Option<&Path>) -> Value {
    json_of(
        tokio::process::Command::new("node")
            .arg(here("tests/immich/client.mjs"))
            .args([url, mode])
            .args(spec),
    )
    .await
}

/// A cluster of two agents serving the Immich cache, its Immich API on a free port.
async fn immich_cluster() -> (TestCluster, String) {
    let models = cache().join("immich-models");
    let cluster = TestCluster::start_with(
        &["3GiB", "3GiB"],
        &[],
        herd_scheduler::config::PolicyArg::Spread,
        move |c| c.immich_models = Some(models.clone()),
    )
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(herd_scheduler::serve_immich(
        cluster.scheduler.clone(),
        Some(listener),
        std::future::pending(),
    ));
    (cluster, url)
}

fn images(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("astronaut.jpg"),
        dir.join("coffee.jpg"),
        dir.join("text.png"),
    )
}

fn clip_visual() -> Value {
    json!({"clip": {"visual": {"modelName": "ViT-B-32__openai"}}})
}
fn clip_textual() -> Value {
    json!({"clip": {"textual": {"modelName": "ViT-B-32__openai", "options": {"language": "en"}}}})
}
fn faces() -> Value {
    json!({"facial-recognition": {
        "detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}},
        "recognition": {"modelName": "buffalo_l"}}})
}
fn ocr() -> Value {
    json!({"ocr": {
        "detection": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.5, "maxResolution": 736}},
        "recognition": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.8}}}})
}

fn vector(v: &Value) -> Vec<f64> {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("an embedding is a JSON string: {v}"));
    serde_json::from_str(text).expect("the string holds a float array")
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "embedding lengths differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// herd's answer matches the reference's: embeddings cosine ≥ 0.999, face boxes
/// within 1 px, OCR texts equal and boxes within 1% of the image's size.
fn assert_matches(case: &str, herd: &Value, reference: &Value) {
    for key in ["imageHeight", "imageWidth"] {
        assert_eq!(herd.get(key), reference.get(key), "{case}: {key}");
    }
    if let Some(want) = reference.get("clip") {
        let c = cosine(&vector(&herd["clip"]), &vector(want));
        assert!(c >= 0.999, "{case}: CLIP cosine {c}");
    }
    if let Some(want) = reference.get("facial-recognition") {
        let (got, want) = (
            herd["facial-recognition"].as_array().expect("faces"),
            want.as_array().expect("faces"),
        );
        assert_eq!(
            got.len(),
            want.len(),
            "{case}: faces found: {got:?} vs {want:?}"
        );
        assert!(
            !want.is_empty(),
            "{case}: the reference finds no face: a weak check"
        );
        for (g, w) in got.iter().zip(want) {
            for k in ["x1", "y1", "x2", "y2"] {
                let d = (number(&g["boundingBox"][k]) - number(&w["boundingBox"][k])).abs();
                assert!(d <= 1.0, "{case}: box {k} off by {d}: {g} vs {w}");
            }
            let c = cosine(&vector(&g["embedding"]), &vector(&w["embedding"]));
            assert!(c >= 0.999, "{case}: face embedding cosine {c}");
        }
    }
    if let Some(want) = reference.get("ocr") {
        let got = &herd["ocr"];
        assert_eq!(got["text"], want["text"], "{case}: OCR texts");
        assert!(
            !want["text"].as_array().expect("texts").is_empty(),
            "{case}: the reference reads no text: a weak check"
        );
        let (gb, wb) = (
            got["box"].as_array().expect("boxes"),
            want["box"].as_array().expect("boxes"),
        );
        assert_eq!(gb.len(), wb.len(), "{case}: OCR box values");
        for (g, w) in gb.iter().zip(wb) {
            let d = (number(g) - number(w)).abs();
            assert!(d <= 0.01, "{case}: OCR box off by {d} of the image");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_immich_client_gets_the_reference_pipelines_answers() {
    let work = photos().await;
    let (astronaut, coffee, text) = images(work.path());
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let cases = json!([
        {"name": "clip visual, astronaut", "image": path(&astronaut), "entries": clip_visual()},
        {"name": "clip visual, coffee", "image": path(&coffee), "entries": clip_visual()},
        {"name": "clip textual", "text": "an astronaut in a white suit", "entries": clip_textual()},
        {"name": "faces, astronaut", "image": path(&astronaut), "entries": faces()},
        {"name": "ocr, text image", "image": path(&text), "entries": ocr()},
        {"name": "clip and faces at once", "image": path(&astronaut),
         "entries": {"clip": clip_visual()["clip"], "facial-recognition": faces()["facial-recognition"]}},
    ]);
    let spec = work.path().join("cases.json");
    std::fs::write(&spec, cases.to_string()).expect("write cases");
    let reference = reference_answers(&spec).await;

    let (cluster, url) = immich_cluster().await;
    // Cold: every model is loaded by its first request, which waits for it.
    let answers = immich_client(&url, "batch", Some(&spec)).await;
    let cases = cases.as_array().expect("cases");
    let (answers, reference) = (
        answers.as_array().expect("answers"),
        reference.as_array().expect("reference"),
    );
    assert_eq!(answers.len(), cases.len());
    for ((case, got), want) in cases.iter().zip(answers).zip(reference) {
        let name = case["name"].as_str().unwrap_or_default();
        assert_eq!(got["status"], 200, "{name}: {got}");
        assert_matches(name, &got["body"], want);
    }
    // Concurrent requests (their model runs batch together: text queries, face crops)
    // get what each would get alone.
    let texts = [
        "a cat",
        "two dogs on a beach",
        "an astronaut",
        "a red car at night",
        "coffee in a white cup",
        "mountains under snow",
        "a birthday party",
        "the sea",
    ];
    let mut concurrent: Vec<Value> = texts
        .iter()
        .map(
            |t| json!({"name": format!("clip textual, {t}"), "text": t, "entries": clip_textual()}),
        )
        .collect();
    for _ in 0..3 {
        concurrent.push(
            json!({"name": "faces, astronaut", "image": path(&astronaut), "entries": faces()}),
        );
        concurrent.push(json!({"name": "clip visual, coffee", "image": path(&coffee), "entries": clip_visual()}));
    }
    let spec = work.path().join("concurrent.json");
    std::fs::write(&spec, Value::Array(concurrent.clone()).to_string()).expect("write cases");
    let reference = reference_answers(&spec).await;
    let answers = immich_client(&url, "parallel", Some(&spec)).await;
    let (answers, reference) = (
        answers.as_array().expect("answers"),
        reference.as_array().expect("reference"),
    );
    assert_eq!(answers.len(), concurrent.len());
    for ((case, got), want) in concurrent.iter().zip(answers).zip(reference) {
        let name = case["name"].as_str().unwrap_or_default();
        assert_eq!(got["status"], 200, "{name}: {got}");
        assert_matches(name, &got["body"], want);
    }
    // The models joined the catalog like any other and were placed on the agents.
    for model in [
        "immich.clip.visual.ViT-B-32__openai",
        "immich.facial-recognition.recognition.buffalo_l",
        "immich.ocr.detection.PP-OCRv5_mobile",
    ] {
        assert!(
            !cluster.ready_on(model).is_empty(),
            "{model} not ready anywhere"
        );
    }
    // A recognition is placed beside its detection, so that one node runs both stages
    // of a request (the image decoded and sent once).
    for (detection, recognition) in [
        (
            "immich.facial-recognition.detection.buffalo_l",
            "immich.facial-recognition.recognition.buffalo_l",
        ),
        (
            "immich.ocr.detection.PP-OCRv5_mobile",
            "immich.ocr.recognition.PP-OCRv5_mobile",
        ),
    ] {
        assert_eq!(
            cluster.ready_on(detection),
            cluster.ready_on(recognition),
            "{detection} and {recognition} on different nodes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn immichs_faults_get_immichs_status_codes() {
    let work = photos().await;
    let (_cluster, url) = immich_cluster().await;
    let ping = immich_client(&url, "ping", None).await;
    assert_eq!(ping["status"], 200, "{ping}");
    assert_eq!(ping["body"], "pong");

    let not_image = work.path().join("not-an-image.jpg");
    std::fs::write(&not_image, b"plain text, not a JPEG").expect("write");
    let (astronaut, _, text) = images(work.path());
    let cut = |from: &Path, to: &str| {
        let bytes = std::fs::read(from).expect("read the image");
        let path = work.path().join(to);
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        path
    };
    let bomb = work.path().join("bomb.png");
    std::fs::write(&bomb, png_header_only(30_000, 30_000)).expect("write");
    let truncated = cut(&astronaut, "truncated.jpg");
    let truncated_png = cut(&text, "truncated.png");
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let cases = json!([
        {"image": p(&not_image), "entries": clip_visual(), "want": 400},
        {"image": p(&truncated), "entries": clip_visual(), "want": 400},
        {"image": p(&truncated_png), "entries": ocr(), "want": 400},
        {"image": p(&bomb), "entries": faces(), "want": 400, "says": "pixels"},
        {"raw_entries": "{not json", "text": "x", "want": 422},
        {"text": "x", "entries": {"clip": {"textual": {}}}, "want": 422},
        {"entries": clip_visual(), "want": 400},
        {"image": p(&astronaut), "entries": {"facial-recognition": {"recognition": {"modelName": "buffalo_l"}}}, "want": 400},
        {"text": "x", "entries": {"clip": {"textual": {"modelName": "no-such-model"}}}, "want": 500},
        {"text": "still served", "entries": clip_textual(), "want": 200},
        {"image": p(&astronaut), "entries": clip_visual(), "want": 200},
    ]);
    let spec = work.path().join("faults.json");
    std::fs::write(&spec, cases.to_string()).expect("write");
    let answers = immich_client(&url, "batch", Some(&spec)).await;
    let answers = answers.as_array().expect("answers");
    let cases = cases.as_array().expect("cases");
    assert_eq!(answers.len(), cases.len());
    for (case, got) in cases.iter().zip(answers) {
        assert_eq!(got["status"], case["want"], "{case}: {got}");
        if case["want"] != 200 {
            let detail = &got["body"]["detail"];
            assert!(
                detail.as_str().is_some_and(|d| !d.is_empty()),
                "{case}: no message: {got}"
            );
            if let Some(says) = case["says"].as_str() {
                assert!(
                    detail.as_str().is_some_and(|d| d.contains(says)),
                    "{case}: {got}"
                );
            }
        }
    }
}

/// A PNG that states `width`×`height` pixels in its header and holds almost no data: a
/// decompression bomb is refused from its header, before anything is decoded.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // The start of a zlib stream: enough for a reader to reach the pixel data.
    let idat = b"IDAT\x78\x9c";
    png.extend_from_slice(&2u32.to_be_bytes());
    png.extend_from_slice(idat);
    png.extend_from_slice(&crc32(idat).to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    png
}

/// A stage call made straight to the gateway (any Triton client can name the
/// `herd-immich` parameter): what it asks the agent to crop is bounded before any crop is
/// made, and the agent goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stage_request_from_outside_cannot_make_the_agent_crop_without_bound() {
    use herd_proto::inference::infer_parameter::ParameterChoice;
    use herd_proto::inference::model_infer_request::InferInputTensor;
    use herd_proto::inference::{InferParameter, ModelInferRequest};

    let work = photos().await;
    let (astronaut, _, _) = images(work.path());
    let photo = std::fs::read(astronaut).expect("read the photo");
    let (cluster, _url) = immich_cluster().await;
    let mut client = cluster.client().await;
    let stage_call = |model: &str, stage: &str, request: Value| {
        let request = request.to_string().into_bytes();
        let tensor = |name: &str, len: usize| InferInputTensor {
            name: name.into(),
            datatype: "UINT8".into(),
            shape: vec![len as i64],
            ..Default::default()
        };
        let mut call = ModelInferRequest {
            model_name: model.into(),
            inputs: vec![
                tensor("input", photo.len()),
                tensor("request", request.len()),
            ],
            raw_input_contents: vec![photo.clone().into(), request.into()],
            ..Default::default()
        };
        call.parameters.insert(
            "herd-immich".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam(stage.into())),
            },
        );
        call
    };
    let text = "immich.ocr.recognition.PP-OCRv5_mobile";
    let face = "immich.facial-recognition.recognition.buffalo_l";
    let corners = |x: f32, y: f32, w: f32, h: f32| json!({"points": [[x, y], [x + w, y], [x + w, y + h], [x, y + h]], "score": 0.9});
    let refused = [
        (
            text,
            "ocr-recognition",
            json!({"boxes": vec![corners(10.0, 10.0, 50.0, 20.0); 1001]}),
            "1001 text boxes",
        ),
        (
            text,
            "ocr-recognition",
            json!({"boxes": [corners(0.0, 0.0, 1e9, 1e9), corners(0.0, 0.0, 1e9, 1e9)]}),
            "would crop",
        ),
        (
            face,
            "facial-recognition-recognition",
            json!({"faces": vec![json!({"bbox": [0, 0, 10, 10], "score": 0.9, "landmarks": [[1, 1], [5, 1], [3, 3], [1, 5], [5, 5]]}); 1001]}),
            "1001 faces",
        ),
    ];
    for (model, stage, request, says) in refused {
        let status = client
            .model_infer(stage_call(model, stage, request))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
    // The same agent still reads a box of the photo.
    let answer = client
        .model_infer(stage_call(
            text,
            "ocr-recognition",
            json!({"boxes": [corners(100.0, 100.0, 120.0, 40.0)]}),
        ))
        .await
        .expect("a bounded request is served")
        .into_inner();
    assert_eq!(answer.outputs.len(), 1);
    let result: Value = serde_json::from_slice(&answer.raw_output_contents[0]).expect("json");
    assert_eq!(
        result["texts"].as_array().map(Vec::len),
        Some(1),
        "{result}"
    );
}
