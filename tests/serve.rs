//! `medkern serve` end to end: the real binary on a loopback port, all-MiniLM-L6-v2 on the CPU,
//! checked against `TextEncoder` run in this process (bit for bit), under load from 32 client
//! threads, through curl and the Python clients, and through a SIGTERM drain.
// This file runs `medkern serve` (features `cli` and `server`).
#![cfg(all(feature = "cli", feature = "server"))]

mod common;

use base64::Engine;
use common::{SeedRng, model_or_skip, skip};
use medkern::model::encoder::{EncoderOptions, TextEncoder, normalize_unit};
use medkern::{DType, Device};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// One server at a time: the tests share 2 cores, and the load test reports throughput.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running `medkern serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let m = model.to_str().expect("utf-8 path");
        let mut args = vec!["--model", m];
        args.extend_from_slice(extra);
        Server::spawn(&args)
    }

    /// `medkern serve --device cpu --port 0` with `args` (no `--device` when they name
    /// `--devices`).
    fn spawn(args: &[&str]) -> Server {
        let device: &[&str] = if args.contains(&"--devices") {
            &[]
        } else {
            &["--device", "cpu"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_medkern"))
            .args(["serve", "--port", "0"])
            .args(device)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start medkern serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("medkern serve printed no address within 120 s");
        let base = line
            .strip_prefix("medkern serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        post(&agent(), &self.url(path), body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut r = agent().get(&self.url(path)).call().expect("GET");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().expect("body"))
    }

    /// SIGTERM, then the exit status (waiting at most `limit`).
    fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -TERM failed");
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "the server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> (u16, String) {
    let mut r = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().expect("body"))
}

fn minilm(test: &str) -> Option<PathBuf> {
    model_or_skip(test, "all-MiniLM-L6-v2")
}

/// The encoder as the server loads it (folder pooling, not normalised), on the CPU in f32.
fn reference(dir: &Path) -> TextEncoder {
    TextEncoder::load(
        dir,
        &Device::Cpu,
        DType::F32,
        &EncoderOptions {
            pooling: None,
            normalize: Some(false),
            max_len: None,
            max_batch: 4096,
        },
    )
    .expect("load the reference encoder")
}

/// One text alone through the reference, optionally normalised.
fn single(enc: &TextEncoder, text: &str, normalize: bool) -> Vec<f32> {
    let mut v = enc.embed(&[text]).expect("embed").remove(0);
    if normalize {
        normalize_unit(&mut v);
    }
    v
}

fn parse_rows(body: &str) -> Vec<Vec<f32>> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("rows: {e}: {body:.200}"))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const TEXTS: [&str; 4] = [
    "The patient presents with fever, productive cough and shortness of breath.",
    "Lactate 4.2 mmol/L and MAP 58 mmHg: septic shock, start norepinephrine.",
    "A cat sat on the mat.",
    "ok",
];

#[test]
fn endpoints_match_the_encoder_and_errors_are_json() {
    let Some(dir) = minilm("endpoints_match_the_encoder_and_errors_are_json") else {
        return;
    };
    let _g = serial();
    let enc = reference(&dir);
    let s = Server::start(&dir, &["--max-request-bytes", "65536"]);

    // /embed, a list and single strings, normalised (the default) and not.
    let (st, body) = s.post("/embed", &json!({"inputs": TEXTS}).to_string());
    assert_eq!(st, 200, "{body}");
    let rows = parse_rows(&body);
    assert_eq!(rows.len(), TEXTS.len());
    for (t, r) in TEXTS.iter().zip(&rows) {
        assert_eq!(bits(r), bits(&single(&enc, t, true)), "/embed {t:?}");
    }
    let (st, body) = s.post(
        "/embed",
        &json!({"inputs": TEXTS[0], "normalize": false}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        bits(&parse_rows(&body)[0]),
        bits(&single(&enc, TEXTS[0], false))
    );

    // /v1/embeddings, float and base64, with the token usage.
    let ids = enc.encode(&TEXTS).expect("encode");
    let tokens: usize = ids.iter().map(Vec::len).sum();
    for format in ["float", "base64"] {
        let (st, body) = s.post(
            "/v1/embeddings",
            &json!({"model": "all-MiniLM-L6-v2", "input": TEXTS, "encoding_format": format})
                .to_string(),
        );
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "all-MiniLM-L6-v2");
        assert_eq!(v["usage"]["prompt_tokens"], tokens);
        assert_eq!(v["usage"]["total_tokens"], tokens);
        let data = v["data"].as_array().expect("data");
        assert_eq!(data.len(), TEXTS.len());
        for (i, (t, d)) in TEXTS.iter().zip(data).enumerate() {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            let got: Vec<f32> = if format == "base64" {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(d["embedding"].as_str().expect("base64 string"))
                    .expect("base64");
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                serde_json::from_value(d["embedding"].clone()).expect("floats")
            };
            assert_eq!(bits(&got), bits(&single(&enc, t, true)), "{format} {t:?}");
        }
    }

    // /tokenize gives the ids the model runs on.
    let (st, body) = s.post("/tokenize", &json!({"inputs": TEXTS}).to_string());
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    for (i, want) in ids.iter().enumerate() {
        let got: Vec<u32> = serde_json::from_value(v[i]["ids"].clone()).expect("ids");
        assert_eq!(&got, want);
        assert_eq!(v[i]["count"], want.len());
    }

    // Health, info, metrics.
    assert_eq!(s.get("/health").0, 200);
    let (st, body) = s.get("/info");
    assert_eq!(st, 200);
    let info: Value = serde_json::from_str(&body).expect("info");
    assert_eq!(info["models"][0]["name"], "all-MiniLM-L6-v2");
    assert_eq!(info["models"][0]["dim"], 384);
    assert_eq!(info["device"], "cpu");
    let (st, body) = s.get("/metrics");
    assert_eq!(st, 200);
    for want in [
        "medkern_requests_total{route=\"/embed\",status=\"200\"}",
        "medkern_request_duration_seconds_bucket{route=\"/embed\"",
        "medkern_batch_size_requests_count{model=\"all-MiniLM-L6-v2\"}",
        "medkern_tokens_total{model=\"all-MiniLM-L6-v2\"}",
        "medkern_queue_depth{model=\"all-MiniLM-L6-v2\"} 0",
    ] {
        assert!(body.contains(want), "metrics lack {want}:\n{body}");
    }

    // Errors: JSON bodies with the status of each kind.
    let long = "word ".repeat(2000);
    let cases: Vec<(&str, String, u16)> = vec![
        ("/embed", json!({"inputs": []}).to_string(), 422),
        ("/embed", json!({"inputs": ""}).to_string(), 422),
        ("/embed", "{\"inputs\": ".to_string(), 422),
        ("/embed", json!({"text": "x"}).to_string(), 422),
        ("/embed", json!({"inputs": 7}).to_string(), 422),
        (
            "/embed",
            json!({"inputs": "x".repeat(70_000)}).to_string(),
            413,
        ),
        (
            "/embed",
            json!({"inputs": long, "truncate": false}).to_string(),
            413,
        ),
        (
            "/v1/embeddings",
            json!({"model": "nope", "input": "x"}).to_string(),
            404,
        ),
        (
            "/v1/embeddings",
            json!({"input": "x", "encoding_format": "hex"}).to_string(),
            422,
        ),
        ("/predict", json!({"inputs": "x"}).to_string(), 422),
    ];
    for (path, body, want) in cases {
        let (st, resp) = s.post(path, &body);
        assert_eq!(st, want, "{path} {body:.80}: {resp}");
        let v: Value = serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{resp}: {e}"));
        assert!(
            v["error"].is_string() && v["error_type"].is_string(),
            "{resp}"
        );
    }
    // Truncated by default: the long text embeds as its first max_len tokens.
    let (st, body) = s.post("/embed", &json!({"inputs": long}).to_string());
    assert_eq!(st, 200, "{body:.200}");
    assert_eq!(
        bits(&parse_rows(&body)[0]),
        bits(&single(&enc, &long, true))
    );
}

/// The tiny MobileBERT folder: the CPU backend runs it fast enough for 2 x 2000 requests of
/// up to ~200 tokens in the test's time budget, where MiniLM would take minutes.
fn tiny_model(minilm: &Path, what: &str) -> common::TempDir {
    common::tiny_mobilebert_folder(minilm, what, 256)
}

/// Texts of 1 to ~210 words drawn from clinical vocabulary, with a few planted long ones.
fn load_texts(n: usize) -> Vec<String> {
    const WORDS: [&str; 24] = [
        "patient",
        "fever",
        "cough",
        "lactate",
        "sepsis",
        "norepinephrine",
        "x-ray",
        "lobe",
        "consolidation",
        "4.2",
        "mmol/L",
        "the",
        "of",
        "and",
        "with",
        "cultures",
        "grew",
        "Staphylococcus",
        "vancomycin",
        "started",
        "oxygen",
        "saturation",
        "92%",
        "café",
    ];
    let mut rng = SeedRng::new(19);
    (0..n)
        .map(|i| {
            let words = if i % 40 == 7 {
                150 + rng.below(60) as usize
            } else {
                1 + rng.below(if i % 3 == 0 { 60 } else { 12 }) as usize
            };
            let mut t: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                .collect();
            if i % 40 == 3 {
                // One word: [CLS] word [SEP], the shortest requests.
                return WORDS[i % WORDS.len()].to_string();
            }
            // Otherwise distinct texts, so a mixed-up answer cannot pass as another's.
            let tag = format!("n{i}");
            t.push(&tag);
            t.join(" ")
        })
        .collect()
}

/// Sends `requests` /embed requests (request k carries text k % texts.len()) from `clients`
/// threads; checks every answer against `want` and returns requests per second.
fn hammer(
    s: &Server,
    texts: &Arc<Vec<String>>,
    want: &Arc<Vec<Vec<u32>>>,
    requests: usize,
    clients: usize,
) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(Mutex::new(vec![0u32; requests]));
    let url = s.url("/embed");
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (next, answered, url) = (next.clone(), answered.clone(), url.clone());
            let (texts, want) = (texts.clone(), want.clone());
            std::thread::spawn(move || {
                let agent = agent();
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if k >= requests {
                        return;
                    }
                    let t = k % texts.len();
                    let (st, body) = post(&agent, &url, &json!({"inputs": texts[t]}).to_string());
                    assert_eq!(st, 200, "request {k}: {body}");
                    let rows = parse_rows(&body);
                    assert_eq!(rows.len(), 1);
                    assert_eq!(bits(&rows[0]), want[t], "request {k} (text {t}) differs");
                    answered.lock().unwrap_or_else(|p| p.into_inner())[k] += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let secs = start.elapsed().as_secs_f64();
    let answered = answered.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        answered.iter().all(|&n| n == 1),
        "a request was lost or answered twice"
    );
    requests as f64 / secs
}

#[test]
fn load_batched_answers_equal_single_requests() {
    let Some(minilm) = minilm("load_batched_answers_equal_single_requests") else {
        return;
    };
    let _g = serial();
    let tiny = tiny_model(&minilm, "serve-load");
    let dir = tiny.path();
    let enc = reference(dir);
    let texts = load_texts(200);
    let lens: Vec<usize> = enc
        .encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("encode")
        .iter()
        .map(Vec::len)
        .collect();
    assert!(lens.iter().any(|&n| n > 150) && lens.iter().any(|&n| n <= 3));
    let want: Vec<Vec<u32>> = texts.iter().map(|t| bits(&single(&enc, t, true))).collect();
    let (texts, want) = (Arc::new(texts), Arc::new(want));

    let batched = Server::start(dir, &[]);
    let rps = hammer(&batched, &texts, &want, 2000, 32);
    let (_, metrics) = batched.get("/metrics");
    drop(batched);
    let unbatched = Server::start(dir, &["--max-batch-requests", "1"]);
    let rps1 = hammer(&unbatched, &texts, &want, 2000, 32);
    drop(unbatched);
    let mean_batch = metric(&metrics, "medkern_batch_size_requests_sum")
        / metric(&metrics, "medkern_batch_size_requests_count");
    // Written to the raw stderr handle, so it shows even when libtest captures the output.
    let line = format!(
        "\nserve load: 2000 requests, 32 clients, {}..{} tokens: batched {rps:.0} req/s \
         (mean batch {mean_batch:.1} requests), --max-batch-requests 1: {rps1:.0} req/s\n",
        lens.iter().min().unwrap_or(&0),
        lens.iter().max().unwrap_or(&0),
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// `--request-timeout-ms`: a request still waiting past it gets a 503 timeout (here the batch
/// waits 1.5 s for company), its job is dropped from the batch, and the server goes on
/// answering.
#[test]
fn slow_requests_time_out_and_the_server_goes_on() {
    let Some(minilm) = minilm("slow_requests_time_out_and_the_server_goes_on") else {
        return;
    };
    let _g = serial();
    let tiny = tiny_model(&minilm, "serve-timeout");
    let enc = reference(tiny.path());
    let slow = Server::start(
        tiny.path(),
        &["--max-wait-us", "1500000", "--request-timeout-ms", "300"],
    );
    let t = Instant::now();
    let (st, body) = slow.post("/embed", &json!({"inputs": TEXTS[0]}).to_string());
    assert_eq!(st, 503, "{body}");
    assert!(
        body.contains("\"timeout\"") && body.contains("300 ms"),
        "{body}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    // The server still answers (health at once; an embed once its batch is run).
    let (st, _) = slow.get("/health");
    assert_eq!(st, 200);
    drop(slow);
    let s = Server::start(tiny.path(), &["--request-timeout-ms", "30000"]);
    let (st, body) = s.post("/embed", &json!({"inputs": TEXTS[0]}).to_string());
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        bits(&parse_rows(&body)[0]),
        bits(&single(&enc, TEXTS[0], true))
    );
    let (st, body) = s.get("/info");
    assert_eq!(st, 200);
    assert!(body.contains("\"request_timeout_ms\":30000"), "{body}");
}

/// `--devices`: a model thread per device sharing each model's queue. Two CPU workers answer
/// 400 concurrent requests bit for bit as one does; the emulated GPU (the GPU path of the
/// server: device-resident weights, launched kernels, f16) answers within f16 tolerance of
/// the CPU; a bad list is refused before anything loads.
#[test]
fn devices_run_a_worker_each() {
    let Some(minilm) = minilm("devices_run_a_worker_each") else {
        return;
    };
    let _g = serial();
    let tiny = tiny_model(&minilm, "serve-devices");
    let dir = tiny.path();
    let enc = reference(dir);
    let texts = load_texts(40);
    let want: Vec<Vec<u32>> = texts.iter().map(|t| bits(&single(&enc, t, true))).collect();
    let (texts, want) = (Arc::new(texts), Arc::new(want));
    let m = dir.to_str().expect("utf-8");
    {
        let s = Server::spawn(&["--devices", "cpu,cpu", "--model", m]);
        hammer(&s, &texts, &want, 400, 16);
        let (_, info) = s.get("/info");
        let info: Value = serde_json::from_str(&info).expect("info");
        assert_eq!(info["models"][0]["workers"], 2, "{info}");
    }
    {
        let s = Server::spawn(&["--devices", "emu", "--model", m]);
        let (_, info) = s.get("/info");
        let info: Value = serde_json::from_str(&info).expect("info");
        assert_ne!(info["device"], "cpu", "{info}");
        let (st, body) = s.post("/embed", &json!({"inputs": TEXTS}).to_string());
        assert_eq!(st, 200, "{body}");
        for (row, t) in parse_rows(&body).iter().zip(TEXTS) {
            let c = single(&enc, t, true);
            let cos: f64 = row
                .iter()
                .zip(&c)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!(cos >= 0.999, "emu vs cpu cosine {cos} for {t:?}");
        }
        let (st, body) = s.post("/predict", &json!({"inputs": TEXTS}).to_string());
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        let logits = enc
            .classify_ids(&enc.encode(&TEXTS).expect("encode"))
            .expect("classify");
        for (i, l) in logits.iter().enumerate() {
            let p = medkern::model::softmax(l);
            for e in v[i].as_array().expect("list") {
                let j = usize::from(e["label"] == "abnormal");
                let got = e["score"].as_f64().expect("score");
                assert!(
                    (got - f64::from(p[j])).abs() < 0.02,
                    "emu {got} vs cpu {}",
                    p[j]
                );
            }
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .args([
            "serve",
            "--port",
            "0",
            "--devices",
            "cpu,seven",
            "--model",
            m,
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("devices") && err.contains("seven"), "{err}");
}

/// Sends a POST's headers declaring `length` body bytes, no body, and returns what the
/// server answers (read until it closes or 2 s of silence).
fn headers_only(base: &str, path: &str, length: usize) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\n\r\n"
    )
    .expect("send headers");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Equal JSON, numbers compared as the f32 they were printed from (serde_json's default float
/// parser may miss the nearest f64 by an ulp, never the f32).
fn same_f32(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x as f32).to_bits() == (y as f32).to_bits(),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_f32(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_f32(v, w)))
        }
        _ => a == b,
    }
}

/// `POST /classify` answers what `ImageClassifier` answers in this process (bit for bit on the
/// CPU), for the real Lite0 on a PNG and a JPEG and for the sepsis model (random weights) by
/// name; bad uploads, unknown models, bad parameters and oversized bodies are JSON errors.
#[test]
fn classify_matches_the_image_classifier() {
    use medkern::model::classify::{ImageClassifier, ImageModel};
    let test = "classify_matches_the_image_classifier";
    let (Some(lite0), Some(photo), Some(jpeg)) = (
        model_or_skip(test, "efficientnet-lite0/model.safetensors"),
        model_or_skip(test, "images/chelsea.png"),
        model_or_skip(test, "images/rocket.jpg"),
    ) else {
        return;
    };
    let _g = serial();
    let spec = format!("lite0={}", lite0.display());
    // chelsea.png (240,512 bytes) is under this limit.
    let s = Server::spawn(&[
        "--image-model",
        &spec,
        "--image-model",
        "sepsis",
        "--max-image-bytes",
        "300000",
    ]);
    let send = |query: &str, bytes: &[u8]| -> (u16, Value) {
        let mut r = agent()
            .post(&s.url(&format!("/classify{query}")))
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .expect("POST /classify");
        let st = r.status().as_u16();
        let body = r.body_mut().read_to_string().expect("body");
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:.300}"));
        (st, v)
    };
    let local = |kind, weights: Option<&Path>, file: &Path, top| -> Value {
        let m = ImageClassifier::load(kind, weights, &Device::Cpu, DType::F32).expect("load");
        let raw = medkern::input::load(file).expect("decode");
        m.classify_image(raw, top, false).expect("classify")
    };
    for (file, top) in [(&photo, 5), (&jpeg, 3)] {
        let bytes = std::fs::read(file).expect("read image");
        let (st, mut v) = send(&format!("?top={top}"), &bytes);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["model"], "lite0", "{v}");
        v.as_object_mut().expect("object").remove("model");
        let want = local(ImageModel::Lite0, Some(&lite0), file, top);
        assert!(same_f32(&v, &want), "{}: {v} vs {want}", file.display());
        assert_eq!(v["top"].as_array().map(Vec::len), Some(top), "{v}");
    }
    // The real Lite0 sees a cat in chelsea.png (ImageNet 281-285 are the domestic cats).
    let (_, v) = send("", &std::fs::read(&photo).expect("read"));
    let best = v["top"][0]["class"].as_u64().expect("class");
    assert!((281..=285).contains(&best), "{v}");
    // The second image model by name.
    let (st, mut v) = send("?model=sepsis", &std::fs::read(&photo).expect("read"));
    assert_eq!(st, 200, "{v}");
    v.as_object_mut().expect("object").remove("model");
    let want = local(ImageModel::Sepsis, None, &photo, 5);
    assert!(same_f32(&v, &want), "{v} vs {want}");
    assert!(v["probabilities"]["sepsis"].is_number(), "{v}");
    // Errors: JSON with the usual codes, before any model work.
    let (st, v) = send("", b"not an image at all");
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("PNG")),
        "{v}"
    );
    let (st, v) = send("", b"");
    assert_eq!(st, 422, "{v}");
    let (st, v) = send("?model=resnet50", &std::fs::read(&photo).expect("read"));
    assert_eq!(st, 404, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("lite0")),
        "{v}"
    );
    let (st, v) = send("?top=0", &std::fs::read(&photo).expect("read"));
    assert_eq!(st, 422, "{v}");
    let (st, v) = send("?top=many", &std::fs::read(&photo).expect("read"));
    assert_eq!(st, 422, "{v}");
    // An upload declared larger than --max-image-bytes is refused before its body is sent:
    // the answer comes to the headers alone.
    let answer = headers_only(&s.base, "/classify", 300_001);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("max_image_bytes"), "{answer}");
    // /info lists the image models; with no text model the text routes answer 404.
    let (st, body) = s.get("/info");
    assert_eq!(st, 200);
    let info: Value = serde_json::from_str(&body).expect("info");
    let names: Vec<&str> = info["image_models"]
        .as_array()
        .expect("image_models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["lite0", "sepsis"], "{info}");
    let (st, body) = s.post("/embed", &json!({"inputs": "a text"}).to_string());
    assert_eq!(st, 404, "{body}");
}

/// Concurrent `/classify` uploads are stacked into one forward pass per model (the metrics
/// show batches of several images), and each answer still equals that image classified
/// alone, with its own `top` and `features`.
#[test]
fn classify_batches_concurrent_images() {
    use medkern::model::classify::{ImageClassifier, ImageModel};
    let test = "classify_batches_concurrent_images";
    let Some(lite0) = model_or_skip(test, "efficientnet-lite0/model.safetensors") else {
        return;
    };
    let mut photos = Vec::new();
    for f in ["chelsea.png", "coffee.png", "rocket.jpg"] {
        let Some(p) = model_or_skip(test, &format!("images/{f}")) else {
            return;
        };
        photos.push(p);
    }
    let _g = serial();
    let spec = format!("lite0={}", lite0.display());
    let s = Server::spawn(&[
        "--image-model",
        &spec,
        "--max-wait-us",
        "1000000",
        "--max-image-batch",
        "4",
    ]);
    let m = ImageClassifier::load(ImageModel::Lite0, Some(&lite0), &Device::Cpu, DType::F32)
        .expect("load");
    let clients = 8;
    let gate = Arc::new(std::sync::Barrier::new(clients));
    let url = s.url("/classify");
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (gate, url, photo) = (gate.clone(), url.clone(), photos[i % 3].clone());
            std::thread::spawn(move || {
                let bytes = std::fs::read(&photo).expect("read");
                let (top, features) = (1 + i % 4, i % 3 == 0);
                gate.wait();
                let mut r = agent()
                    .post(&format!("{url}?top={top}&features={features}"))
                    .send(&bytes[..])
                    .expect("POST");
                let st = r.status().as_u16();
                let body = r.body_mut().read_to_string().expect("body");
                (photo, top, features, st, body)
            })
        })
        .collect();
    for t in threads {
        let (photo, top, features, st, body) = t.join().expect("client");
        assert_eq!(st, 200, "{body}");
        let mut v: Value = serde_json::from_str(&body).expect("json");
        v.as_object_mut().expect("object").remove("model");
        let raw = medkern::input::load(&photo).expect("decode");
        let want = m.classify_image(raw, top, features).expect("classify");
        assert!(same_f32(&v, &want), "{}: {v} vs {want}", photo.display());
        assert_eq!(v.get("features").is_some(), features, "{v}");
    }
    let (_, metrics) = s.get("/metrics");
    let mean = metric(&metrics, "medkern_batch_size_requests_sum")
        / metric(&metrics, "medkern_batch_size_requests_count");
    assert!(mean > 1.0, "no image batch formed (mean {mean}): {metrics}");
}

/// Image requests in progress are bounded by `--max-image-queue`: one more gets a 429 before
/// its body is read, and the one in progress is still answered.
#[test]
fn image_requests_in_progress_are_bounded() {
    let Some(photo) = model_or_skip(
        "image_requests_in_progress_are_bounded",
        "images/chelsea.png",
    ) else {
        return;
    };
    let _g = serial();
    let s = Server::spawn(&[
        "--image-model",
        "sepsis",
        "--max-image-queue",
        "1",
        "--max-wait-us",
        "2000000",
    ]);
    let url = s.url("/classify");
    let bytes = std::fs::read(&photo).expect("read");
    let first = {
        let (url, bytes) = (url.clone(), bytes.clone());
        std::thread::spawn(move || {
            let mut r = agent().post(&url).send(&bytes[..]).expect("POST");
            (
                r.status().as_u16(),
                r.body_mut().read_to_string().expect("body"),
            )
        })
    };
    // The first request holds its place for at least the 2 s its batch waits for company.
    std::thread::sleep(Duration::from_millis(500));
    let answer = headers_only(&s.base, "/classify", bytes.len());
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("max_image_queue"), "{answer}");
    let (st, body) = first.join().expect("first client");
    assert_eq!(st, 200, "{body}");
}

/// `POST /exam`: a base64 chest X-ray and an EMR record answer what `ExamModel::assess` does
/// in this process (random weights, seed 0, as the server loads them without weights); a bad
/// record, bad base64 or a non-image are 422s, and `/classify` has no model to offer.
#[test]
fn exam_matches_the_model() {
    use medkern::model::exam::{ExamConfig, ExamModel};
    let Some(photo) = model_or_skip("exam_matches_the_model", "images/chelsea.png") else {
        return;
    };
    let _g = serial();
    let s = Server::spawn(&["--image-model", "exam"]);
    let bytes = std::fs::read(&photo).expect("read");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let record = json!({"age": 71, "spo2": 88, "crp": 120.5, "ed_oxygen_device": "nasal_cannula"});
    let (st, body) = s.post("/exam", &json!({"image": b64, "emr": record}).to_string());
    assert_eq!(st, 200, "{body}");
    let mut v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["model"], "exam", "{body}");
    v.as_object_mut().expect("object").remove("model");
    let m = ExamModel::random(&ExamConfig::default(), 0, &Device::Cpu, DType::F32).expect("model");
    let raw = medkern::input::load(&photo).expect("decode");
    let want = m.assess(&raw, &record, DType::F32).expect("assess");
    assert!(same_f32(&v, &want), "{v} vs {want}");
    assert_eq!(v["emr_present"].as_array().map(Vec::len), Some(4), "{v}");
    for (body, what) in [
        (
            json!({"image": b64, "emr": {"age": 71, "shoe_size": 44}}),
            "shoe_size",
        ),
        (json!({"image": b64, "emr": {"spo2": 300}}), "spo2"),
        (json!({"image": "%%% not base64", "emr": {}}), "base64"),
        (json!({"image": "bm90IGFuIGltYWdl", "emr": {}}), "PNG"),
        (json!({"emr": {}}), "image"),
    ] {
        let (st, answer) = s.post("/exam", &body.to_string());
        assert_eq!(st, 422, "{answer}");
        assert!(answer.contains(what), "{what}: {answer}");
    }
    let (st, answer) = s.post("/classify", "x");
    assert_eq!(st, 404, "{answer}");
}

/// Sentence pairs: `/predict` reads TEI's pair and batch forms and runs the head on
/// `[CLS] a [SEP] b [SEP]` with type ids 0/1; `/rerank` scores texts against a query with a
/// one-output cross-encoder, best first. Both are checked against `TextEncoder` in this
/// process, whose type ids are shown to matter.
#[test]
fn predict_pairs_and_rerank_match_the_encoder() {
    let Some(minilm) = minilm("predict_pairs_and_rerank_match_the_encoder") else {
        return;
    };
    let _g = serial();
    let cls = tiny_model(&minilm, "serve-pairs");
    let cross =
        common::tiny_mobilebert_with_labels(&minilm, "serve-rerank", 256, &["relevance"], 2);
    let close = |got: f64, want: f32, what: &str| {
        assert!(
            (got - f64::from(want)).abs() <= 1e-6 + 1e-6 * f64::from(want).abs(),
            "{what}: {got} vs {want}"
        );
    };
    let (a, b) = (TEXTS[0], TEXTS[1]);
    {
        let enc = reference(cls.path());
        let pair = enc.classify_pairs(&[(a, b)]).expect("pair").remove(0);
        // The type ids reach the model: the same tokens typed all 0 score otherwise.
        let (ids, _) = enc.encode_pairs(&[(a, b)]).expect("encode");
        let untyped = enc.classify_ids(&ids).expect("untyped").remove(0);
        assert_ne!(bits(&pair), bits(&untyped), "type ids changed nothing");
        let single = enc
            .classify_ids(&enc.encode(&[a]).expect("a"))
            .expect("single")
            .remove(0);
        let labels = ["normal", "abnormal"];
        let s = Server::start(cls.path(), &[]);
        // ["a", "b"] is one pair (TEI), answered as one list; raw_scores gives the logits.
        let (st, body) = s.post(
            "/predict",
            &json!({"inputs": [a, b], "raw_scores": true}).to_string(),
        );
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        for e in v.as_array().expect("one list") {
            let j = labels.iter().position(|l| e["label"] == *l).expect("label");
            close(e["score"].as_f64().expect("score"), pair[j], "pair logit");
        }
        // A batch mixing a text and a pair: a list of lists, each as alone.
        let (st, body) = s.post("/predict", &json!({"inputs": [[a], [a, b]]}).to_string());
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        for (k, want) in [(0, &single), (1, &pair)] {
            let p = medkern::model::softmax(want);
            for e in v[k].as_array().expect("list") {
                let j = labels.iter().position(|l| e["label"] == *l).expect("label");
                close(e["score"].as_f64().expect("score"), p[j], "batch softmax");
            }
        }
        let (st, body) = s.post("/predict", &json!({"inputs": [[a, b, a]]}).to_string());
        assert_eq!(st, 422, "{body}");
        // A two-class head is no cross-encoder.
        let (st, body) = s.post("/rerank", &json!({"query": a, "texts": [b]}).to_string());
        assert_eq!(st, 422, "{body}");
        assert!(body.contains("cross-encoder"), "{body}");
    }
    let enc = reference(cross.path());
    let s = Server::start(cross.path(), &[]);
    let (st, body) = s.post(
        "/rerank",
        &json!({"query": TEXTS[2], "texts": TEXTS, "return_text": true}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let ranks = v.as_array().expect("ranks");
    assert_eq!(ranks.len(), TEXTS.len(), "{body}");
    let mut seen = vec![false; TEXTS.len()];
    let mut last = f64::INFINITY;
    for r in ranks {
        let i = r["index"].as_u64().expect("index") as usize;
        assert!(!seen[i], "index {i} twice: {body}");
        seen[i] = true;
        assert_eq!(r["text"], TEXTS[i], "{body}");
        let logit = enc
            .classify_pairs(&[(TEXTS[2], TEXTS[i])])
            .expect("pair")
            .remove(0)[0];
        let want = (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32;
        let got = r["score"].as_f64().expect("score");
        close(got, want, "rerank sigmoid");
        assert!(got <= last, "not best first: {body}");
        last = got;
    }
    let (st, body) = s.post(
        "/rerank",
        &json!({"query": TEXTS[2], "texts": [TEXTS[0]], "raw_scores": true}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let logit = enc.classify_pairs(&[(TEXTS[2], TEXTS[0])]).expect("pair")[0][0];
    close(v[0]["score"].as_f64().expect("score"), logit, "rerank raw");
    assert!(v[0].get("text").is_none(), "{body}");
    let (st, body) = s.post("/rerank", &json!({"query": "q", "texts": []}).to_string());
    assert_eq!(st, 422, "{body}");
    // The query is paired with each text: their product of bytes is bounded (413) before any
    // pair is made (16 x the 2 MiB body limit; 4096 texts of a 9 KiB query pass that).
    let (st, body) = s.post(
        "/rerank",
        &json!({"query": "q".repeat(9000), "texts": vec!["t"; 4096]}).to_string(),
    );
    assert_eq!(st, 413, "{body}");
    assert!(body.contains("16 x max_request_bytes"), "{body}");
    // /predict on a one-output head answers the sigmoid of its logit.
    let (st, body) = s.post(
        "/predict",
        &json!({"inputs": [TEXTS[2], TEXTS[0]]}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let logit = enc.classify_pairs(&[(TEXTS[2], TEXTS[0])]).expect("pair")[0][0];
    let want = (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32;
    close(
        v[0]["score"].as_f64().expect("score"),
        want,
        "predict sigmoid",
    );
}

/// A request that fails inside a batch fails alone: a sentence pair for a model with one
/// token type (type id 1 is out of its table) gets its error, while a text batched with it
/// (the batch waits 1.5 s for company) is answered as if alone.
#[test]
fn a_failing_request_does_not_fail_its_batch() {
    let Some(minilm) = minilm("a_failing_request_does_not_fail_its_batch") else {
        return;
    };
    let _g = serial();
    let dir = common::tiny_mobilebert_with_labels(
        &minilm,
        "serve-one-type",
        128,
        &["normal", "abnormal"],
        1,
    );
    let enc = reference(dir.path());
    let want = enc
        .classify_ids(&enc.encode(&[TEXTS[0]]).expect("encode"))
        .expect("classify")
        .remove(0);
    let s = Server::start(dir.path(), &["--max-wait-us", "1500000"]);
    let url = s.url("/predict");
    let pair = {
        let url = url.clone();
        std::thread::spawn(move || {
            let body = json!({"inputs": [TEXTS[0], TEXTS[1]], "raw_scores": true});
            post(&agent(), &url, &body.to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let (st, body) = post(
        &agent(),
        &url,
        &json!({"inputs": TEXTS[0], "raw_scores": true}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    for e in v.as_array().expect("list") {
        let j = usize::from(e["label"] == "abnormal");
        assert_eq!(
            e["score"].as_f64().map(|x| x as f32),
            Some(want[j]),
            "{body}"
        );
    }
    let (st, body) = pair.join().expect("pair client");
    assert_eq!(st, 500, "{body}");
    assert!(body.contains("type"), "{body}");
    let (_, metrics) = s.get("/metrics");
    let batches = metric(&metrics, "medkern_batch_size_requests_count");
    assert_eq!(batches, 1.0, "the two requests were not batched: {metrics}");
}

/// `/predict` runs the classification head: softmax of the logits, best first, per input.
#[test]
fn predict_matches_the_head() {
    let Some(minilm) = minilm("predict_matches_the_head") else {
        return;
    };
    let _g = serial();
    let tiny = tiny_model(&minilm, "serve-predict");
    let enc = reference(tiny.path());
    let s = Server::start(tiny.path(), &[]);
    let (st, body) = s.post("/predict", &json!({"inputs": TEXTS}).to_string());
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let logits = enc
        .classify_ids(&enc.encode(&TEXTS).expect("encode"))
        .expect("classify");
    for (i, l) in logits.iter().enumerate() {
        let best = if l[1] > l[0] { "abnormal" } else { "normal" };
        assert_eq!(v[i][0]["label"], best, "{body}");
        let p = v[i][0]["score"].as_f64().expect("score");
        let m = l[0].max(l[1]);
        let want = 1.0 / (f64::from(l[0] - m).exp() + f64::from(l[1] - m).exp());
        assert!((p - want).abs() < 1e-6, "{p} vs {want}");
    }
    // One text: one list, not a list of lists.
    let (st, body) = s.post("/predict", &json!({"inputs": TEXTS[0]}).to_string());
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(v[0]["label"].is_string(), "{body}");
}

/// The value of the first sample line of `name` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn sigterm_answers_the_queued_requests_then_exits_0() {
    let Some(dir) = minilm("sigterm_answers_the_queued_requests_then_exits_0") else {
        return;
    };
    let _g = serial();
    // A long batching wait keeps the requests in the server while the signal arrives.
    let mut s = Server::start(&dir, &["--max-wait-us", "1500000"]);
    let url = s.url("/embed");
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                post(
                    &agent(),
                    &url,
                    &json!({"inputs": format!("text {i}")}).to_string(),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let status = s.terminate(Duration::from_secs(30));
    for c in clients {
        let (st, body) = c.join().expect("client");
        assert_eq!(st, 200, "{body}");
        assert_eq!(parse_rows(&body)[0].len(), 384);
    }
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn curl_embed() {
    let Some(dir) = minilm("curl_embed") else {
        return;
    };
    if Command::new("curl").arg("--version").output().is_err() {
        skip("curl_embed", "curl is not on PATH");
        return;
    }
    let _g = serial();
    let enc = reference(&dir);
    let s = Server::start(&dir, &[]);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(json!({"inputs": TEXTS[0]}).to_string())
        .arg(s.url("/embed"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = parse_rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(bits(&rows[0]), bits(&single(&enc, TEXTS[0], true)));
}

/// `.venv-clients/bin/python` (scripts/setup-pyclients) when present, else `python3`.
fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-clients/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

#[test]
fn python_requests_and_openai_clients() {
    let Some(dir) = minilm("python_requests_and_openai_clients") else {
        return;
    };
    let py = python();
    let probe = Command::new(&py)
        .args(["-c", "import requests, openai"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        skip(
            "python_requests_and_openai_clients",
            &format!(
                "{} cannot import requests and openai (run scripts/setup-pyclients)",
                py.display()
            ),
        );
        return;
    }
    let _g = serial();
    let enc = reference(&dir);
    let s = Server::start(&dir, &[]);
    let script = r#"
import json, sys, requests, openai
base = sys.argv[1]
texts = json.loads(sys.argv[2])
r = requests.post(base + "/embed", json={"inputs": texts}, timeout=60)
r.raise_for_status()
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=60)
o = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
print(json.dumps({"requests": r.json(), "openai": [d.embedding for d in o.data],
                  "tokens": o.usage.prompt_tokens}))
"#;
    let out = Command::new(&py)
        .args(["-c", script])
        .arg(&s.base)
        .arg(json!(TEXTS).to_string())
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("python output");
    let tokens: usize = enc
        .encode(&TEXTS)
        .expect("encode")
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(v["tokens"], tokens);
    for client in ["requests", "openai"] {
        let rows: Vec<Vec<f32>> = serde_json::from_value(v[client].clone()).expect("rows");
        for (t, r) in TEXTS.iter().zip(&rows) {
            let want = single(&enc, t, true);
            let diff = r
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                r.len() == want.len() && diff <= 1e-6,
                "{client} {t:?}: {diff}"
            );
        }
    }
}
