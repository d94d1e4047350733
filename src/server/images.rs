//! Image models of the server (`POST /classify`, `POST /exam`): one bounded queue and one
//! model thread per model. Images arrive decoded (the handler decodes under the input limits,
//! so a bad upload is refused before it takes a queue slot) and run one per call: a CNN call
//! on one image already fills the device far better than one short text does, and each
//! decoded image can weigh up to `max_alloc_bytes`, so the queue is short (`max_image_queue`).

use super::batcher::Refused;
use super::metrics::Metrics;
use crate::dtype::DType;
use crate::input::RawImage;
use crate::model::classify::ImageClassifier;
use crate::model::exam::ExamModel;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
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

/// The handlers' end of an image model's queue.
pub struct ImageWorker {
    tx: SyncSender<ImageJob>,
    depth: Arc<AtomicUsize>,
}

impl ImageWorker {
    /// Starts one model thread per replica (one per device) sharing a queue of `max_queue`
    /// images; they end once the worker is dropped and the queue is empty (a drain answers
    /// what was queued).
    pub fn start(
        name: String,
        replicas: Vec<Arc<ImageNet>>,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(ImageWorker, Vec<std::thread::JoinHandle<()>>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(replicas.len());
        for (i, model) in replicas.into_iter().enumerate() {
            let (name, rx, d, metrics) = (name.clone(), rx.clone(), depth.clone(), metrics.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("medkern-image-{name}-{i}"))
                    .spawn(move || run(&name, &model, &rx, &d, &metrics))?,
            );
        }
        Ok((ImageWorker { tx, depth }, handles))
    }

    /// Queues `job` without waiting; a full queue refuses it at once.
    pub fn submit(&self, job: ImageJob) -> std::result::Result<(), Refused> {
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => Refused::Full,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Images queued and not yet taken by the model thread.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

fn run(
    name: &str,
    model: &ImageNet,
    rx: &Mutex<Receiver<ImageJob>>,
    depth: &AtomicUsize,
    metrics: &Metrics,
) {
    loop {
        // The lock is held only to take one job.
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        depth.fetch_sub(1, Ordering::SeqCst);
        // A client that has gone needs no answer.
        if job.reply.is_closed() {
            continue;
        }
        metrics.observe_batch(name, 1, 1, 0);
        let out = match (model, job.work) {
            (ImageNet::Classifier(m), ImageWork::Classify { top, features }) => {
                m.classify_image(job.raw, top, features)
            }
            (ImageNet::Exam { model, dtype, .. }, ImageWork::Exam { record }) => {
                model.assess(&job.raw, &record, *dtype)
            }
            _ => Err(crate::error::Error::Invalid {
                op: "serve",
                arg: "model",
                detail: format!("model {name:?} ({}) cannot do this job", model.kind()),
            }),
        }
        .map_err(|e| e.to_string());
        let _ = job.reply.send(out);
    }
}
