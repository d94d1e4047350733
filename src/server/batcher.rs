//! The dynamic batcher: one bounded queue and one model thread per model. Requests arrive
//! already tokenised, so the thread can pack as many as fit the token and request budgets into
//! ONE packed variable-length call (no padding), and answer each through its own channel.

use super::metrics::Metrics;
use crate::model::encoder::TextEncoder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a job asks of the model: pooled embeddings or the classification head's logits.
/// Jobs of different kinds never share a batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Task {
    Embed,
    Classify,
}

/// The model's answer to one job: one vector per id sequence, or the error's text.
pub type Reply = std::result::Result<Vec<Vec<f32>>, String>;

/// One request's token id sequences, waiting for the model.
pub struct Job {
    pub task: Task,
    pub ids: Vec<Vec<u32>>,
    /// Token type ids, one per id (sentence pairs); `None`: all zeros.
    pub type_ids: Option<Vec<Vec<u32>>>,
    pub tokens: usize,
    pub reply: oneshot::Sender<Reply>,
}

/// How the model thread forms a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// The most tokens in one model call (a single larger job is refused before queueing).
    pub max_tokens: usize,
    /// The most requests in one model call.
    pub max_requests: usize,
    /// The most sequences in one model call (the model's own max_batch).
    pub max_sequences: usize,
    /// How long the thread waits for more jobs after the first one of a batch.
    pub max_wait: Duration,
}

/// Why a job was not queued.
pub enum Refused {
    /// The queue holds `max_queue` jobs (HTTP 429).
    Full,
    /// The model thread has stopped (HTTP 503).
    Stopped,
}

/// The handlers' end of a model's queue.
pub struct Batcher {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts one model thread per replica (one per device) with a shared queue of
    /// `max_queue` jobs: one thread at a time gathers a batch, then runs it while the next
    /// gathers. The threads end once the `Batcher` is dropped and the queue is empty: dropping
    /// it is how a drain finishes what was queued.
    pub fn start(
        name: String,
        replicas: Vec<Arc<TextEncoder>>,
        limits: BatchLimits,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Batcher, Vec<std::thread::JoinHandle<()>>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(replicas.len());
        for (i, encoder) in replicas.into_iter().enumerate() {
            let (name, rx, d, metrics) = (name.clone(), rx.clone(), depth.clone(), metrics.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("medkern-model-{name}-{i}"))
                    .spawn(move || run(&name, &encoder, limits, &rx, &d, &metrics))?,
            );
        }
        Ok((Batcher { tx, depth }, handles))
    }

    /// Queues `job` without waiting; a full queue refuses it at once.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Refused> {
        // Counted before the send so the thread's decrement never runs first.
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

    /// Jobs queued and not yet taken by the model thread.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

/// The model thread: gathers a batch, runs it once, answers each job, until the queue closes.
fn run(
    name: &str,
    encoder: &TextEncoder,
    limits: BatchLimits,
    rx: &Mutex<Receiver<Job>>,
    depth: &AtomicUsize,
    metrics: &Metrics,
) {
    let mut carry: Option<Job> = None;
    loop {
        // The queue is this thread's while it gathers a batch; the run is outside the lock.
        let Ok(rx) = rx.lock() else { return };
        let Some((task, batch)) = gather(&rx, &mut carry, limits, depth) else {
            return;
        };
        drop(rx);
        run_batch(name, encoder, task, batch, metrics);
    }
}

/// Takes the next batch from the queue (after `carry`, a job the last batch had no room for):
/// the first job, then whatever arrives within `max_wait` and fits; None once the queue is
/// closed and empty. Jobs whose client has gone are dropped.
fn gather(
    rx: &Receiver<Job>,
    carry: &mut Option<Job>,
    limits: BatchLimits,
    depth: &AtomicUsize,
) -> Option<(Task, Vec<Job>)> {
    let take = |j: Job| {
        depth.fetch_sub(1, Ordering::SeqCst);
        j
    };
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => take(j),
                Err(_) => return None,
            },
        };
        let deadline = Instant::now() + limits.max_wait;
        let task = first.task;
        let mut tokens = first.tokens;
        let mut seqs = first.ids.len();
        let mut batch = vec![first];
        while batch.len() < limits.max_requests {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = match rx.try_recv() {
                Ok(j) => take(j),
                Err(_) if wait.is_zero() => break,
                Err(_) => match rx.recv_timeout(wait) {
                    Ok(j) => take(j),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            if next.task != task
                || tokens + next.tokens > limits.max_tokens
                || seqs + next.ids.len() > limits.max_sequences
            {
                *carry = Some(next);
                break;
            }
            tokens += next.tokens;
            seqs += next.ids.len();
            batch.push(next);
        }
        // A client that has gone needs no answer: its sequences are left out of the call.
        batch.retain(|j| !j.reply.is_closed());
        if !batch.is_empty() {
            return Some((task, batch));
        }
    }
}

/// Runs one batch as a single packed call and hands each job its rows.
fn run_batch(name: &str, encoder: &TextEncoder, task: Task, batch: Vec<Job>, metrics: &Metrics) {
    let n = batch.iter().map(|j| j.ids.len()).sum();
    let mut ids = Vec::with_capacity(n);
    // Type ids for the whole call as soon as one job has them (zeros for the others).
    let typed = batch.iter().any(|j| j.type_ids.is_some());
    let mut types = Vec::with_capacity(if typed { n } else { 0 });
    let mut counts = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut tokens = 0;
    for j in batch {
        counts.push(j.ids.len());
        tokens += j.tokens;
        if typed {
            match j.type_ids {
                Some(t) => types.extend(t),
                None => types.extend(j.ids.iter().map(|s| vec![0; s.len()])),
            }
        }
        ids.extend(j.ids);
        replies.push(j.reply);
    }
    metrics.observe_batch(name, replies.len(), ids.len(), tokens);
    let out = match task {
        Task::Embed => encoder.model.embed(&ids, encoder.pooling),
        Task::Classify => encoder
            .model
            .classify_typed(&ids, typed.then_some(types.as_slice())),
    };
    match out {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (reply, n) in replies.into_iter().zip(counts) {
                // A dropped receiver (the client left) is not an error.
                let _ = reply.send(Ok(rows.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(msg.clone()));
            }
        }
    }
}
