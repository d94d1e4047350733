//! Image models of the server (`POST /classify`, `POST /exam`): one bounded queue and one
//! model thread per model. Images arrive decoded (the handler decodes under the input limits,
//! so a bad upload is refused before it takes a queue slot). A classifier thread stacks the
//! images that arrive within `max_wait` (up to `max_image_batch`) into one forward pass; an
//! EXAM thread runs one patient per call. Each decoded image can weigh up to
//! `max_alloc_bytes`, so the queue is short (`max_image_queue`).

use super::batcher::{Queue, Workers};
use super::metrics::Metrics;
use crate::dtype::DType;
use crate::input::RawImage;
use crate::model::classify::ImageClassifier;
use crate::model::exam::ExamModel;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The model's answer to one image: its JSON, or the error's text.
pub type ImageReply = std::result::Result<Value, String>;

/// A served image model.
pub enum ImageNet {
    /// `/classify`: sepsis, cxr or lite0.
    Classifier(ImageClassifier),
    /// `/exam`: the EXAM chest X-ray + EMR model, its trunk in `dtype`.
    Exam {
        model: Box<ExamModel>,
        dtype: DType,
        random_weights: bool,
    },
}

impl ImageNet {
    /// What `/info` calls it: the classifier's kind, or `exam`.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageNet::Classifier(m) => m.kind().name(),
            ImageNet::Exam { .. } => "exam",
        }
    }

    /// One line saying what the model is.
    pub fn describe(&self) -> &'static str {
        match self {
            ImageNet::Classifier(m) => m.kind().describe(),
            ImageNet::Exam { .. } => "exam (chest X-ray + EMR → oxygen need at 24 h and 72 h)",
        }
    }

    /// Whether it runs deterministic random weights (its answers are then not meaningful).
    pub fn random_weights(&self) -> bool {
        match self {
            ImageNet::Classifier(m) => m.random_weights(),
            ImageNet::Exam { random_weights, .. } => *random_weights,
        }
    }
}

/// What a job asks of its model.
pub enum ImageWork {
    /// Classes (`top` listed, lite0) and optionally the pooled feature vector.
    Classify { top: usize, features: bool },
    /// The EXAM predictions for this EMR record.
    Exam { record: Value },
}

/// One decoded image waiting for its model.
pub struct ImageJob {
    pub raw: RawImage,
    pub work: ImageWork,
    pub reply: oneshot::Sender<ImageReply>,
}

/// An image model's queue.
pub type ImageWorker = Workers<ImageJob>;

/// Starts an image model's threads, one per replica, sharing a queue of `max_queue` images.
pub fn start(
    name: String,
    replicas: Vec<Arc<ImageNet>>,
    limits: ImageBatch,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<(ImageWorker, Vec<std::thread::JoinHandle<()>>)> {
    let thread = format!("medkern-image-{name}");
    Workers::spawn(&thread, replicas, max_queue, move |model, queue, depth| {
        run(&name, model, limits, queue, depth, &metrics)
    })
}

/// How an image model thread forms a batch.
#[derive(Clone, Copy, Debug)]
pub struct ImageBatch {
    /// The most images in one classifier call (1: no batching). EXAM calls take one.
    pub max_images: usize,
    /// How long the thread waits for more images after the first one of a batch.
    pub max_wait: Duration,
}

fn run(
    name: &str,
    model: &ImageNet,
    limits: ImageBatch,
    queue: &Mutex<Queue<ImageJob>>,
    depth: &AtomicUsize,
    metrics: &Metrics,
) {
    loop {
        // The queue is this thread's while it gathers a batch; the run is outside the lock.
        let batch = match queue.lock() {
            Ok(mut q) => gather(&mut q, model, limits, depth),
            Err(_) => return,
        };
        let Some(mut batch) = batch else { return };
        // A client that has gone needs no answer.
        batch.retain(|j| !j.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics.observe_batch(name, batch.len(), batch.len(), 0);
        match model {
            ImageNet::Classifier(m) => classify(m, batch),
            ImageNet::Exam { model, dtype, .. } => {
                for job in batch {
                    let out = match &job.work {
                        ImageWork::Exam { record } => model.assess(&job.raw, record, *dtype),
                        ImageWork::Classify { .. } => Err(wrong_job(name, "exam")),
                    };
                    let _ = job.reply.send(out.map_err(|e| e.to_string()));
                }
            }
        }
    }
}

fn wrong_job(name: &str, kind: &str) -> crate::error::Error {
    crate::error::Error::Invalid {
        op: "serve",
        arg: "model",
        detail: format!("model {name:?} ({kind}) cannot do this job"),
    }
}

/// The next batch: the first job (or `carry`), then, for a classifier, whatever arrives within
/// `max_wait`, up to `max_images`. None once the queue is closed and empty.
fn gather(
    q: &mut Queue<ImageJob>,
    model: &ImageNet,
    limits: ImageBatch,
    depth: &AtomicUsize,
) -> Option<Vec<ImageJob>> {
    let Queue { rx, carry } = q;
    let take = |j: ImageJob| {
        depth.fetch_sub(1, Ordering::SeqCst);
        j
    };
    let first = match carry.take() {
        Some(j) => j,
        None => take(rx.recv().ok()?),
    };
    let mut batch = vec![first];
    if !matches!(model, ImageNet::Classifier(_)) {
        return Some(batch);
    }
    let deadline = Instant::now() + limits.max_wait;
    while batch.len() < limits.max_images {
        let wait = deadline.saturating_duration_since(Instant::now());
        let next = match rx.try_recv() {
            Ok(j) => take(j),
            Err(_) if wait.is_zero() => break,
            Err(_) => match rx.recv_timeout(wait) {
                Ok(j) => take(j),
                Err(_) => break,
            },
        };
        if !matches!(next.work, ImageWork::Classify { .. }) {
            *carry = Some(next);
            break;
        }
        batch.push(next);
    }
    Some(batch)
}

/// Runs a classifier batch as one forward pass (the largest `top` and any `features` asked
/// for), then gives each job its answer cut to what it asked.
fn classify(m: &ImageClassifier, batch: Vec<ImageJob>) {
    let mut top = 1;
    let mut features = false;
    for j in &batch {
        if let ImageWork::Classify {
            top: t,
            features: f,
        } = j.work
        {
            top = top.max(t);
            features |= f;
        }
    }
    let mut raws = Vec::with_capacity(batch.len());
    let mut jobs = Vec::with_capacity(batch.len());
    for j in batch {
        raws.push(j.raw);
        jobs.push((j.work, j.reply));
    }
    let answers = m.classify_images(raws, top, features);
    for ((work, reply), out) in jobs.into_iter().zip(answers) {
        let out = out.map(|mut v| {
            if let ImageWork::Classify {
                top: t,
                features: f,
            } = work
            {
                if let Some(list) = v.get_mut("top").and_then(Value::as_array_mut) {
                    list.truncate(t);
                }
                if !f {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("features");
                    }
                }
            }
            v
        });
        let _ = reply.send(out.map_err(|e| e.to_string()));
    }
}
