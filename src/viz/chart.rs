//! Benchmark charts from the JSON that scripts/bench_report.py writes on the GPU host
//! (`--json`): a roofline (achieved FLOP/s against arithmetic intensity, log-log, under the
//! compute and bandwidth ceilings measured in the same run) and bars of each kernel's speed
//! relative to its PyTorch peer. `medkern chart REPORT.json --out DIR` draws both.

use super::plot::{self, FONT, Figure, Format, class_color, draw_err};
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const OP: &str = "chart";

/// The `schema` value of the report this module reads.
pub const REPORT_SCHEMA: &str = "medkern-bench-report/1";
/// Largest report file read.
pub const MAX_REPORT_BYTES: u64 = 16 << 20;
/// Most kernels one report may list.
pub const MAX_REPORT_KERNELS: usize = 2000;

/// Ceilings measured on the device in the same run (scripts/peer_bench.py): a large
/// device-to-device copy and a bf16 8192³ matmul.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Compute ceiling, FLOP/s.
    #[serde(default)]
    pub flops_per_s: Option<f64>,
    /// Memory bandwidth ceiling, bytes/s.
    #[serde(default)]
    pub bytes_per_s: Option<f64>,
    /// How each was measured.
    #[serde(default)]
    pub source: Option<String>,
}

/// One benchmark (a criterion id) of the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelResult {
    /// The criterion id, e.g. `gemm/f16/m4096n4096k4096`.
    pub name: String,
    /// Its bench group (the id's first part).
    pub group: String,
    /// Median milliseconds per call.
    #[serde(default)]
    pub ms: Option<f64>,
    #[serde(default)]
    pub flops_per_call: Option<f64>,
    #[serde(default)]
    pub bytes_per_call: Option<f64>,
    /// Achieved FLOP/s.
    #[serde(default)]
    pub flops_per_s: Option<f64>,
    /// Achieved bytes/s.
    #[serde(default)]
    pub bytes_per_s: Option<f64>,
    /// FLOPs per byte moved.
    #[serde(default)]
    pub intensity: Option<f64>,
    /// PyTorch's median ms per call on the same problem.
    #[serde(default)]
    pub peer_ms: Option<f64>,
    /// Peer time / ours: > 1 means medkern is faster.
    #[serde(default)]
    pub peer_ratio: Option<f64>,
}

/// The machine-readable bench report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`REPORT_SCHEMA`].
    pub schema: String,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub ceilings: Ceilings,
    pub kernels: Vec<KernelResult>,
}

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

fn positive(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite() && *x > 0.0)
}

impl BenchReport {
    /// Parses and checks a report: the schema, at most [`MAX_REPORT_KERNELS`] kernels, no
    /// negative or non-finite figure.
    pub fn from_json(text: &str) -> Result<BenchReport> {
        let r: BenchReport = serde_json::from_str(text)
            .map_err(|e| invalid("report", format!("not a bench report: {e}")))?;
        if r.schema != REPORT_SCHEMA {
            return Err(invalid(
                "report",
                format!("schema {:?}; expected {REPORT_SCHEMA:?}", r.schema),
            ));
        }
        if r.kernels.len() > MAX_REPORT_KERNELS {
            return Err(invalid(
                "report",
                format!(
                    "{} kernels; expected at most {MAX_REPORT_KERNELS}",
                    r.kernels.len()
                ),
            ));
        }
        let c = &r.ceilings;
        for (what, v) in [
            ("flops_per_s", c.flops_per_s),
            ("bytes_per_s", c.bytes_per_s),
        ] {
            if v.is_some() && positive(v).is_none() {
                return Err(invalid(
                    "report",
                    format!("ceiling {what} = {v:?}; expected a positive number"),
                ));
            }
        }
        for k in &r.kernels {
            for v in [
                k.ms,
                k.flops_per_call,
                k.bytes_per_call,
                k.flops_per_s,
                k.bytes_per_s,
                k.intensity,
                k.peer_ms,
                k.peer_ratio,
            ]
            .into_iter()
            .flatten()
            {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(
                        "report",
                        format!("kernel {:?} has the figure {v}; expected >= 0", k.name),
                    ));
                }
            }
        }
        Ok(r)
    }

    /// Reads a report file (a regular file of at most [`MAX_REPORT_BYTES`]).
    pub fn load(path: &Path) -> Result<BenchReport> {
        let bytes =
            crate::input::read_regular_max(OP, path, "a bench report (JSON)", MAX_REPORT_BYTES)?;
        let text = String::from_utf8(bytes)
            .map_err(|e| invalid("report", format!("{}: not UTF-8: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Invalid { detail, .. } => {
                invalid("report", format!("{}: {detail}", path.display()))
            }
            e => e,
        })
    }

    /// Kernels placed on the roofline: positive achieved FLOP/s and intensity.
    pub fn roofline_kernels(&self) -> Vec<&KernelResult> {
        self.kernels
            .iter()
            .filter(|k| positive(k.flops_per_s).is_some() && positive(k.intensity).is_some())
            .collect()
    }

    /// Kernels with a peer ratio.
    pub fn ratio_kernels(&self) -> Vec<&KernelResult> {
        self.kernels
            .iter()
            .filter(|k| positive(k.peer_ratio).is_some())
            .collect()
    }

    fn groups(&self) -> Vec<&str> {
        let mut g: Vec<&str> = Vec::new();
        for k in &self.kernels {
            if !g.contains(&k.group.as_str()) {
                g.push(&k.group);
            }
        }
        g
    }
}

/// The roofline figure of a report.
pub struct Roofline<'a>(pub &'a BenchReport);

impl Figure for Roofline<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let r = self.0;
        let ks = r.roofline_kernels();
        if ks.is_empty() {
            return Err(invalid(
                "report",
                "no kernel with both achieved FLOP/s and arithmetic intensity".into(),
            ));
        }
        let peak = positive(r.ceilings.flops_per_s);
        let bw = positive(r.ceilings.bytes_per_s);
        let xs = ks.iter().filter_map(|k| k.intensity);
        let ys = ks.iter().filter_map(|k| k.flops_per_s);
        let ridge = peak.zip(bw).map(|(p, b)| p / b);
        let (mut x0, mut x1) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
        let (mut y0, mut y1) = ys.fold((f64::INFINITY, 0.0f64), |(a, b), y| (a.min(y), b.max(y)));
        if let Some(rg) = ridge {
            x0 = x0.min(rg);
            x1 = x1.max(rg);
        }
        if let Some(p) = peak {
            y1 = y1.max(p);
        }
        if let Some(b) = bw {
            y0 = y0.min(b * x0 / 2.0);
        }
        // Room on the right for the name printed beside each point.
        (x0, x1, y0, y1) = (x0 / 2.0, x1 * 12.0, y0 / 2.0, y1 * 2.0);
        root.fill(&WHITE).map_err(draw_err)?;
        let title = match &r.device {
            Some(d) => format!("Roofline: medkern kernels on {d}"),
            None => "Roofline: medkern kernels".to_string(),
        };
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (FLOP/byte)")
            .y_desc("achieved FLOP/s")
            .y_label_formatter(&|v| format!("{:.0e}", v))
            .x_label_formatter(&|v| {
                let t = format!("{v:.3}");
                t.trim_end_matches('0').trim_end_matches('.').to_string()
            })
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(draw_err)?;
        let ceiling_style = ShapeStyle::from(&BLACK).stroke_width(2);
        if let Some(p) = peak {
            let from = ridge.unwrap_or(x0);
            chart
                .draw_series(LineSeries::new(vec![(from, p), (x1, p)], ceiling_style))
                .map_err(draw_err)?
                .label(format!("compute ceiling {:.1} TFLOP/s", p / 1e12))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        }
        if let Some(b) = bw {
            let to = ridge.unwrap_or(x1);
            let grey = RGBColor(90, 90, 90);
            chart
                .draw_series(LineSeries::new(
                    vec![(x0, b * x0), (to, b * to)],
                    ShapeStyle::from(&grey).stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(format!("bandwidth ceiling {:.0} GB/s", b / 1e9))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
        }
        for (gi, g) in r.groups().into_iter().enumerate() {
            let color = class_color(gi);
            let pts: Vec<(f64, f64)> = ks
                .iter()
                .filter(|k| k.group == g)
                .filter_map(|k| Some((k.intensity?, k.flops_per_s?)))
                .collect();
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(
                    pts.into_iter()
                        .map(move |p| Circle::new(p, 5, color.filled())),
                )
                .map_err(draw_err)?
                .label(g.to_string())
                .legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
        }
        chart
            .draw_series(ks.iter().filter_map(|k| {
                Some(Text::new(
                    k.name.clone(),
                    (k.intensity?, k.flops_per_s?),
                    (FONT, 11).into_font().color(&BLACK),
                ))
            }))
            .map_err(draw_err)?;
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

/// Bars of each kernel's speed relative to its PyTorch peer (peer time / ours), with the
/// parity line at 1.0.
pub struct PeerRatio<'a>(pub &'a BenchReport);

impl PeerRatio<'_> {
    /// Height in pixels for `n` bars.
    pub fn height(n: usize) -> u32 {
        (140 + 22 * n).min(plot::MAX_FIGURE_SIDE as usize) as u32
    }
}

impl Figure for PeerRatio<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let r = self.0;
        let ks = r.ratio_kernels();
        if ks.is_empty() {
            return Err(invalid("report", "no kernel with a peer ratio".into()));
        }
        let n = ks.len();
        let xmax = ks
            .iter()
            .filter_map(|k| k.peer_ratio)
            .fold(1.2f64, f64::max)
            * 1.1;
        let names: Vec<String> = ks.iter().map(|k| k.name.clone()).collect();
        let longest = names.iter().map(|s| s.len()).max().unwrap_or(8);
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "medkern speed relative to PyTorch (peer time / ours)",
                (FONT, 22),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size((longest as u32 * 7 + 16).min(600))
            .build_cartesian_2d(0.0..xmax, (0..n).into_segmented())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("speed ratio (> 1: medkern faster)")
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 15))
            .disable_y_mesh()
            .draw()
            .map_err(draw_err)?;
        let groups = r.groups();
        chart
            .draw_series(ks.iter().enumerate().filter_map(|(i, k)| {
                let gi = groups.iter().position(|g| *g == k.group).unwrap_or(0);
                let v = k.peer_ratio?;
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (v, SegmentValue::Exact(i + 1)),
                    ],
                    class_color(gi).filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                Some(bar)
            }))
            .map_err(draw_err)?;
        chart
            .draw_series(LineSeries::new(
                vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
                ShapeStyle::from(&BLACK).stroke_width(2),
            ))
            .map_err(draw_err)?
            .label("1.0 = PyTorch parity")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

/// The file stems `write_charts` writes, each as .svg and .png (.svg only in a build without
/// the `image` feature).
pub const CHART_STEMS: [&str; 2] = ["roofline", "peer_ratio"];

/// The formats `write_charts` writes: SVG, and PNG where the `image` feature encodes it.
const CHART_FORMATS: &[Format] = &[
    Format::Svg,
    #[cfg(feature = "image")]
    Format::Png,
];

/// Draws the roofline and the peer-ratio bars of `report` into `dir` (created if missing) as
/// `roofline.{svg,png}` and `peer_ratio.{svg,png}` (no PNG without the `image` feature,
/// which encodes them); a chart with nothing to show (no kernel
/// with both FLOPs and bytes, no peer run) is left out. Returns the files written and, per
/// chart left out, why.
pub fn write_charts(report: &BenchReport, dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        op: OP,
        path: dir.display().to_string(),
        source: e,
    })?;
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    let n_roof = report.roofline_kernels().len();
    let n_ratio = report.ratio_kernels().len();
    for &fmt in CHART_FORMATS {
        let ext = fmt.extension();
        if n_roof > 0 {
            let p = dir.join(format!("roofline.{ext}"));
            plot::write_atomic(&p, &plot::render(&Roofline(report), fmt, (1200, 800))?)?;
            written.push(p);
        }
        if n_ratio > 0 {
            let p = dir.join(format!("peer_ratio.{ext}"));
            let size = (1200, PeerRatio::height(n_ratio));
            plot::write_atomic(&p, &plot::render(&PeerRatio(report), fmt, size)?)?;
            written.push(p);
        }
    }
    if n_roof == 0 {
        skipped.push("roofline: no kernel with both FLOPs and bytes per call".to_string());
    }
    if n_ratio == 0 {
        skipped.push("peer_ratio: no kernel with a PyTorch peer time".to_string());
    }
    Ok((written, skipped))
}
