//! `medkern serve`: an HTTP inference server for text encoders and image models, with
//! dynamic batching.
//!
//! Each model gets a bounded queue and a model thread per device ([`batcher`], [`images`]).
//! The async handlers only parse, check limits, tokenise and decode; the token count then
//! lets a model thread pack requests into one variable-length call up to `max_batch_tokens` /
//! `max_batch_requests`, waiting at most `max_wait` for company. Endpoints: TEI's `/embed`,
//! `/tokenize`, `/predict` (texts and sentence pairs), `/rerank`; OpenAI's `/v1/embeddings`;
//! `/classify` (PNG, JPEG or DICOM bytes) and `/exam` (chest X-ray + EMR) for the image
//! models; `/health`, `/info`, `/metrics`. The server keeps no state between requests, so
//! replicas scale out behind any load balancer.

pub mod batcher;
mod handlers;
pub mod images;
pub mod metrics;

use crate::error::{Error, Result};
use crate::model::bert::BertTokenizer;
use crate::model::encoder::TextEncoder;
use batcher::{BatchLimits, Batcher};
use images::{ImageBatch, ImageNet, ImageWorker};
use metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const OP: &str = "serve";

/// The server's address and limits.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks any free port (the bound one is passed to `on_listen`).
    pub port: u16,
    /// The most tokens in one model call; a request with more is refused (413).
    pub max_batch_tokens: usize,
    /// The most requests in one model call.
    pub max_batch_requests: usize,
    /// How long a batch waits for more requests after its first.
    pub max_wait: Duration,
    /// Requests queued per model before new ones get 429.
    pub max_queue: usize,
    /// The largest request body, bytes (413 beyond), checked before it is read whole.
    pub max_request_bytes: usize,
    /// The most texts in one request (and sequences in one model call).
    pub max_inputs: usize,
    /// The largest `/classify` upload, bytes (413 beyond); also the decoder's file limit.
    pub max_image_bytes: usize,
    /// Decoded images queued per image model before new ones get 429.
    pub max_image_queue: usize,
    /// The most images in one classifier call (1 turns image batching off).
    pub max_image_batch: usize,
    /// The image readers' limits for uploads (pixels, allocation, DICOM nesting); the file
    /// limit is `max_image_bytes`.
    pub input_limits: crate::input::InputLimits,
    /// How long one request may take, body read to answer; past it the client gets a 503
    /// (`"error_type": "timeout"`) and its queued work is dropped.
    pub request_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 0,
            max_batch_tokens: 16384,
            max_batch_requests: 64,
            max_wait: Duration::from_micros(2000),
            max_queue: 1024,
            max_request_bytes: 2 << 20,
            max_inputs: crate::input::DEFAULT_MAX_BATCH,
            max_image_bytes: 64 << 20,
            max_image_queue: 16,
            max_image_batch: 8,
            input_limits: crate::input::InputLimits::default(),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A loaded model as the handlers see it.
pub(crate) struct Served {
    pub name: String,
    pub encoder: Arc<TextEncoder>,
    /// Tokenises one token past `max_len`, so `"truncate": false` can tell a text that was
    /// cut from one that fits exactly.
    pub probe: BertTokenizer,
    pub batcher: Batcher,
    pub dim: usize,
    /// Model threads (one per device) sharing the queue.
    pub workers: usize,
}

/// A loaded image model as the handlers see it.
pub(crate) struct ServedImage {
    pub name: String,
    pub model: Arc<ImageNet>,
    pub worker: ImageWorker,
    /// Model threads (one per device) sharing the queue.
    pub workers: usize,
}

/// Shared by every handler.
pub(crate) struct AppState {
    pub models: Vec<Served>,
    pub images: Vec<ServedImage>,
    pub config: ServeConfig,
    pub device: String,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    /// Uploads in progress on the image routes (`max_image_queue` places).
    pub image_slots: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The model called `name`, or the first one when no name is given.
    pub fn model(&self, name: Option<&str>) -> Option<&Served> {
        match name {
            None => self.models.first(),
            Some(n) => self.models.iter().find(|m| m.name == n),
        }
    }
}

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// Checks that the limits make a working server: each is at least 1.
fn check_config(c: &ServeConfig) -> Result<()> {
    for (arg, v) in [
        ("max_batch_tokens", c.max_batch_tokens),
        ("max_batch_requests", c.max_batch_requests),
        ("max_queue", c.max_queue),
        ("max_request_bytes", c.max_request_bytes),
        ("max_inputs", c.max_inputs),
        ("max_image_bytes", c.max_image_bytes),
        ("max_image_queue", c.max_image_queue),
        ("max_image_batch", c.max_image_batch),
        (
            "request_timeout (ms)",
            c.request_timeout.as_millis() as usize,
        ),
    ] {
        if v == 0 {
            return Err(invalid(arg, "0; expected at least 1".into()));
        }
    }
    Ok(())
}

/// A model name fit for URLs and metric labels: letters, digits, `.`, `_`, `-`.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "model name",
            format!("{name:?}; expected 1 to 128 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// Serves the text `models` (name, encoder; the first is the default of the text routes) and
/// the `images` models (name, network; the first classifier is the default of `/classify`,
/// the first EXAM model that of `/exam`) until
/// SIGTERM or ctrl-c, then stops accepting, answers what was queued and returns. `on_listen`
/// gets the bound address once every text model has answered a warm-up call. Builds its own
/// tokio runtime: call it from a plain thread, not from async code.
pub fn serve(
    models: Vec<(String, Vec<TextEncoder>)>,
    images: Vec<(String, Vec<ImageNet>)>,
    device: String,
    config: ServeConfig,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<()> {
    check_config(&config)?;
    if models.is_empty() && images.is_empty() {
        return Err(invalid(
            "models",
            "none given; expected at least one text or image model".into(),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let mut served = Vec::with_capacity(models.len());
    let mut threads = Vec::with_capacity(models.len());
    for (name, replicas) in models {
        check_name(&name)?;
        if served.iter().any(|s: &Served| s.name == name) {
            return Err(invalid("model name", format!("{name:?} given twice")));
        }
        let replicas: Vec<Arc<TextEncoder>> = replicas.into_iter().map(Arc::new).collect();
        let Some(enc) = replicas.first().cloned() else {
            return Err(invalid(
                "models",
                format!("{name:?} has no replica; expected one per device"),
            ));
        };
        // A warm-up call on every replica: it checks the weights run on each device and gives
        // the embedding size for /info.
        let mut dim = 0;
        for r in &replicas {
            let warm = r.encode(&["medkern"])?;
            dim = r.model.embed(&warm, r.pooling)?.first().map_or(0, Vec::len);
        }
        let probe = BertTokenizer::load(enc.dir(), enc.max_len() + 1)?
            .with_max_batch(config.max_inputs)
            .with_max_text_bytes(config.max_request_bytes);
        let limits = BatchLimits {
            max_tokens: config.max_batch_tokens,
            max_requests: config.max_batch_requests,
            max_sequences: config.max_inputs,
            max_wait: config.max_wait,
        };
        let workers = replicas.len();
        let (batcher, handles) = batcher::start(
            name.clone(),
            replicas,
            limits,
            config.max_queue,
            metrics.clone(),
        )
        .map_err(|e| invalid("model thread", e.to_string()))?;
        threads.extend(handles);
        served.push(Served {
            name,
            encoder: enc,
            probe,
            batcher,
            dim,
            workers,
        });
    }
    let mut served_images: Vec<ServedImage> = Vec::with_capacity(images.len());
    for (name, replicas) in images {
        check_name(&name)?;
        if served_images.iter().any(|s| s.name == name) || served.iter().any(|s| s.name == name) {
            return Err(invalid("image model name", format!("{name:?} given twice")));
        }
        let replicas: Vec<Arc<ImageNet>> = replicas.into_iter().map(Arc::new).collect();
        let Some(model) = replicas.first().cloned() else {
            return Err(invalid(
                "image models",
                format!("{name:?} has no replica; expected one per device"),
            ));
        };
        let workers = replicas.len();
        let limits = ImageBatch {
            max_images: config.max_image_batch,
            max_wait: config.max_wait,
        };
        let (worker, handles) = images::start(
            name.clone(),
            replicas,
            limits,
            config.max_image_queue,
            metrics.clone(),
        )
        .map_err(|e| invalid("model thread", e.to_string()))?;
        threads.extend(handles);
        served_images.push(ServedImage {
            name,
            model,
            worker,
            workers,
        });
    }
    let state = Arc::new(AppState {
        models: served,
        images: served_images,
        config: config.clone(),
        device,
        metrics,
        draining: AtomicBool::new(false),
        image_slots: Arc::new(tokio::sync::Semaphore::new(config.max_image_queue)),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("medkern-http")
        .build()
        .map_err(|e| invalid("runtime", e.to_string()))?;
    let result = rt.block_on(handlers::run(state.clone(), on_listen));
    // The router (and its clones of the state) are gone with the runtime's tasks: dropping the
    // last state closes the queues, and each model thread ends after its queued jobs.
    drop(rt);
    drop(state);
    for t in threads {
        let _ = t.join();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::{ServeConfig, check_config, check_name};

    #[test]
    fn names_fit_urls_and_labels() {
        assert!(check_name("all-MiniLM-L6-v2").is_ok());
        assert!(check_name("triage_1.2").is_ok());
        for bad in ["", "a b", "x\"y", "a/b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(check_config(&ServeConfig::default()).is_ok());
        let c = ServeConfig {
            max_batch_requests: 0,
            ..ServeConfig::default()
        };
        let e = check_config(&c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("max_batch_requests"), "{e}");
    }
}
