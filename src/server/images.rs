//! Image models of the server (`POST /classify`): one bounded queue and one model thread per
//! model. Images arrive decoded (the handler decodes under the input limits, so a bad upload
//! is refused before it takes a queue slot) and run one per call: a CNN call on one image
//! already fills the device far better than one short text does, and each decoded image can
//! weigh up to `max_alloc_bytes`, so the queue is short (`max_image_queue`).

use super::batcher::Refused;
use super::metrics::Metrics;
use crate::input::RawImage;
use crate::model::classify::ImageClassifier;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use tokio::sync::oneshot;

/// The model's answer to one image: its JSON, or the error's text.
pub type ImageReply = std::result::Result<Value, String>;

/// One decoded image waiting for its model.
pub struct ImageJob {
    pub raw: RawImage,
    /// Classes listed (lite0).
    pub top: usize,
    /// Also answer the pooled feature vector.
    pub features: bool,
    pub reply: oneshot::Sender<ImageReply>,
}

/// The handlers' end of an image model's queue.
pub struct ImageWorker {
    tx: SyncSender<ImageJob>,
    depth: Arc<AtomicUsize>,
}

impl ImageWorker {
    /// Starts the model thread with a queue of `max_queue` images; it ends once the worker is
    /// dropped and the queue is empty (a drain answers what was queued).
    pub fn start(
        name: String,
        model: Arc<ImageClassifier>,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(ImageWorker, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_queue.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let d = depth.clone();
        let handle = std::thread::Builder::new()
            .name(format!("medkern-image-{name}"))
            .spawn(move || run(&name, &model, &rx, &d, &metrics))?;
        Ok((ImageWorker { tx, depth }, handle))
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
    model: &ImageClassifier,
    rx: &Receiver<ImageJob>,
    depth: &AtomicUsize,
    metrics: &Metrics,
) {
    while let Ok(job) = rx.recv() {
        depth.fetch_sub(1, Ordering::SeqCst);
        // A client that has gone needs no answer.
        if job.reply.is_closed() {
            continue;
        }
        metrics.observe_batch(name, 1, 1, 0);
        let out = model
            .classify_image(job.raw, job.top, job.features)
            .map_err(|e| e.to_string());
        let _ = job.reply.send(out);
    }
}
