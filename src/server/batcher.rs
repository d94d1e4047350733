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

/// The handlers' end of a model's queue: a bounded channel drained by one model thread per
/// replica (one per device). Text models ([`Batcher`]) and image models
/// ([`super::images::ImageWorker`]) both queue through it.
pub struct Workers<J> {
    tx: SyncSender<J>,
    depth: Arc<AtomicUsize>,
}

/// A text model's queue.
pub type Batcher = Workers<Job>;

impl<J: Send + 'static> Workers<J> {
    /// Starts one thread per replica, named `{thread}-{i}`, running `body(replica, queue,
    /// depth)` over a shared queue of `max_queue` jobs. The threads end once the `Workers` is
    /// dropped and the queue is empty: dropping it is how a drain finishes what was queued.
    pub(crate) fn spawn<R, F>(
        thread: &str,
        replicas: Vec<Arc<R>>,
        max_queue: usize,
        body: F,
    ) -> std::io::Result<(Workers<J>, Vec<std::thread::JoinHandle<()>>)>
    where
        R: Send + Sync + 'static,
        F: Fn(&R, &Mutex<Queue<J>>, &AtomicUsize) + Send + Clone + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_queue.max(1));
        let queue = Arc::new(Mutex::new(Queue { rx, carry: None }));
        let depth = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(replicas.len());
        for (i, replica) in replicas.into_iter().enumerate() {
            let (queue, d, body) = (queue.clone(), depth.clone(), body.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{thread}-{i}"))
                    .spawn(move || body(&replica, &queue, &d))?,
            );
        }
        Ok((Workers { tx, depth }, handles))
    }

    /// Queues `job` without waiting; a full queue refuses it at once.
    pub fn submit(&self, job: J) -> std::result::Result<(), Refused> {
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

    /// Jobs queued and not yet taken by a model thread.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

/// Starts a text model's threads, one per replica: each gathers a batch from the shared
/// queue (one thread at a time), then runs it while the next gathers.
pub fn start(
    name: String,
    replicas: Vec<Arc<TextEncoder>>,
    limits: BatchLimits,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Batcher, Vec<std::thread::JoinHandle<()>>)> {
    let thread = format!("medkern-model-{name}");
    Workers::spawn(
        &thread,
        replicas,
        max_queue,
        move |encoder, queue, depth| run(&name, encoder, limits, queue, depth, &metrics),
    )
}

/// The model thread: gathers a batch, runs it once, answers each job, until the queue closes.
/// A model's queue as its threads share it: the channel, and the job a batch had no room for
/// (it leads the next batch, whichever thread gathers it).
pub(crate) struct Queue<J> {
    pub rx: Receiver<J>,
    pub carry: Option<J>,
}

fn run(
    name: &str,
    encoder: &TextEncoder,
    limits: BatchLimits,
    queue: &Mutex<Queue<Job>>,
    depth: &AtomicUsize,
    metrics: &Metrics,
) {
    loop {
        // The queue is this thread's while it gathers a batch; the run is outside the lock.
        let Ok(mut q) = queue.lock() else { return };
        let Some((task, batch)) = gather(&mut q, limits, depth) else {
            return;
        };
        drop(q);
        run_batch(name, encoder, task, batch, metrics);
    }
}

/// Takes the next batch from the queue (after `carry`, a job the last batch had no room for):
/// the first job, then whatever arrives within `max_wait` and fits; None once the queue is
/// closed and empty. Jobs whose client has gone are dropped.
fn gather(
    q: &mut Queue<Job>,
    limits: BatchLimits,
    depth: &AtomicUsize,
) -> Option<(Task, Vec<Job>)> {
    let Queue { rx, carry } = q;
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

/// Runs one batch as a single packed call and hands each job its rows. When the call fails
/// and the batch holds several jobs, each job runs alone, so one bad request (a pair for a
/// model without a second token type, say) fails only itself.
fn run_batch(name: &str, encoder: &TextEncoder, task: Task, batch: Vec<Job>, metrics: &Metrics) {
    let n: usize = batch.iter().map(|j| j.ids.len()).sum();
    let tokens: usize = batch.iter().map(|j| j.tokens).sum();
    metrics.observe_batch(name, batch.len(), n, tokens);
    // The jobs' sequences move into one call; type ids as soon as one job has them (zeros
    // for the others).
    let typed = batch.iter().any(|j| j.type_ids.is_some());
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(if typed { n } else { 0 });
    let mut spans = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for j in batch {
        spans.push(ids.len()..ids.len() + j.ids.len());
        if typed {
            match j.type_ids {
                Some(t) => types.extend(t),
                None => types.extend(j.ids.iter().map(|s| vec![0; s.len()])),
            }
        }
        ids.extend(j.ids);
        replies.push(j.reply);
    }
    let typed = typed.then_some(types.as_slice());
    let answers: Vec<Reply> = match call(encoder, task, &ids, typed) {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            spans
                .iter()
                .map(|r| Ok(rows.by_ref().take(r.len()).collect()))
                .collect()
        }
        Err(e) if spans.len() == 1 => vec![Err(e.to_string())],
        Err(_) => spans
            .iter()
            .map(|r| {
                let t = typed.map(|t| &t[r.clone()]);
                call(encoder, task, &ids[r.clone()], t).map_err(|e| e.to_string())
            })
            .collect(),
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A dropped receiver (the client left) is not an error.
        let _ = reply.send(answer);
    }
}

/// One packed model call: one row per sequence, in order.
fn call(
    encoder: &TextEncoder,
    task: Task,
    ids: &[Vec<u32>],
    type_ids: Option<&[Vec<u32>]>,
) -> crate::error::Result<Vec<Vec<f32>>> {
    match task {
        Task::Embed => encoder.model.embed(ids, encoder.pooling),
        Task::Classify => encoder.model.classify_typed(ids, type_ids),
    }
}
