//! Immich's machine-learning HTTP API, as its FastAPI server (`immich_ml/main.py`)
//! speaks it: `GET /`, `GET /ping` and `POST /predict` (a multipart form of `entries`
//! and `image` or `text`). The form is read and checked here, the same way FastAPI and
//! Starlette would refuse it; what `entries` asks for is the pipeline's business.
//!
//! Errors are FastAPI's `HTTPException` bodies, `{"detail": ...}`. Immich's server reads
//! only the status: any non-2xx marks this URL unhealthy until its next good `/ping`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tracing::{debug, info};

use super::pipeline::{Payload, Predict, PredictError};

/// The largest `/predict` body: Immich sends the asset's preview (a 1440 px JPEG by
/// default), but a configuration that sends originals meets files of 50 MB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Starlette's `max_part_size`: a part without a filename (`entries`, `text`) is kept in
/// memory and refused beyond 1 MiB.
const MAX_PART_SIZE: usize = 1024 * 1024;
/// Starlette's `max_fields` and `max_files`.
const MAX_FIELDS: usize = 1000;
const MAX_FILES: usize = 1000;

/// Immich's answer to an `entries` that is not JSON, or not a pipeline.
const INVALID_ENTRIES: &str = "Invalid request format.";
/// Immich's answer to a form with neither `image` nor `text`.
const NO_INPUT: &str = "Either image or text must be provided";
/// FastAPI's answer to a body its form parser gives up on.
const UNPARSABLE: &str = "There was an error parsing the body";

#[derive(Debug, Clone)]
pub struct ImmichHttpConfig {
    /// The largest request body, in bytes; a larger one is answered 413.
    pub body_limit: usize,
}

impl Default for ImmichHttpConfig {
    fn default() -> Self {
        Self {
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

struct Front {
    predict: Arc<dyn Predict>,
    body_limit: usize,
}

/// Immich's ML routes in front of `predict`. Unknown paths and methods answer as
/// FastAPI does: 404 `{"detail":"Not Found"}`, 405 `{"detail":"Method Not Allowed"}`.
pub fn router(predict: Arc<dyn Predict>, config: &ImmichHttpConfig) -> axum::Router {
    let front = Arc::new(Front {
        predict,
        body_limit: config.body_limit,
    });
    axum::Router::new()
        .route("/", get(root))
        .route("/ping", get(ping))
        .route("/predict", post(predict_route))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .with_state(front)
}

/// Serves `router` over HTTP/1.1 on `listener` until `shutdown` completes (plain HTTP:
/// Immich's server has no TLS option for its ML URLs).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    herd_core::kserve_http::serve(listener, router, None, shutdown).await
}

async fn root() -> Response {
    Json(json!({ "message": "Immich ML" })).into_response()
}

/// Immich answers `pong` always; herd answers it only when the cluster can serve, so
/// that Immich fails over to its next URL instead of failing jobs here.
async fn ping(State(front): State<Arc<Front>>) -> Response {
    if front.predict.ready().await {
        "pong".into_response()
    } else {
        debug!("immich ping answered not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no node can serve",
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "detail": "Not Found" })),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    let detail = json!({ "detail": "Method Not Allowed" });
    (StatusCode::METHOD_NOT_ALLOWED, Json(detail)).into_response()
}

async fn predict_route(State(front): State<Arc<Front>>, request: Request) -> Response {
    match answer(&front, request).await {
        Ok(value) => Json(value).into_response(),
        Err(refusal) => {
            let status = refusal.status.as_u16();
            if refusal.status.is_server_error() {
                info!(status, reason = %refusal.reason, "immich predict failed");
            } else {
                debug!(status, reason = %refusal.reason, "immich predict refused");
            }
            refusal.into_response()
        }
    }
}

/// FastAPI's order: the whole form is parsed first, then `entries` (a dependency), then
/// the input; only then does the model run.
async fn answer(front: &Front, request: Request) -> Result<Value, Refusal> {
    let form = read_form(request, front.body_limit).await?;
    let entries = form.entries.ok_or_else(Refusal::missing_entries)?;
    if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&entries) {
        return Err(Refusal::invalid_entries(format!(
            "entries is not json: {error}"
        )));
    }
    // Immich's `if image is not None ... elif text is not None`: an image wins.
    let payload = match (form.image, form.text) {
        (Some(image), text) => {
            if text.is_some() {
                debug!("immich predict got both image and text, using the image");
            }
            Payload::Image(image)
        }
        (None, Some(text)) => Payload::Text(text),
        (None, None) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                NO_INPUT,
                "neither image nor text",
            ))
        }
    };
    front
        .predict
        .predict(&entries, payload)
        .await
        .map_err(Refusal::from)
}

/// The form fields `/predict` reads; an empty plain field counts as absent (FastAPI's
/// rule for `Form()` values).
#[derive(Debug, Default)]
struct Form {
    entries: Option<String>,
    image: Option<Bytes>,
    text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Entries,
    Image,
    Text,
    Ignored,
}

impl Slot {
    fn of(name: Option<&str>) -> Self {
        match name {
            Some("entries") => Self::Entries,
            Some("image") => Self::Image,
            Some("text") => Self::Text,
            _ => Self::Ignored,
        }
    }
}

async fn read_form(request: Request, body_limit: usize) -> Result<Form, Refusal> {
    if let Some(length) = content_length(request.headers()) {
        if length > body_limit as u64 {
            return Err(Refusal::too_large(body_limit));
        }
    }
    let essence = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match essence.as_str() {
        "multipart/form-data" => {}
        // FastAPI would read it; Immich never sends it, and herd has no parser for it.
        "application/x-www-form-urlencoded" => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send the form as multipart/form-data",
                "urlencoded form",
            ))
        }
        // Starlette reads any other body as an empty form: `entries` is then missing.
        _ => return Ok(Form::default()),
    }
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "Missing boundary in multipart.",
            "no multipart boundary",
        )
    })?;
    let mut form = Form::default();
    let (mut fields, mut files) = (0usize, 0usize);
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|error| Refusal::multipart(&error, body_limit))?
    {
        let is_file = field.file_name().is_some();
        if is_file {
            files += 1;
            if files > MAX_FILES {
                let detail = format!("Too many files. Maximum number of files is {MAX_FILES}.");
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    detail,
                    "too many files",
                ));
            }
        } else {
            fields += 1;
            if fields > MAX_FIELDS {
                let detail = format!("Too many fields. Maximum number of fields is {MAX_FIELDS}.");
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    detail,
                    "too many fields",
                ));
            }
        }
        let slot = Slot::of(field.name());
        let taken = match slot {
            Slot::Entries => form.entries.is_some(),
            Slot::Image => form.image.is_some(),
            Slot::Text => form.text.is_some(),
            Slot::Ignored => false,
        };
        if taken {
            return Err(Refusal::duplicate(slot));
        }
        let cap = if is_file { usize::MAX } else { MAX_PART_SIZE };
        let mut data = BytesMut::new();
        let mut size = 0usize;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|error| Refusal::multipart(&error, body_limit))?
        {
            size = size.saturating_add(chunk.len());
            if size > cap {
                let detail = format!("Part exceeded maximum size of {}KB.", MAX_PART_SIZE / 1024);
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    detail,
                    "form part too large",
                ));
            }
            if slot != Slot::Ignored {
                data.extend_from_slice(&chunk);
            }
        }
        if data.is_empty() && !is_file {
            continue;
        }
        match slot {
            Slot::Entries => form.entries = Some(decode(&data)),
            Slot::Image => form.image = Some(data.freeze()),
            Slot::Text => form.text = Some(decode(&data)),
            Slot::Ignored => {}
        }
    }
    Ok(form)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Starlette's `_user_safe_decode`: UTF-8, or Latin-1 when that fails.
fn decode(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => text.to_owned(),
        Err(_) => data.iter().map(|&byte| char::from(byte)).collect(),
    }
}

/// A refused or failed `/predict`: the status, FastAPI's `detail`, and the reason logged.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    detail: Value,
    reason: String,
}

impl Refusal {
    fn new(status: StatusCode, detail: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            status,
            detail: Value::String(detail.into()),
            reason: reason.into(),
        }
    }

    /// FastAPI's validation error for a required form field that is absent or empty.
    fn missing_entries() -> Self {
        let error = json!({
            "type": "missing",
            "loc": ["body", "entries"],
            "msg": "Field required",
            "input": null,
        });
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: json!([error]),
            reason: "no entries field".to_owned(),
        }
    }

    fn invalid_entries(reason: String) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, INVALID_ENTRIES, reason)
    }

    /// FastAPI would keep the last of duplicated fields; herd refuses the ambiguity
    /// (Immich sends each field once).
    fn duplicate(slot: Slot) -> Self {
        match slot {
            Slot::Entries => Self::invalid_entries("duplicate entries field".to_owned()),
            Slot::Image => Self::new(
                StatusCode::BAD_REQUEST,
                "Duplicate form field: image",
                "duplicate image field",
            ),
            Slot::Text | Slot::Ignored => Self::new(
                StatusCode::BAD_REQUEST,
                "Duplicate form field: text",
                "duplicate text field",
            ),
        }
    }

    fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than the limit of {limit} bytes"),
            "body over the limit",
        )
    }

    fn multipart(error: &axum::extract::multipart::MultipartError, limit: usize) -> Self {
        if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(limit)
        } else {
            let reason = format!("unparsable multipart body: {}", error.body_text());
            Self::new(StatusCode::BAD_REQUEST, UNPARSABLE, reason)
        }
    }
}

impl From<PredictError> for Refusal {
    fn from(error: PredictError) -> Self {
        let status = match &error {
            PredictError::InvalidEntries(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PredictError::BadInput(_) => StatusCode::BAD_REQUEST,
            PredictError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PredictError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = error.to_string();
        Self::new(status, message.clone(), message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "detail": self.detail }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::*;

    const BOUNDARY: &str = "----formdata-undici-0123456789";
    const CLIP_VISUAL: &str = r#"{"clip":{"visual":{"modelName":"ViT-B-32__openai"}}}"#;
    const CLIP_TEXTUAL: &str =
        r#"{"clip":{"textual":{"modelName":"ViT-B-32__openai","options":{"language":"en"}}}}"#;

    /// Records what reached it and answers what it was told to.
    struct FakePredict {
        ready: bool,
        answer: Result<Value, PredictError>,
        calls: Mutex<Vec<(String, Payload)>>,
    }

    impl FakePredict {
        fn answering(answer: Result<Value, PredictError>) -> Arc<Self> {
            Arc::new(Self {
                ready: true,
                answer,
                calls: Mutex::new(Vec::new()),
            })
        }

        fn ok() -> Arc<Self> {
            Self::answering(Ok(
                json!({ "clip": "[0.5,-0.25]", "imageHeight": 2, "imageWidth": 3 }),
            ))
        }

        fn calls(&self) -> Vec<(String, Payload)> {
            self.calls.lock().expect("lock").clone()
        }
    }

    #[async_trait::async_trait]
    impl Predict for FakePredict {
        async fn predict(&self, entries: &str, payload: Payload) -> Result<Value, PredictError> {
            self.calls
                .lock()
                .expect("lock")
                .push((entries.to_owned(), payload));
            self.answer.clone()
        }

        async fn ready(&self) -> bool {
            self.ready
        }
    }

    fn app(fake: &Arc<FakePredict>) -> axum::Router {
        router(fake.clone(), &ImmichHttpConfig::default())
    }

    enum Part<'a> {
        Field(&'a str, &'a [u8]),
        File(&'a str, &'a [u8]),
    }

    /// A body as undici's `FormData` encodes it (what Immich's server sends).
    fn undici(parts: &[Part<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        for part in parts {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data").as_bytes(),
            );
            match part {
                Part::Field(name, value) => {
                    body.extend_from_slice(format!("; name=\"{name}\"\r\n\r\n").as_bytes());
                    body.extend_from_slice(value);
                }
                Part::File(name, value) => {
                    let headers = format!(
                        "; name=\"{name}\"; filename=\"blob\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    );
                    body.extend_from_slice(headers.as_bytes());
                    body.extend_from_slice(value);
                }
            }
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    fn post_form(body: impl Into<Body>) -> Request {
        Request::post("/predict")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body.into())
            .expect("request")
    }

    async fn send(app: axum::Router, request: Request) -> (StatusCode, HeaderMap, Bytes) {
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, headers, body)
    }

    async fn send_json(app: axum::Router, request: Request) -> (StatusCode, Value) {
        let (status, headers, body) = send(app, request).await;
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        (status, serde_json::from_slice(&body).expect("json body"))
    }

    fn every_byte() -> Vec<u8> {
        // All byte values, CRLFs and the start of a delimiter (a whole one cannot occur
        // in a part: RFC 2046 has the sender pick a boundary that does not).
        let mut image: Vec<u8> = (0..=255u8).collect();
        image.extend_from_slice(format!("\r\n--{}\r\n\r\n", &BOUNDARY[..20]).as_bytes());
        image.extend((0..=255u8).rev());
        image
    }

    #[tokio::test]
    async fn root_says_immich_ml() {
        let fake = FakePredict::ok();
        let request = Request::get("/").body(Body::empty()).expect("request");
        let (status, body) = send_json(app(&fake), request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "message": "Immich ML" }));
    }

    #[tokio::test]
    async fn ping_pongs_only_when_ready() {
        let fake = FakePredict::ok();
        let request = Request::get("/ping").body(Body::empty()).expect("request");
        let (status, headers, body) = send(app(&fake), request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(&body[..], b"pong");

        let not_ready = Arc::new(FakePredict {
            ready: false,
            answer: Ok(Value::Null),
            calls: Mutex::new(Vec::new()),
        });
        let request = Request::get("/ping").body(Body::empty()).expect("request");
        let (status, headers, body) = send(app(&not_ready), request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert!(!body.is_empty());
    }

    #[tokio::test]
    async fn an_undici_form_reaches_predict_unchanged() {
        let image = every_byte();
        // Byte for byte what Node's FormData sends for Immich's CLIP image request.
        let mut body = format!(
            "------formdata-undici-0123456789\r\n\
             Content-Disposition: form-data; name=\"entries\"\r\n\
             \r\n\
             {CLIP_VISUAL}\r\n\
             ------formdata-undici-0123456789\r\n\
             Content-Disposition: form-data; name=\"image\"; filename=\"blob\"\r\n\
             Content-Type: application/octet-stream\r\n\
             \r\n"
        )
        .into_bytes();
        body.extend_from_slice(&image);
        body.extend_from_slice(b"\r\n------formdata-undici-0123456789--\r\n");
        assert_eq!(
            body,
            undici(&[
                Part::Field("entries", CLIP_VISUAL.as_bytes()),
                Part::File("image", &image)
            ])
        );

        let fake = FakePredict::ok();
        let (status, answer) = send_json(app(&fake), post_form(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            answer,
            json!({ "clip": "[0.5,-0.25]", "imageHeight": 2, "imageWidth": 3 })
        );
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, CLIP_VISUAL);
        match &calls[0].1 {
            Payload::Image(bytes) => assert_eq!(&bytes[..], &image[..]),
            other => panic!("expected an image, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_text_form_reaches_predict_unchanged() {
        let entries = r#"{"clip":{"textual":{"modelName":"nllb-clip-base-siglip__v1","options":{"language":"de-DE"}}}}"#;
        let text = "ein Hund am Strand, \"nass\" — 🐕";
        let body = undici(&[
            Part::Field("entries", entries.as_bytes()),
            Part::Field("text", text.as_bytes()),
        ]);
        let fake = FakePredict::answering(Ok(json!({ "clip": "[1.0]" })));
        let (status, answer) = send_json(app(&fake), post_form(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, json!({ "clip": "[1.0]" }));
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, entries);
        match &calls[0].1 {
            Payload::Text(got) => assert_eq!(got, text),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn field_order_does_not_matter_and_unknown_fields_are_ignored() {
        let body = undici(&[
            Part::Field("unknown", b"x"),
            Part::File("image", b"jpeg"),
            Part::File("attachment", &[0u8; 4096]),
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
        ]);
        let fake = FakePredict::ok();
        let (status, _) = send_json(app(&fake), post_form(body)).await;
        assert_eq!(status, StatusCode::OK);
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, CLIP_VISUAL);
        assert!(matches!(&calls[0].1, Payload::Image(bytes) if &bytes[..] == b"jpeg"));
    }

    #[tokio::test]
    async fn an_image_wins_over_text_as_in_immich() {
        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::Field("text", b"a dog"),
            Part::File("image", b"jpeg"),
        ]);
        let fake = FakePredict::ok();
        let (status, _) = send_json(app(&fake), post_form(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(matches!(&fake.calls()[0].1, Payload::Image(bytes) if &bytes[..] == b"jpeg"));
    }

    #[tokio::test]
    async fn entries_that_are_not_json_are_refused_as_immich_does() {
        for entries in [&b"{\"clip\":"[..], b"not json", b" ", b"{}{}", b"\xff\xfe"] {
            let body = undici(&[
                Part::Field("entries", entries),
                Part::File("image", b"jpeg"),
            ]);
            let fake = FakePredict::ok();
            let (status, answer) = send_json(app(&fake), post_form(body)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{entries:?}");
            assert_eq!(answer, json!({ "detail": "Invalid request format." }));
            assert!(fake.calls().is_empty());
        }
    }

    #[tokio::test]
    async fn missing_or_empty_entries_is_fastapis_validation_error() {
        let expected = json!({ "detail": [{
            "type": "missing", "loc": ["body", "entries"], "msg": "Field required", "input": null,
        }] });
        let missing = undici(&[Part::File("image", b"jpeg")]);
        let empty = undici(&[Part::Field("entries", b""), Part::File("image", b"jpeg")]);
        let nothing = undici(&[]);
        for body in [missing, empty, nothing] {
            let fake = FakePredict::ok();
            let (status, answer) = send_json(app(&fake), post_form(body)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(answer, expected);
            assert!(fake.calls().is_empty());
        }
        // Starlette reads a body that is no form as an empty one.
        let fake = FakePredict::ok();
        let request = Request::post("/predict")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(CLIP_VISUAL))
            .expect("request");
        let (status, answer) = send_json(app(&fake), request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer, expected);
    }

    #[tokio::test]
    async fn neither_image_nor_text_is_a_bad_request() {
        let plain = undici(&[Part::Field("entries", CLIP_VISUAL.as_bytes())]);
        // An empty plain field counts as absent, as FastAPI's Form() has it.
        let empty_text = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::Field("text", b""),
        ]);
        for body in [plain, empty_text] {
            let fake = FakePredict::ok();
            let (status, answer) = send_json(app(&fake), post_form(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(
                answer,
                json!({ "detail": "Either image or text must be provided" })
            );
            assert!(fake.calls().is_empty());
        }
    }

    #[tokio::test]
    async fn an_empty_image_file_still_reaches_predict() {
        // FastAPI hands Immich b"" for it (which then fails to decode): the pipeline says.
        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::File("image", b""),
        ]);
        let fake = FakePredict::answering(Err(PredictError::BadInput("not an image".into())));
        let (status, _) = send_json(app(&fake), post_form(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(matches!(&fake.calls()[0].1, Payload::Image(bytes) if bytes.is_empty()));
    }

    #[tokio::test]
    async fn each_predict_error_has_its_status_and_detail() {
        let cases = [
            (
                PredictError::InvalidEntries("no such task".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                PredictError::BadInput("cannot decode image".into()),
                StatusCode::BAD_REQUEST,
            ),
            (
                PredictError::Failed("Failed to load model 'x'".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                PredictError::Unavailable("no node up".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, expected) in cases {
            let message = error.to_string();
            let fake = FakePredict::answering(Err(error));
            let body = undici(&[
                Part::Field("entries", CLIP_TEXTUAL.as_bytes()),
                Part::Field("text", b"a cat"),
            ]);
            let (status, answer) = send_json(app(&fake), post_form(body)).await;
            assert_eq!(status, expected);
            assert_eq!(answer, json!({ "detail": message }));
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413() {
        let limit = 64 * 1024;
        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::File("image", &vec![7u8; limit]),
        ]);
        // Said up front by Content-Length.
        let fake = FakePredict::ok();
        let front = router(fake.clone(), &ImmichHttpConfig { body_limit: limit });
        let (status, answer) = send_json(front.clone(), post_form(body.clone())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(answer["detail"].is_string());
        // Found out while streaming (chunked: no Content-Length).
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(1000)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        let streamed = Body::from_stream(futures::stream::iter(chunks));
        let (status, answer) = send_json(front.clone(), post_form(streamed)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(answer["detail"].is_string());
        assert!(fake.calls().is_empty());
        // Just under the limit passes.
        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::File("image", &vec![7u8; limit - 400]),
        ]);
        assert!(body.len() <= limit);
        let (status, _) = send_json(front, post_form(body)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_plain_part_over_starlettes_1_mib_is_refused_but_a_file_is_not() {
        let big = vec![b'a'; MAX_PART_SIZE + 1];
        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::Field("text", &big),
        ]);
        let fake = FakePredict::ok();
        let (status, answer) = send_json(app(&fake), post_form(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer,
            json!({ "detail": "Part exceeded maximum size of 1024KB." })
        );

        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::File("image", &big),
        ]);
        let (status, _) = send_json(app(&fake), post_form(body)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn duplicated_fields_are_refused() {
        let twice = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::Field("entries", CLIP_TEXTUAL.as_bytes()),
            Part::File("image", b"jpeg"),
        ]);
        let fake = FakePredict::ok();
        let (status, answer) = send_json(app(&fake), post_form(twice)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer, json!({ "detail": "Invalid request format." }));

        let two_images = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::File("image", b"one"),
            Part::File("image", b"two"),
        ]);
        let (status, _) = send_json(app(&fake), post_form(two_images)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn too_many_fields_are_refused_as_starlette_does() {
        let mut parts = vec![Part::Field("entries", CLIP_VISUAL.as_bytes())];
        parts.extend((0..MAX_FIELDS).map(|_| Part::Field("x", b"1")));
        parts.push(Part::File("image", b"jpeg"));
        let fake = FakePredict::ok();
        let (status, answer) = send_json(app(&fake), post_form(undici(&parts))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer,
            json!({ "detail": "Too many fields. Maximum number of fields is 1000." })
        );
    }

    #[tokio::test]
    async fn a_garbled_body_is_a_bad_request() {
        let fake = FakePredict::ok();
        let (status, answer) =
            send_json(app(&fake), post_form("garbage, no boundary in sight")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer,
            json!({ "detail": "There was an error parsing the body" })
        );

        let request = Request::post("/predict")
            .header(header::CONTENT_TYPE, "multipart/form-data")
            .body(Body::from("x"))
            .expect("runtime");
        let (status, _) = send_json(app(&fake), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let request = Request::post("/predict")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("entries=%7B%7D&text=a"))
            .expect("request");
        let (status, _) = send_json(app(&fake), request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn every_truncation_of_a_form_is_answered_without_panic() {
        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::File("image", b"jpeg"),
        ]);
        let fake = FakePredict::ok();
        let front = app(&fake);
        for cut in 0..body.len() {
            let (status, _) = send_json(front.clone(), post_form(body[..cut].to_vec())).await;
            assert!(
                status == StatusCode::BAD_REQUEST
                    || status == StatusCode::UNPROCESSABLE_ENTITY
                    // Cut inside the closing boundary's trailing "--\r\n": the parts are whole.
                    || (status == StatusCode::OK && cut + 4 >= body.len()),
                "cut at {cut}: {status}"
            );
        }
    }

    #[test]
    fn arbitrary_bodies_are_answered_without_panic() {
        use proptest::prelude::*;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("request");
        let fake = FakePredict::ok();
        let front = app(&fake);
        let config = ProptestConfig::with_cases(256);
        proptest!(config, |(prefix in proptest::collection::vec(any::<u8>(), 0..64),
                            noise in proptest::collection::vec(any::<u8>(), 0..512))| {
            // Noise after a plausible start, to reach past the first boundary.
            let mut body = format!("--{BOUNDARY}\r\n").into_bytes();
            body.extend_from_slice(&prefix);
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(&noise);
            let (status, _, _) = runtime.block_on(send(front.clone(), post_form(body)));
            prop_assert!(status.is_client_error() || status == StatusCode::OK, "{}", status);
        });
    }

    #[tokio::test]
    async fn wrong_methods_and_paths_answer_as_fastapi() {
        let fake = FakePredict::ok();
        let request = Request::get("/predict")
            .body(Body::empty())
            .expect("request");
        let (status, headers, body) = send(app(&fake), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "POST");
        let body: Value = serde_json::from_slice(&body).expect("json body");
        assert_eq!(body, json!({ "detail": "Method Not Allowed" }));

        let request = Request::post("/ping").body(Body::empty()).expect("request");
        let (status, _) = send_json(app(&fake), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

        let request = Request::get("/nowhere")
            .body(Body::empty())
            .expect("request");
        let (status, body) = send_json(app(&fake), request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({ "detail": "Not Found" }));
    }

    #[tokio::test]
    async fn serves_an_undici_request_over_tcp_until_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let fake = FakePredict::ok();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app(&fake), async {
            let _ = stopped.await;
        }));

        let body = undici(&[
            Part::Field("entries", CLIP_VISUAL.as_bytes()),
            Part::File("image", &every_byte()),
        ]);
        // The head Node's fetch sends (undici, HTTP/1.1).
        let head = format!(
            "POST /predict HTTP/1.1\r\n\
             host: {address}\r\n\
             connection: keep-alive\r\n\
             content-type: multipart/form-data; boundary={BOUNDARY}\r\n\
             accept: */*\r\n\
             accept-language: *\r\n\
             sec-fetch-mode: cors\r\n\
             user-agent: node\r\n\
             accept-encoding: gzip, deflate\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        stream.write_all(&body).await.expect("write");
        stream
            .write_all(
                format!("GET /ping HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.expect("read");
        let reply = String::from_utf8(reply).expect("utf-8");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply.contains("content-type: application/json\r\n"),
            "{reply}"
        );
        assert!(reply.contains(r#"{"clip":"[0.5,-0.25]","imageHeight":2,"imageWidth":3}"#));
        assert!(reply.ends_with("\r\n\r\npong"), "{reply}");
        assert_eq!(fake.calls().len(), 1);

        stop.send(()).expect("server running");
        server.await.expect("joined").expect("served");
    }
}
