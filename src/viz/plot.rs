//! Drawing: the figures of [`crate::viz`] rendered by `plotters` to SVG, or to RGB pixels
//! encoded as PNG by `image`, and written atomically. Text in PNGs is drawn with a vendored
//! DejaVu Sans (assets/fonts, Bitstream Vera licence), so no system font is needed.

use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const OP: &str = "plot";

/// Largest width or height of a figure, in pixels.
pub const MAX_FIGURE_SIDE: u32 = 16_384;
/// Most points one scatter plot takes.
pub const MAX_SCATTER_POINTS: usize = 1_000_000;
/// Most classes one scatter plot colours (the legend has one entry each).
pub const MAX_SCATTER_CLASSES: usize = 64;

/// The font every figure uses, registered for plotters' ab_glyph text once per process.
pub(crate) const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static FONT_READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn ensure_font() -> Result<()> {
    let ok = *FONT_READY.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            op: OP,
            arg: "font",
            detail: "the vendored DejaVu Sans did not load".into(),
        })
    }
}

/// Output formats, chosen by file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// `.png` or `.svg` (any case); anything else is an `Err`.
    pub fn from_path(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(Error::Invalid {
                op: OP,
                arg: "path",
                detail: format!(
                    "{}: expected a file name ending in .png or .svg",
                    path.display()
                ),
            }),
        }
    }

    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }
}

pub(crate) fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid {
        op: OP,
        arg: "drawing",
        detail: e.to_string(),
    }
}

/// A figure plotters can draw onto any backend (so one drawing code serves SVG and PNG).
pub trait Figure {
    /// Draws the whole figure onto `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Renders `fig` at `size` (width, height in pixels) to the bytes of a PNG or SVG file.
/// PNG needs the `image` feature: without it [`Format::Png`] is an error naming it.
pub fn render<F: Figure>(fig: &F, format: Format, size: (u32, u32)) -> Result<Vec<u8>> {
    let (w, h) = size;
    if !(16..=MAX_FIGURE_SIDE).contains(&w) || !(16..=MAX_FIGURE_SIDE).contains(&h) {
        return Err(Error::Invalid {
            op: OP,
            arg: "size",
            detail: format!("{w}x{h}; expected each side in 16..={MAX_FIGURE_SIDE}"),
        });
    }
    ensure_font()?;
    match format {
        Format::Svg => {
            let mut s = String::new();
            {
                let root = SVGBackend::with_string(&mut s, size).into_drawing_area();
                fig.draw(&root)?;
                root.present().map_err(draw_err)?;
            }
            Ok(s.into_bytes())
        }
        #[cfg(not(feature = "image"))]
        Format::Png => Err(crate::error::feature_missing(
            OP,
            "encoding a PNG figure (.svg works)",
            "image",
        )),
        #[cfg(feature = "image")]
        Format::Png => {
            let mut buf = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
                fig.draw(&root)?;
                root.present().map_err(draw_err)?;
            }
            let img = image::RgbImage::from_raw(w, h, buf)
                .ok_or_else(|| draw_err(format!("{w}x{h} RGB buffer has the wrong length")))?;
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| draw_err(format!("PNG encoding: {e}")))?;
            Ok(out.into_inner())
        }
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same folder (random name,
/// flushed to disk, then made rw-r--r--), renamed over `path`, so a reader never sees half a
/// file and a failure leaves nothing new behind. A `path` that exists and is not a regular file
/// (a folder, a link, a FIFO) is refused, as is a missing folder. Every picture and chart of
/// [`crate::viz`] is written through here.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::Io {
        op: OP,
        path: path.display().to_string(),
        source: e,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_file() {
            return Err(Error::Invalid {
                op: OP,
                arg: "path",
                detail: format!(
                    "{}: exists and is not a regular file (a folder, link or device); not replaced",
                    path.display()
                ),
            });
        }
    }
    if path.file_name().is_none() {
        return Err(Error::Invalid {
            op: OP,
            arg: "path",
            detail: format!("{}: no file name", path.display()),
        });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".medkern-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    // Temporary files are created private (0600); a picture is for reading: rw-r--r--.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    // A failed rename drops `tmp`, which removes the temporary file.
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Renders `fig` into `path` (format by extension: .png or .svg) at `size`, atomically.
pub fn save<F: Figure>(fig: &F, path: &Path, size: (u32, u32)) -> Result<()> {
    let bytes = render(fig, Format::from_path(path)?, size)?;
    write_atomic(path, &bytes)
}

/// The class colours: Tableau 10, distinct in print and for most colour-blind readers; more
/// classes than that take plotters' 99-colour palette.
pub fn class_color(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (214, 39, 40),
        (44, 160, 44),
        (255, 127, 14),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match TAB10.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// The range spanned by `v`, widened by 5% each side (by 1 when all values are equal).
pub(crate) fn padded_range(v: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !(lo.is_finite() && hi.is_finite()) {
        return -1.0..1.0;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 1.0 };
    (lo - pad)..(hi + pad)
}

/// A 2-d scatter plot (a t-SNE map): one dot per point, coloured by its class, with a legend
/// naming each class and a title.
#[derive(Clone, Copy, Debug)]
pub struct Scatter<'a> {
    pub title: &'a str,
    /// The points' coordinates.
    pub points: &'a [[f64; 2]],
    /// Each point's class, an index into `classes`.
    pub labels: &'a [usize],
    /// The class names, in legend order.
    pub classes: &'a [String],
}

impl Scatter<'_> {
    /// Checks the lengths, labels and coordinates before anything is drawn.
    pub fn validate(&self) -> Result<()> {
        let bad = |arg, detail| {
            Err(Error::Invalid {
                op: "scatter",
                arg,
                detail,
            })
        };
        if self.points.is_empty() || self.points.len() > MAX_SCATTER_POINTS {
            return bad(
                "points",
                format!(
                    "{} points; expected 1..={MAX_SCATTER_POINTS}",
                    self.points.len()
                ),
            );
        }
        if self.labels.len() != self.points.len() {
            return bad(
                "labels",
                format!(
                    "{} labels for {} points; expected one each",
                    self.labels.len(),
                    self.points.len()
                ),
            );
        }
        if self.classes.is_empty() || self.classes.len() > MAX_SCATTER_CLASSES {
            return bad(
                "classes",
                format!(
                    "{} classes; expected 1..={MAX_SCATTER_CLASSES}",
                    self.classes.len()
                ),
            );
        }
        if let Some(l) = self.labels.iter().find(|&&l| l >= self.classes.len()) {
            return bad(
                "labels",
                format!("label {l}; expected < {} (the classes)", self.classes.len()),
            );
        }
        if let Some(p) = self
            .points
            .iter()
            .find(|p| !(p[0].is_finite() && p[1].is_finite()))
        {
            return bad("points", format!("non-finite point {p:?}"));
        }
        Ok(())
    }
}

impl Figure for Scatter<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        self.validate()?;
        root.fill(&WHITE).map_err(draw_err)?;
        let xr = padded_range(self.points.iter().map(|p| p[0]));
        let yr = padded_range(self.points.iter().map(|p| p[1]));
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(xr, yr)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .label_style((FONT, 13))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(draw_err)?;
        for (c, name) in self.classes.iter().enumerate() {
            let color = class_color(c);
            let count = self.labels.iter().filter(|&&l| l == c).count();
            chart
                .draw_series(
                    self.points
                        .iter()
                        .zip(self.labels)
                        .filter(|&(_, &l)| l == c)
                        .map(move |(p, _)| Circle::new((p[0], p[1]), 4, color.filled())),
                )
                .map_err(draw_err)?
                .label(format!("{name} ({count})"))
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

#[cfg(all(test, not(feature = "image")))]
mod tests {
    /// Without the `image` feature a PNG figure is an error naming the feature; SVG works.
    #[test]
    fn png_without_the_image_feature_is_an_error_naming_it() {
        let classes = ["a".to_string()];
        let fig = super::Scatter {
            title: "t",
            points: &[[0.0, 0.0], [1.0, 1.0]],
            labels: &[0, 0],
            classes: &classes,
        };
        let e = super::render(&fig, super::Format::Png, (64, 64)).err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("plot: ") && msg.contains("built without the `image` feature"),
            "{msg}"
        );
        assert!(super::render(&fig, super::Format::Svg, (64, 64)).is_ok());
    }
}
