//! t-SNE maps and benchmark charts (src/viz): the embedding separates planted clusters (and
//! does not invent a separation in one cluster), is deterministic in its seed; the PNGs and
//! SVGs open, have their size and show what they should; the CLI writes them; and the JSON of
//! scripts/bench_report.py parses into what `medkern chart` reads.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
// This file runs the `medkern` binary (feature `cli`).
#![cfg(feature = "cli")]

mod common;
use common::{SeedRng, TempDir};
use medkern::viz::chart::{self, BenchReport};
use medkern::viz::plot::{self, Format, Scatter, class_color};
use medkern::viz::tsne::{self, TsneOptions};
use std::path::Path;
use std::process::Command;

const DIMS: usize = 128;

/// `n_a` points around the origin and `n_b` around a centre `offset` away along a random
/// direction, N(0, 1) per coordinate, with one planted outlier per cluster (5 sigma on one
/// axis). Row-major.
fn two_clusters(rng: &mut SeedRng, n_a: usize, n_b: usize, offset: f64) -> Vec<f64> {
    let dir: Vec<f64> = (0..DIMS).map(|_| rng.normal()).collect();
    let norm = dir.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut v = Vec::with_capacity((n_a + n_b) * DIMS);
    for i in 0..n_a + n_b {
        let shift = if i < n_a { 0.0 } else { offset };
        for (d, u) in dir.iter().enumerate() {
            let outlier = if (i == 3 || i == n_a + 5) && d == 7 {
                5.0
            } else {
                0.0
            };
            v.push(rng.normal() + shift * u / norm + outlier);
        }
    }
    v
}

/// The fraction of 2-d points nearer the centroid of their own label (0 or 1) than the other.
fn nearer_own_centroid(y: &[[f64; 2]], labels: &[usize]) -> f64 {
    let mut c = [[0.0; 2]; 2];
    let mut n = [0.0; 2];
    for (p, &l) in y.iter().zip(labels) {
        c[l][0] += p[0];
        c[l][1] += p[1];
        n[l] += 1.0;
    }
    for l in 0..2 {
        c[l][0] /= n[l];
        c[l][1] /= n[l];
    }
    let d = |p: &[f64; 2], c: &[f64; 2]| (p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2);
    let good = y
        .iter()
        .zip(labels)
        .filter(|&(p, &l)| d(p, &c[l]) < d(p, &c[1 - l]))
        .count();
    good as f64 / y.len() as f64
}

#[test]
fn tsne_separates_two_planted_clusters_and_is_deterministic() {
    let mut rng = SeedRng::new(11);
    // 40 + 40 points, centres 12 sigma apart; uneven sizes too (33 + 7).
    for (na, nb) in [(40, 40), (33, 7)] {
        let x = two_clusters(&mut rng, na, nb, 12.0);
        let labels: Vec<usize> = (0..na + nb).map(|i| usize::from(i >= na)).collect();
        let y = tsne::tsne(&x, DIMS, 5).expect("tsne");
        assert_eq!(y.len(), na + nb);
        assert!(y.iter().all(|p| p[0].is_finite() && p[1].is_finite()));
        let frac = nearer_own_centroid(&y, &labels);
        assert_eq!(
            frac, 1.0,
            "{na}+{nb}: only {frac} nearer their own centroid"
        );
        // Equal seeds: bit-identical; another seed: another layout.
        assert_eq!(tsne::tsne(&x, DIMS, 5).expect("tsne"), y);
        assert_ne!(tsne::tsne(&x, DIMS, 6).expect("tsne"), y);
    }
}

/// Negative control: one Gaussian cluster labelled in two arbitrary halves must not pass the
/// separation check above (the check can fail).
#[test]
fn tsne_check_fails_on_one_cluster() {
    let mut rng = SeedRng::new(12);
    let x = two_clusters(&mut rng, 40, 40, 0.0);
    let labels: Vec<usize> = (0..80).map(|i| usize::from(i >= 40)).collect();
    let y = tsne::tsne(&x, DIMS, 5).expect("tsne");
    let frac = nearer_own_centroid(&y, &labels);
    assert!(frac < 0.9, "one cluster looked separated: {frac}");
}

#[test]
fn tsne_few_points_and_limits() {
    // Odd and tail sizes: few points clamp the perplexity to (n - 1) / 3; every run gives n
    // finite points, the same for the same seed; duplicated rows (distance ties) included.
    for n in [4usize, 7, 33] {
        for dims in [1usize, 7, 33] {
            let mut rng = SeedRng::new((n * 100 + dims) as u64);
            let mut x: Vec<f64> = (0..n * dims).map(|_| rng.normal()).collect();
            x.copy_within(0..dims, dims); // row 1 = row 0
            let y = tsne::tsne(&x, dims, 1).expect("small input");
            assert_eq!(y.len(), n);
            assert!(y.iter().flatten().all(|v| v.is_finite()), "{n}x{dims}");
            assert_eq!(tsne::tsne(&x, dims, 1).expect("again"), y, "{n}x{dims}");
        }
    }
    assert_eq!(tsne::effective_perplexity(30.0, 7), 2.0);
    // 1..=3 points, over the limit, ragged, non-finite: errors naming the problem.
    for n in 1..=3 {
        let e = tsne::tsne(&vec![1.5; n * 2], 2, 1).expect_err("too few");
        assert!(e.to_string().contains("points"), "{e}");
    }
    let e = tsne::tsne(&vec![0.5; tsne::MAX_TSNE_POINTS + 1], 1, 1).expect_err("too many");
    assert!(
        e.to_string().contains(&tsne::MAX_TSNE_POINTS.to_string()),
        "{e}"
    );
    assert!(tsne::tsne(&[0.5; 9], 2, 1).is_err());
    let mut x = vec![0.25; 10];
    x[4] = f64::INFINITY;
    assert!(tsne::tsne(&x, 2, 1).is_err());
    // Edge options run: one iteration, the widest angle, a perplexity above the clamp.
    let x: Vec<f64> = (0..40).map(|i| f64::from(i % 9) * 0.37).collect();
    for o in [
        TsneOptions {
            epochs: 1,
            ..TsneOptions::default()
        },
        TsneOptions {
            theta: 2.0,
            perplexity: 1000.0,
            ..TsneOptions::default()
        },
    ] {
        assert_eq!(tsne::tsne_with(&x, 4, &o).expect("edge options").len(), 10);
    }
    let o = TsneOptions {
        theta: 0.0,
        ..TsneOptions::default()
    };
    assert!(tsne::tsne_with(&[0.1, 0.2, 0.3, 0.4, 0.5], 1, &o).is_err());
}

/// Distinct colours in an RGB PNG, and how many pixels have exactly `c`.
fn png_stats(bytes: &[u8]) -> (u32, u32, usize, impl Fn([u8; 3]) -> usize) {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .expect("PNG decodes")
        .to_rgb8();
    let (w, h) = img.dimensions();
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let pixels = colours.clone();
    colours.sort_unstable();
    colours.dedup();
    (w, h, colours.len(), move |c: [u8; 3]| {
        pixels.iter().filter(|&&p| p == c).count()
    })
}

fn rgb(c: plotters::style::RGBColor) -> [u8; 3] {
    [c.0, c.1, c.2]
}

#[test]
fn scatter_png_and_svg_show_both_classes() {
    let mut rng = SeedRng::new(3);
    let pts: Vec<[f64; 2]> = (0..60)
        .map(|i| {
            let s = if i < 30 { -5.0 } else { 5.0 };
            [s + rng.normal(), rng.normal()]
        })
        .collect();
    let labels: Vec<usize> = (0..60).map(|i| usize::from(i >= 30)).collect();
    let classes = ["no_sepsis".to_string(), "sepsis".to_string()];
    let s = Scatter {
        title: "planted scatter",
        points: &pts,
        labels: &labels,
        classes: &classes,
    };
    let png = plot::render(&s, Format::Png, (640, 480)).expect("png");
    let (w, h, distinct, count) = png_stats(&png);
    assert_eq!((w, h), (640, 480));
    assert!(distinct >= 8, "only {distinct} colours: blank?");
    for c in 0..2 {
        let n = count(rgb(class_color(c)));
        assert!(n > 100, "class {c}: {n} pixels of its colour");
    }
    // The legend and title are text: dark pixels beyond the axes' few.
    let svg = String::from_utf8(plot::render(&s, Format::Svg, (640, 480)).expect("svg")).unwrap();
    for t in ["planted scatter", "no_sepsis (30)", "sepsis (30)", "<svg"] {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
    // Bad figures are errors, not panics.
    let bad = Scatter {
        labels: &labels[..59],
        ..s
    };
    assert!(plot::render(&bad, Format::Png, (640, 480)).is_err());
    let bad_label = vec![2usize; 60];
    let bad = Scatter {
        labels: &bad_label,
        ..s
    };
    assert!(plot::render(&bad, Format::Svg, (640, 480)).is_err());
    assert!(plot::render(&s, Format::Png, (0, 480)).is_err());
}

#[test]
fn writer_is_atomic_and_refuses_folders() {
    let dir = TempDir::new("viz-writer");
    let p = dir.path().join("a.png");
    plot::write_atomic(&p, b"one").expect("write");
    plot::write_atomic(&p, b"two").expect("overwrite");
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let sub = dir.path().join("sub.png");
    std::fs::create_dir(&sub).unwrap();
    let e = plot::write_atomic(&sub, b"x").expect_err("folder");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(plot::write_atomic(&dir.path().join("missing/x.png"), b"x").is_err());
    assert!(Format::from_path(Path::new("map.jpg")).is_err());
    assert_eq!(
        Format::from_path(Path::new("map.SVG")).unwrap(),
        Format::Svg
    );
}

fn fixture() -> BenchReport {
    BenchReport::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench_report.json"),
    )
    .expect("fixture report")
}

/// Checks the four chart files of `report` in `dir`: PNGs of the right size, not blank; each
/// SVG names each kernel it draws.
fn check_charts(report: &BenchReport, dir: &Path) {
    let (written, skipped) = chart::write_charts(report, dir).expect("charts");
    assert_eq!(written.len(), 4, "{written:?} {skipped:?}");
    assert!(skipped.is_empty(), "{skipped:?}");
    let roof = std::fs::read(dir.join("roofline.png")).unwrap();
    let (w, h, distinct, _) = png_stats(&roof);
    assert_eq!((w, h), (1200, 800));
    assert!(distinct >= 8, "roofline.png: {distinct} colours");
    let n_ratio = report.ratio_kernels().len();
    let bars = std::fs::read(dir.join("peer_ratio.png")).unwrap();
    let (w, h, distinct, _) = png_stats(&bars);
    assert_eq!((w, h), (1200, chart::PeerRatio::height(n_ratio)));
    assert!(distinct >= 8, "peer_ratio.png: {distinct} colours");
    let roof_svg = std::fs::read_to_string(dir.join("roofline.svg")).unwrap();
    for k in report.roofline_kernels() {
        assert!(roof_svg.contains(&k.name), "roofline.svg lacks {}", k.name);
    }
    assert!(roof_svg.contains("compute ceiling") && roof_svg.contains("bandwidth ceiling"));
    let bars_svg = std::fs::read_to_string(dir.join("peer_ratio.svg")).unwrap();
    for k in report.ratio_kernels() {
        assert!(
            bars_svg.contains(&k.name),
            "peer_ratio.svg lacks {}",
            k.name
        );
    }
    assert!(bars_svg.contains("1.0 = PyTorch parity"));
}

#[test]
fn charts_of_the_fixture_report() {
    let r = fixture();
    assert_eq!(r.roofline_kernels().len(), 4);
    assert_eq!(r.ratio_kernels().len(), 4);
    let dir = TempDir::new("viz-charts");
    check_charts(&r, dir.path());
    // Through the CLI too.
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .arg("chart")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench_report.json"))
        .arg("--out")
        .arg(dir.path().join("cli"))
        .output()
        .expect("run medkern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["written"].as_array().map(Vec::len), Some(4));
    // Bad reports: another schema, a negative figure, not JSON.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench_report.json"),
    )
    .unwrap();
    assert!(BenchReport::from_json(&text.replace("report/1", "report/9")).is_err());
    assert!(BenchReport::from_json(&text.replace("\"ms\": 0.5", "\"ms\": -0.5")).is_err());
    assert!(BenchReport::from_json("{").is_err());
}

/// Writes a criterion result the way criterion 0.8 lays it out:
/// `<home>/<group>/<bench>/new/{benchmark.json, estimates.json}`.
fn criterion_result(home: &Path, dir: &str, full_id: &str, throughput: serde_json::Value, ns: f64) {
    let d = home.join(dir).join("new");
    std::fs::create_dir_all(&d).unwrap();
    let meta = serde_json::json!({"group_id": full_id.split('/').next(), "full_id": full_id,
        "throughput": throughput});
    std::fs::write(d.join("benchmark.json"), meta.to_string()).unwrap();
    let est = serde_json::json!({"median": {"point_estimate": ns}});
    std::fs::write(d.join("estimates.json"), est.to_string()).unwrap();
}

#[test]
fn bench_report_json_parses_into_the_chart_input() {
    let test = "viz::bench_report_json_parses_into_the_chart_input";
    if Command::new("python3").arg("--version").output().is_err() {
        common::skip(test, "no python3");
        return;
    }
    let dir = TempDir::new("viz-bench-report");
    let home = dir.path().join("criterion");
    // A GEMM (FLOPs only; its bytes come from the peer), a conv (FLOPs and bytes), a
    // LayerNorm (bytes only) and a BERT forward (sequences: on neither chart).
    criterion_result(
        &home,
        "gemm/f16_m64",
        "gemm/f16/m64n64k64",
        serde_json::json!({"Elements": 524_288}),
        2_000.0,
    );
    criterion_result(
        &home,
        "conv/a",
        "conv/f16/n1c8h8",
        serde_json::json!({"ElementsAndBytes": {"elements": 9_000_000, "bytes": 300_000}}),
        30_000.0,
    );
    criterion_result(
        &home,
        "layernorm/a",
        "layernorm/f16/r64c768",
        serde_json::json!({"Bytes": 196_608}),
        1_500.0,
    );
    criterion_result(
        &home,
        "bert/a",
        "bert/dense/b8s128",
        serde_json::json!({"Elements": 8}),
        900_000.0,
    );
    let peer = dir.path().join("peer.json");
    std::fs::write(&peer, serde_json::json!({
        "device": "fake device", "torch": "0",
        "ceilings": {"copy_GBps": 2000.0, "bf16_matmul_TFLOPs": 500.0},
        "results": {"gemm/f16/m64n64k64": {"ms": 0.004, "work": 524_288, "unit": "flop", "bytes": 24_576}}
    }).to_string()).unwrap();
    let out_json = dir.path().join("report.json");
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_report.py"))
        .arg(&home)
        .arg(&peer)
        .arg("--json")
        .arg(&out_json)
        .output()
        .expect("run bench_report.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("### gemm"));
    let r = BenchReport::load(&out_json).expect("the renderer reads the script's JSON");
    assert_eq!(r.device.as_deref(), Some("fake device"));
    assert_eq!(r.ceilings.flops_per_s, Some(500e12));
    assert_eq!(r.ceilings.bytes_per_s, Some(2000e9));
    assert_eq!(r.kernels.len(), 4);
    let k = |name: &str| r.kernels.iter().find(|k| k.name == name).expect(name);
    let rel = |a: f64, b: f64| ((a - b) / b).abs() < 1e-12;
    let gemm = k("gemm/f16/m64n64k64");
    assert_eq!(gemm.group, "gemm");
    assert!(rel(gemm.flops_per_s.unwrap(), 524_288.0 / 2e-6));
    assert!(rel(gemm.intensity.unwrap(), 524_288.0 / 24_576.0));
    assert!(rel(gemm.peer_ratio.unwrap(), 0.004 / 0.002));
    let conv = k("conv/f16/n1c8h8");
    assert!(rel(conv.intensity.unwrap(), 30.0));
    assert!(rel(conv.bytes_per_s.unwrap(), 300_000.0 / 30e-6));
    assert_eq!(conv.peer_ratio, None);
    let ln = k("layernorm/f16/r64c768");
    assert!(rel(ln.bytes_per_s.unwrap(), 196_608.0 / 1.5e-6));
    assert_eq!((ln.flops_per_s, ln.intensity), (None, None));
    let bert = k("bert/dense/b8s128");
    assert_eq!((bert.flops_per_s, bert.bytes_per_s), (None, None));
    assert_eq!(r.roofline_kernels().len(), 2);
    assert_eq!(r.ratio_kernels().len(), 1);
    check_charts(&r, &dir.path().join("charts"));
}

/// `n` distinct generated PNGs (gradients and stripes) in `dir`.
fn make_images(dir: &Path, n: usize) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("frame{i}.png"));
            let k = i as u32 + 1;
            image::RgbImage::from_fn(40, 40, |x, y| {
                image::Rgb([
                    ((x * k * 7) % 256) as u8,
                    ((y * (k + 3) * 5) % 256) as u8,
                    (((x + y) * k) % 256) as u8,
                ])
            })
            .save(&p)
            .expect("save");
            p
        })
        .collect()
}

fn run_medkern(args: &[&str], files: &[std::path::PathBuf]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medkern"))
        .args(args)
        .args(files)
        .output()
        .expect("run medkern");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v, err)
}

#[test]
fn cli_classify_and_autoencode_draw_tsne_maps() {
    let dir = TempDir::new("viz-cli");
    let files = make_images(dir.path(), 6);
    let map = dir.path().join("map.png");
    let coords = dir.path().join("coords.json");
    let (map_s, coords_s) = (map.to_str().unwrap(), coords.to_str().unwrap());
    let (rc, v, err) = run_medkern(
        &[
            "classify",
            "--model",
            "sepsis",
            "--device",
            "cpu",
            "--tsne",
            map_s,
            "--tsne-json",
            coords_s,
        ],
        &files,
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(v["tsne"]["points"], 6, "{v}");
    let (w, h, distinct, _) = png_stats(&std::fs::read(&map).expect("map written"));
    assert_eq!((w, h), (900, 700));
    assert!(distinct >= 8, "{distinct} colours");
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&coords).expect("coords written")).unwrap();
    let pts = c["points"].as_array().expect("points");
    assert_eq!(pts.len(), 6);
    for (p, f) in pts.iter().zip(&files) {
        assert_eq!(p["file"], f.display().to_string());
        assert!(p["x"].as_f64().is_some_and(f64::is_finite));
        let class = p["class"].as_str().unwrap();
        assert!(class == "sepsis" || class == "no_sepsis", "{class}");
    }
    // The class of each point is the one printed for its image.
    let results = v["results"].as_array().unwrap();
    for (p, r) in pts.iter().zip(results) {
        assert_eq!(p["class"], r["class"]);
    }
    // Same seed: same coordinates; the map is rewritten in place.
    let (rc, _, err) = run_medkern(
        &[
            "classify",
            "--model",
            "sepsis",
            "--device",
            "cpu",
            "--tsne-json",
            coords_s,
        ],
        &files,
    );
    assert_eq!(rc, 0, "{err}");
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&coords).unwrap()).unwrap();
    assert_eq!(again["points"], c["points"]);

    // autoencode: SVG coloured by k-means cluster (default k = round(sqrt(6 / 2)) = 2).
    let svg = dir.path().join("codes.svg");
    let (rc, v, err) = run_medkern(
        &[
            "autoencode",
            "--device",
            "cpu",
            "--tsne",
            svg.to_str().unwrap(),
        ],
        &files,
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(v["kmeans"]["k"], 2, "{v}");
    assert_eq!(v["tsne"]["dims"], 1152);
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(
        text.contains("cluster 0") && text.contains("cluster 1"),
        "legend"
    );

    // Errors: a map name that is neither .png nor .svg (before any image is read), a model
    // without the 128-d feature, too few images (the results are still printed).
    let (rc, _, err) = run_medkern(
        &[
            "classify", "--model", "sepsis", "--device", "cpu", "--tsne", "map.jpg",
        ],
        &files,
    );
    assert_eq!(rc, 1);
    assert!(err.contains(".png or .svg"), "{err}");
    let (rc, _, err) = run_medkern(
        &[
            "classify", "--model", "lite0", "--device", "cpu", "--tsne", map_s,
        ],
        &files,
    );
    assert_eq!(rc, 1);
    assert!(err.contains("--model sepsis"), "{err}");
    let (rc, v, err) = run_medkern(
        &[
            "classify", "--model", "sepsis", "--device", "cpu", "--tsne", map_s,
        ],
        &files[..3],
    );
    assert_eq!(rc, 1, "{err}");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(3));
    assert!(
        v["tsne_error"]
            .as_str()
            .is_some_and(|e| e.contains("3 image")),
        "{v}"
    );
    // More images than a map takes: refused before any is read (--max-batch raised past it).
    let many: Vec<std::path::PathBuf> = (0..=tsne::MAX_TSNE_POINTS)
        .map(|i| dir.path().join(format!("absent{i}.png")))
        .collect();
    let (rc, _, err) = run_medkern(
        &[
            "classify",
            "--model",
            "sepsis",
            "--device",
            "cpu",
            "--max-batch",
            "30000",
            "--tsne",
            map_s,
        ],
        &many,
    );
    assert_eq!(rc, 1);
    assert!(err.contains("at most 20000"), "{err}");
    // An output onto an input image is refused.
    let (rc, _, err) = run_medkern(
        &[
            "classify",
            "--model",
            "sepsis",
            "--device",
            "cpu",
            "--tsne-json",
            files[0].to_str().unwrap(),
        ],
        &files,
    );
    assert_eq!(rc, 1);
    assert!(err.contains("input images"), "{err}");
}
