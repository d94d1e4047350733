//! The HTTP side: routes, request parsing with limits checked before work, JSON errors,
//! metrics, and the graceful drain on SIGTERM / ctrl-c.

use super::batcher::{Job, Refused, Reply, Task};
use super::{AppState, Served};
use crate::error::{Error, Result};
use crate::model::encoder::normalize_unit;
use crate::model::softmax;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::oneshot;

/// A JSON error answer: `{"error": message, "error_type": kind}` with its status.
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }
    fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", message)
    }
    fn backend(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "backend", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "error_type": self.kind});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Binds, reports the address, serves until a signal, then drains.
pub(crate) async fn run(state: Arc<AppState>, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let io = |e: std::io::Error| Error::Invalid {
        op: super::OP,
        arg: "listen address",
        detail: format!("{}:{}: {e}", state.config.host, state.config.port),
    };
    let listener = tokio::net::TcpListener::bind((state.config.host.as_str(), state.config.port))
        .await
        .map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    let app = Router::new()
        .route("/embed", post(embed))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/tokenize", post(tokenize))
        .route("/predict", post(predict))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state.clone());
    on_listen(local);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal(state.clone()))
        .await
        .map_err(io)
}

/// Resolves on SIGTERM or ctrl-c and marks the server draining (/health answers 503, new
/// requests on open connections too); axum then stops accepting and waits for the rest.
async fn shutdown_signal(state: Arc<AppState>) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    state.draining.store(true, Ordering::SeqCst);
}

/// Counts each answer by route and status, with its latency.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe_request(
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// `"inputs"`: one text or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    fn into_vec(self) -> (Vec<String>, bool) {
        match self {
            Inputs::One(s) => (vec![s], false),
            Inputs::Many(v) => (v, true),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default = "yes")]
    truncate: bool,
    /// Which model (medkern's addition; default: the first).
    model: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiRequest {
    input: Inputs,
    model: Option<String>,
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
struct TextsRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    truncate: bool,
    model: Option<String>,
}

/// The body as JSON: refused unread past `max_request_bytes` (413), 422 when it does not
/// parse into `T`.
async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<T> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let limit = state.config.max_request_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::too_large(format!(
            "request body is larger than max_request_bytes ({limit} bytes)"
        ))
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("request JSON: {e}")))
}

fn find_model<'a>(state: &'a AppState, name: Option<&str>) -> ApiResult<&'a Served> {
    state.model(name).ok_or_else(|| {
        let known: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model {name:?} is not served; expected one of {known:?}"),
        )
    })
}

/// Checks the texts and tokenises them off the async threads; returns the ids and their
/// total token count, refusing a request that alone exceeds a batch (413).
async fn tokenize_texts(
    state: &Arc<AppState>,
    model: &Served,
    texts: Vec<String>,
    truncate: bool,
) -> ApiResult<(Vec<Vec<u32>>, usize)> {
    let c = &state.config;
    if texts.is_empty() {
        return Err(ApiError::invalid(
            "inputs is empty; expected at least one text",
        ));
    }
    if texts.len() > c.max_inputs {
        return Err(ApiError::too_large(format!(
            "{} inputs; expected at most {} (max_inputs)",
            texts.len(),
            c.max_inputs
        )));
    }
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(ApiError::invalid(format!(
            "input {i} is empty; expected a non-empty text"
        )));
    }
    let st = state.clone();
    let name = model.name.clone();
    let work = move || -> ApiResult<(Vec<Vec<u32>>, usize)> {
        let m = find_model(&st, Some(name.as_str()))?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids = m
            .encoder
            .encode(&refs)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let max_len = m.encoder.max_len();
        if !truncate {
            for (i, seq) in ids.iter().enumerate() {
                // At exactly max_len the text may have been cut: tokenise one token further.
                if seq.len() >= max_len {
                    let long = m
                        .probe
                        .encode(&refs[i..=i])
                        .map_err(|e| ApiError::invalid(e.to_string()))?;
                    if long.first().is_some_and(|s| s.len() > max_len) {
                        return Err(ApiError::too_large(format!(
                            "input {i} has more than {max_len} tokens (the model's max_len) \
                             and truncate is false"
                        )));
                    }
                }
            }
        }
        let tokens: usize = ids.iter().map(Vec::len).sum();
        if tokens > st.config.max_batch_tokens {
            return Err(ApiError::too_large(format!(
                "{tokens} tokens; expected at most {} (max_batch_tokens)",
                st.config.max_batch_tokens
            )));
        }
        Ok((ids, tokens))
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::backend(format!("tokenizer task: {e}")))?
}

/// Queues the ids on the model's batcher and waits for its rows.
async fn infer(
    model: &Served,
    task: Task,
    ids: Vec<Vec<u32>>,
    tokens: usize,
) -> ApiResult<Vec<Vec<f32>>> {
    let (tx, rx) = oneshot::channel::<Reply>();
    model
        .batcher
        .submit(Job {
            task,
            ids,
            tokens,
            reply: tx,
        })
        .map_err(|r| match r {
            Refused::Full => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!("the queue of model {:?} is full; retry later", model.name),
            ),
            Refused::Stopped => ApiError::unavailable("the model has stopped"),
        })?;
    match rx.await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(msg)) => Err(ApiError::backend(msg)),
        Err(_) => Err(ApiError::backend("the model thread dropped the request")),
    }
}

/// TEI `POST /embed`: `{"inputs", "normalize" (true), "truncate" (true)}` → `[[f32]]`.
async fn embed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: EmbedRequest = read_json(&state, &headers, body).await?;
    let model = find_model(&state, req.model.as_deref())?;
    let (texts, _) = req.inputs.into_vec();
    let (ids, tokens) = tokenize_texts(&state, model, texts, req.truncate).await?;
    let mut rows = infer(model, Task::Embed, ids, tokens).await?;
    if req.normalize {
        rows.iter_mut().for_each(|v| normalize_unit(v));
    }
    Ok(axum::Json(rows).into_response())
}

/// OpenAI `POST /v1/embeddings`: unit-length vectors, as floats or base64 of little-endian
/// f32, with the token usage.
async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: OpenAiRequest = read_json(&state, &headers, body).await?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format {other:?}; expected \"float\" or \"base64\""
            )));
        }
    };
    let model = find_model(&state, req.model.as_deref())?;
    let (texts, _) = req.input.into_vec();
    let (ids, tokens) = tokenize_texts(&state, model, texts, true).await?;
    let mut rows = infer(model, Task::Embed, ids, tokens).await?;
    let data: Vec<Value> = rows
        .iter_mut()
        .enumerate()
        .map(|(index, v)| {
            normalize_unit(v);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

/// `POST /tokenize`: `[{"ids": [...], "count": n}]` per input, special tokens included
/// (TEI answers token objects with offsets; medkern gives the ids the model runs on).
async fn tokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: TextsRequest = read_json(&state, &headers, body).await?;
    let model = find_model(&state, req.model.as_deref())?;
    let (texts, _) = req.inputs.into_vec();
    let (ids, _) = tokenize_texts(&state, model, texts, req.truncate).await?;
    let out: Vec<Value> = ids
        .iter()
        .map(|s| json!({"ids": s, "count": s.len()}))
        .collect();
    Ok(axum::Json(out).into_response())
}

/// `POST /predict`: the classification head's `[{"label", "score"}]` per input, best first
/// (scores are softmax probabilities); one list for one text, a list of lists for a list.
async fn predict(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: TextsRequest = read_json(&state, &headers, body).await?;
    let model = find_model(&state, req.model.as_deref())?;
    if !model.encoder.model.has_classifier() {
        return Err(ApiError::invalid(format!(
            "model {:?} has no sequence-classification head; expected a checkpoint with one \
             (use /embed for embeddings)",
            model.name
        )));
    }
    let (texts, many) = req.inputs.into_vec();
    let (ids, tokens) = tokenize_texts(&state, model, texts, req.truncate).await?;
    let logits = infer(model, Task::Classify, ids, tokens).await?;
    let labels = model.encoder.model.labels();
    let per_input: Vec<Value> = logits
        .iter()
        .map(|l| {
            let p = softmax(l);
            let mut scored: Vec<(usize, f32)> = p.into_iter().enumerate().collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            let v: Vec<Value> = scored
                .into_iter()
                .map(|(j, s)| {
                    let label = labels
                        .get(j)
                        .cloned()
                        .unwrap_or_else(|| format!("LABEL_{j}"));
                    json!({"label": label, "score": s})
                })
                .collect();
            Value::Array(v)
        })
        .collect();
    let out = if many {
        Value::Array(per_input)
    } else {
        per_input.into_iter().next().unwrap_or(Value::Null)
    };
    Ok(axum::Json(out).into_response())
}

/// `GET /health`: 200 while serving (models are loaded before the port opens), 503 while
/// draining.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        ApiError::unavailable("the server is shutting down").into_response()
    } else {
        axum::Json(json!({"status": "ok"})).into_response()
    }
}

/// `GET /info`: the models, the device, the limits and the version.
async fn info(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.config;
    let models: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "dir": m.encoder.dir().display().to_string(),
                "dim": m.dim,
                "max_len": m.encoder.max_len(),
                "pooling": format!("{:?}", m.encoder.pooling).to_lowercase(),
                "has_classifier": m.encoder.model.has_classifier(),
                "labels": m.encoder.model.labels(),
            })
        })
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "device": state.device,
        "models": models,
        "limits": {
            "max_batch_tokens": c.max_batch_tokens,
            "max_batch_requests": c.max_batch_requests,
            "max_wait_us": c.max_wait.as_micros() as u64,
            "max_queue": c.max_queue,
            "max_request_bytes": c.max_request_bytes,
            "max_inputs": c.max_inputs,
        },
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let queues: Vec<(String, usize)> = state
        .models
        .iter()
        .map(|m| (m.name.clone(), m.batcher.depth()))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&queues),
    )
        .into_response()
}
