//! The HTTP side: routes, request parsing with limits checked before work, JSON errors,
//! metrics, and the graceful drain on SIGTERM / ctrl-c.

use super::batcher::{Job, Refused, Reply, Task};
use super::images::{ImageJob, ImageNet, ImageReply, ImageWork};
use super::{AppState, Served, ServedImage};
use crate::error::{Error, Result};
use crate::model::encoder::normalize_unit;
use crate::model::softmax;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
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
        .route("/rerank", post(rerank))
        .route("/classify", post(classify))
        .route("/exam", post(exam))
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

/// Counts each answer by route and status, with its latency, and bounds its time: past
/// `request_timeout` the handler is dropped (its queued work with it: a model thread skips a
/// job whose client has gone) and the client gets a 503 saying so.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let limit = state.config.request_timeout;
    let resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than request_timeout ({} ms); retry later",
                limit.as_millis()
            ),
        )
        .into_response(),
    };
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

/// `/predict`'s `"inputs"`, read as TEI reads them: a string, or a list of one or two strings
/// (a text, a pair), is one input; a list of such lists is a batch. medkern also takes a flat
/// list of three or more strings as a batch of texts.
#[derive(Deserialize)]
#[serde(untagged)]
enum PredictInputs {
    One(String),
    Flat(Vec<String>),
    Nested(Vec<Vec<String>>),
}

impl PredictInputs {
    /// The inputs, and whether the answer is a list of lists (a batch).
    fn into_seqs(self) -> ApiResult<(Vec<Seq>, bool)> {
        let seq = |i: usize, mut v: Vec<String>| match v.len() {
            1 => Ok(Seq::One(v.remove(0))),
            2 => {
                let b = v.remove(1);
                Ok(Seq::Pair(v.remove(0), b))
            }
            n => Err(ApiError::invalid(format!(
                "inputs[{i}] has {n} strings; expected a text [a] or a pair [a, b]"
            ))),
        };
        match self {
            PredictInputs::One(t) => Ok((vec![Seq::One(t)], false)),
            PredictInputs::Flat(v) if v.len() <= 2 => {
                if v.is_empty() {
                    return Err(ApiError::invalid(
                        "inputs is empty; expected at least one text",
                    ));
                }
                Ok((vec![seq(0, v)?], false))
            }
            PredictInputs::Flat(v) => Ok((v.into_iter().map(Seq::One).collect(), true)),
            PredictInputs::Nested(v) => Ok((
                v.into_iter()
                    .enumerate()
                    .map(|(i, s)| seq(i, s))
                    .collect::<ApiResult<_>>()?,
                true,
            )),
        }
    }
}

#[derive(Deserialize)]
struct PredictRequest {
    inputs: PredictInputs,
    #[serde(default = "yes")]
    truncate: bool,
    /// Logits instead of softmax probabilities (TEI's `raw_scores`).
    #[serde(default)]
    raw_scores: bool,
    model: Option<String>,
}

/// TEI's `/rerank` request.
#[derive(Deserialize)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default = "yes")]
    truncate: bool,
    /// The logit instead of its sigmoid.
    #[serde(default)]
    raw_scores: bool,
    /// Echo each text in its answer.
    #[serde(default)]
    return_text: bool,
    model: Option<String>,
}

/// The body as JSON: refused unread past `max_request_bytes` (413), 422 when it does not
/// parse into `T`.
async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<T> {
    let bytes = read_body(
        state,
        headers,
        body,
        state.config.max_request_bytes,
        "max_request_bytes",
    )
    .await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("request JSON: {e}")))
}

/// The body's bytes: 503 while draining, refused unread when its declared length passes
/// `limit` (413), and cut off with a 413 when it streams past it.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    limit_name: &str,
) -> ApiResult<axum::body::Bytes> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::too_large(format!(
            "request body is larger than {limit_name} ({limit} bytes)"
        ))
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // The length limit is an error in the chain with this text (http-body-util's
        // LengthLimitError); anything else is a body that could not be read.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.to_string().contains("length limit exceeded") {
                return too_large();
            }
            source = err.source();
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the request body could not be read: {e}"),
        )
    })
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

/// Refuses an empty request (422), one over `max_inputs` (413) and an empty text (422).
fn check_count(state: &AppState, n: usize, empty: Option<usize>) -> ApiResult<()> {
    let max = state.config.max_inputs;
    if n == 0 {
        return Err(ApiError::invalid(
            "inputs is empty; expected at least one text",
        ));
    }
    if n > max {
        return Err(ApiError::too_large(format!(
            "{n} inputs; expected at most {max} (max_inputs)"
        )));
    }
    if let Some(i) = empty {
        return Err(ApiError::invalid(format!(
            "input {i} is empty; expected a non-empty text"
        )));
    }
    Ok(())
}

/// One input of `/predict` and `/rerank`: a text, or a sentence pair.
enum Seq {
    One(String),
    Pair(String, String),
}

/// Checks the texts and tokenises them off the async threads; returns the ids and their
/// total token count, refusing a request that alone exceeds a batch (413).
async fn tokenize_texts(
    state: &Arc<AppState>,
    model: &Served,
    texts: Vec<String>,
    truncate: bool,
) -> ApiResult<(Vec<Vec<u32>>, usize)> {
    let seqs = texts.into_iter().map(Seq::One).collect();
    let (ids, _, tokens) = tokenize_seqs(state, model, seqs, truncate).await?;
    Ok((ids, tokens))
}

/// Token ids, type ids (when there is a pair) and the token count of a request.
type Tokenized = (Vec<Vec<u32>>, Option<Vec<Vec<u32>>>, usize);

/// [`tokenize_texts`] for texts and pairs: also the type ids when there is a pair.
async fn tokenize_seqs(
    state: &Arc<AppState>,
    model: &Served,
    seqs: Vec<Seq>,
    truncate: bool,
) -> ApiResult<Tokenized> {
    let empty = seqs.iter().position(|s| match s {
        Seq::One(t) => t.is_empty(),
        Seq::Pair(a, b) => a.is_empty() || b.is_empty(),
    });
    check_count(state, seqs.len(), empty)?;
    let st = state.clone();
    let name = model.name.clone();
    let work = move || -> ApiResult<Tokenized> {
        let m = find_model(&st, Some(name.as_str()))?;
        let bad = |e: Error| ApiError::invalid(e.to_string());
        let max_len = m.encoder.max_len();
        let mut ids = Vec::with_capacity(seqs.len());
        let mut types = Vec::with_capacity(seqs.len());
        let mut paired = false;
        for (i, s) in seqs.iter().enumerate() {
            // At exactly max_len the input may have been cut: tokenise one token further
            // (the probe keeps max_len + 1) to tell.
            let (seq, typ, cut) = match s {
                Seq::One(t) => {
                    let seq = m.encoder.encode(&[t.as_str()]).map_err(bad)?.remove(0);
                    let cut = !truncate
                        && seq.len() >= max_len
                        && m.probe
                            .encode(&[t.as_str()])
                            .map_err(bad)?
                            .first()
                            .is_some_and(|l| l.len() > max_len);
                    let typ = vec![0; seq.len()];
                    (seq, typ, cut)
                }
                Seq::Pair(a, b) => {
                    paired = true;
                    let pair = [(a.as_str(), b.as_str())];
                    let (mut seq, mut typ) = m.encoder.encode_pairs(&pair).map_err(bad)?;
                    let cut = !truncate
                        && seq[0].len() >= max_len
                        && m.probe
                            .encode_pairs(&pair)
                            .map_err(bad)?
                            .0
                            .first()
                            .is_some_and(|l| l.len() > max_len);
                    (seq.remove(0), typ.remove(0), cut)
                }
            };
            if cut {
                return Err(ApiError::too_large(format!(
                    "input {i} has more than {max_len} tokens (the model's max_len) and \
                     truncate is false"
                )));
            }
            ids.push(seq);
            types.push(typ);
        }
        let tokens: usize = ids.iter().map(Vec::len).sum();
        if tokens > st.config.max_batch_tokens {
            return Err(ApiError::too_large(format!(
                "{tokens} tokens; expected at most {} (max_batch_tokens)",
                st.config.max_batch_tokens
            )));
        }
        Ok((ids, paired.then_some(types), tokens))
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::backend(format!("tokenizer task: {e}")))?
}

/// The answer to a job its queue refused: 429 when full, 503 when the model has stopped.
fn refused(r: Refused, model: &str) -> ApiError {
    match r {
        Refused::Full => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            format!("the queue of model {model:?} is full; retry later"),
        ),
        Refused::Stopped => ApiError::unavailable("the model has stopped"),
    }
}

/// Queues the ids on the model's batcher and waits for its rows.
async fn infer(
    model: &Served,
    task: Task,
    ids: Vec<Vec<u32>>,
    type_ids: Option<Vec<Vec<u32>>>,
    tokens: usize,
) -> ApiResult<Vec<Vec<f32>>> {
    let (tx, rx) = oneshot::channel::<Reply>();
    model
        .batcher
        .submit(Job {
            task,
            ids,
            type_ids,
            tokens,
            reply: tx,
        })
        .map_err(|r| refused(r, &model.name))?;
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
    let mut rows = infer(model, Task::Embed, ids, None, tokens).await?;
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
    let mut rows = infer(model, Task::Embed, ids, None, tokens).await?;
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

/// The served model's classification head, or a 422 naming what it lacks.
fn with_head<'a>(state: &'a AppState, name: Option<&str>) -> ApiResult<&'a Served> {
    let model = find_model(state, name)?;
    if !model.encoder.model.has_classifier() {
        return Err(ApiError::invalid(format!(
            "model {:?} has no sequence-classification head; expected a checkpoint with one \
             (use /embed for embeddings)",
            model.name
        )));
    }
    Ok(model)
}

/// `POST /predict`: the classification head's `[{"label", "score"}]` per input, best first
/// (softmax probabilities, the sigmoid of a one-output head, or the logits with
/// `raw_scores`); an input is a text or a
/// sentence pair. One list for one input, a list of lists for a batch.
async fn predict(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: PredictRequest = read_json(&state, &headers, body).await?;
    let model = with_head(&state, req.model.as_deref())?;
    let (seqs, many) = req.inputs.into_seqs()?;
    let (ids, types, tokens) = tokenize_seqs(&state, model, seqs, req.truncate).await?;
    let logits = infer(model, Task::Classify, ids, types, tokens).await?;
    let labels = model.encoder.model.labels();
    let per_input: Vec<Value> = logits
        .iter()
        .map(|l| {
            // One output (a regression or relevance head): its sigmoid, as Hugging Face's
            // text-classification pipeline gives it; several: the softmax.
            let p = match l.as_slice() {
                _ if req.raw_scores => l.clone(),
                [x] => vec![(1.0 / (1.0 + (-f64::from(*x)).exp())) as f32],
                _ => softmax(l),
            };
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

/// TEI `POST /rerank`: scores each of `texts` against `query` with a cross-encoder (a head
/// with one output, reading the pair `[CLS] query [SEP] text [SEP]`) and answers
/// `[{"index", "score", "text"?}]`, best first; the score is the sigmoid of the logit, or the
/// logit with `raw_scores`.
async fn rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req: RerankRequest = read_json(&state, &headers, body).await?;
    let model = with_head(&state, req.model.as_deref())?;
    // Checked before the query is paired with each text: the pairs' bytes are bounded.
    check_count(
        &state,
        req.texts.len(),
        req.texts.iter().position(String::is_empty),
    )?;
    let pair_bytes = req.query.len().saturating_mul(req.texts.len());
    let max_pair_bytes = state.config.max_request_bytes.saturating_mul(16);
    if pair_bytes > max_pair_bytes {
        return Err(ApiError::too_large(format!(
            "the query ({} bytes) paired with {} texts makes {pair_bytes} bytes to tokenise; \
             expected at most {max_pair_bytes} (16 x max_request_bytes)",
            req.query.len(),
            req.texts.len()
        )));
    }
    let outputs = model.encoder.model.labels().len();
    if outputs != 1 {
        return Err(ApiError::invalid(format!(
            "model {:?} has {outputs} outputs; /rerank expects a cross-encoder with one \
             (use /predict for classifiers)",
            model.name
        )));
    }
    let seqs = req
        .texts
        .iter()
        .map(|t| Seq::Pair(req.query.clone(), t.clone()))
        .collect();
    let (ids, types, tokens) = tokenize_seqs(&state, model, seqs, req.truncate).await?;
    let logits = infer(model, Task::Classify, ids, types, tokens).await?;
    let mut ranks: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let x = l.first().copied().unwrap_or(f32::NAN);
            let s = if req.raw_scores {
                x
            } else {
                (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
            };
            (i, s)
        })
        .collect();
    ranks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let out: Vec<Value> = ranks
        .into_iter()
        .map(|(i, score)| {
            let mut v = json!({"index": i, "score": score});
            if req.return_text {
                v["text"] = json!(req.texts[i]);
            }
            v
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

/// `/classify` query parameters.
#[derive(Deserialize)]
struct ClassifyQuery {
    /// Which image model (default: the first).
    model: Option<String>,
    /// Classes listed (lite0; default 5).
    top: Option<usize>,
    /// Also answer the pooled feature vector.
    #[serde(default)]
    features: bool,
}

/// The image model called `name` (or the first) among those `fits`: classifiers for
/// `/classify`, EXAM models for `/exam`.
fn find_image_model<'a>(
    state: &'a AppState,
    name: Option<&str>,
    fits: fn(&ImageNet) -> bool,
) -> ApiResult<&'a ServedImage> {
    let mut those = state.images.iter().filter(|m| fits(&m.model));
    let found = match name {
        None => those.next(),
        Some(n) => those.find(|m| m.name == n),
    };
    found.ok_or_else(|| {
        let known: Vec<&str> = state
            .images
            .iter()
            .filter(|m| fits(&m.model))
            .map(|m| m.name.as_str())
            .collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("image model {name:?} is not served for this route; expected one of {known:?}"),
        )
    })
}

fn is_classifier(m: &ImageNet) -> bool {
    matches!(m, ImageNet::Classifier(_))
}

fn is_exam(m: &ImageNet) -> bool {
    matches!(m, ImageNet::Exam { .. })
}

/// The body of an image route, under `max_image_bytes`, with one of the `max_image_queue`
/// places for an upload being read, decoded, queued or run (across the image routes); the
/// place is held until the answer. More at once get a 429 before their body is read, so
/// uploads in memory stay bounded.
async fn read_upload(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(tokio::sync::OwnedSemaphorePermit, axum::body::Bytes)> {
    let slot = state.image_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            format!(
                "{} image requests are in progress (max_image_queue); retry later",
                state.config.max_image_queue
            ),
        )
    })?;
    let limit = state.config.max_image_bytes;
    let bytes = read_body(state, headers, body, limit, "max_image_bytes").await?;
    Ok((slot, bytes))
}

/// Decodes an uploaded PNG, JPEG or DICOM off the async threads, under the input limits with
/// `max_image_bytes` as the file limit (422 naming what is wrong).
async fn decode_upload(
    state: &AppState,
    bytes: axum::body::Bytes,
) -> ApiResult<crate::input::RawImage> {
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            "an empty image; expected the bytes of a PNG, JPEG or DICOM file",
        ));
    }
    let limits = crate::input::InputLimits {
        max_file_bytes: state.config.max_image_bytes as u64,
        ..state.config.input_limits
    };
    tokio::task::spawn_blocking(move || {
        crate::input::decode(&bytes, std::path::Path::new("upload"), &limits)
    })
    .await
    .map_err(|e| ApiError::backend(format!("decoder task: {e}")))?
    .map_err(|e| ApiError::invalid(e.to_string()))
}

/// Queues one decoded image on its model's thread and waits for the answer, to which the
/// model's name is added.
async fn run_image(
    served: &ServedImage,
    raw: crate::input::RawImage,
    work: ImageWork,
) -> ApiResult<Response> {
    let (tx, rx) = oneshot::channel::<ImageReply>();
    served
        .worker
        .submit(ImageJob {
            raw,
            work,
            reply: tx,
        })
        .map_err(|r| refused(r, &served.name))?;
    let mut v = match rx.await {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => return Err(ApiError::backend(msg)),
        Err(_) => return Err(ApiError::backend("the model thread dropped the request")),
    };
    v["model"] = json!(served.name);
    Ok(axum::Json(v).into_response())
}

/// `POST /classify?model=NAME&top=K&features=true`: the body is one PNG, JPEG or DICOM file
/// (any content type; the format is read from the bytes). Decoded under the input limits
/// before it is queued; the answer is the model's JSON ([`crate::model::classify`]) with the
/// model's name.
async fn classify(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<ClassifyQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // The body is read (within its limit) before the parameters are judged: a client still
    // sending when the answer comes would see a broken pipe, not the error.
    let (_slot, bytes) = read_upload(&state, &headers, body).await?;
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))?;
    let served = find_image_model(&state, q.model.as_deref(), is_classifier)?;
    let top = q.top.unwrap_or(5);
    if top == 0 || top > 1000 {
        return Err(ApiError::invalid(format!("top {top}; expected 1 to 1000")));
    }
    let raw = decode_upload(&state, bytes).await?;
    let work = ImageWork::Classify {
        top,
        features: q.features,
    };
    run_image(served, raw, work).await
}

/// `/exam`'s body.
#[derive(Deserialize)]
struct ExamRequest {
    /// The chest X-ray: a PNG, JPEG or DICOM file, base64.
    image: String,
    /// The EMR record: `{feature key: number | category | null}`.
    emr: Value,
    model: Option<String>,
}

/// `POST /exam`: `{"image": base64 PNG/JPEG/DICOM, "emr": {...}}` → the EXAM model's oxygen
/// predictions ([`crate::model::exam::ExamModel::assess`]). The JSON body counts against
/// `max_image_bytes`; the EMR record is checked (unknown keys, implausible values) before
/// the image is queued.
async fn exam(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (_slot, bytes) = read_upload(&state, &headers, body).await?;
    let req: ExamRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("request JSON: {e}")))?;
    drop(bytes);
    let served = find_image_model(&state, req.model.as_deref(), is_exam)?;
    if let ImageNet::Exam { model, .. } = served.model.as_ref() {
        model
            .head
            .config
            .emr
            .encode(&req.emr)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let image = base64::engine::general_purpose::STANDARD
        .decode(req.image.as_bytes())
        .map_err(|e| ApiError::invalid(format!("image: not base64: {e}")))?;
    let raw = decode_upload(&state, image.into()).await?;
    run_image(served, raw, ImageWork::Exam { record: req.emr }).await
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
                "workers": m.workers,
                "labels": m.encoder.model.labels(),
            })
        })
        .collect();
    let images: Vec<Value> = state
        .images
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "model": m.model.kind(),
                "description": m.model.describe(),
                "random_weights": m.model.random_weights(),
                "workers": m.workers,
            })
        })
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "device": state.device,
        "models": models,
        "image_models": images,
        "limits": {
            "max_batch_tokens": c.max_batch_tokens,
            "max_batch_requests": c.max_batch_requests,
            "max_wait_us": c.max_wait.as_micros() as u64,
            "max_queue": c.max_queue,
            "max_request_bytes": c.max_request_bytes,
            "max_inputs": c.max_inputs,
            "max_image_bytes": c.max_image_bytes,
            "max_image_queue": c.max_image_queue,
            "max_image_batch": c.max_image_batch,
            "request_timeout_ms": c.request_timeout.as_millis() as u64,
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
        .chain(
            state
                .images
                .iter()
                .map(|m| (m.name.clone(), m.worker.depth())),
        )
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&queues),
    )
        .into_response()
}
