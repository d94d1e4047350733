//! Pictures for people reading a model's output: an autoencoder's reconstruction next to its
//! input and error, and a class activation map laid over the image.
//!
//! Pictures are RGB8 ([`image::RgbImage`]) built from `[0, 1]` display values (what
//! `ops::preprocess` gives with mean 0 and std 1, so a DICOM background is shown through the
//! same window the model saw). PNGs are written atomically ([`save_png`]: a temporary file in
//! the target folder, then a rename), so a reader never finds half a picture.

use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use image::RgbImage;
use std::path::{Path, PathBuf};

const OP: &str = "viz";

/// The largest side of a picture built here, in pixels (panels come from model inputs,
/// 96–600 pixels; the limit keeps a wrong shape from allocating gigabytes).
pub const MAX_SIDE: usize = 16384;

/// How strongly the heatmap covers the image in [`cam_picture`]: `out = (1 − α)·image + α·heat`.
pub const CAM_ALPHA: f64 = 0.45;

/// The colormap of [`cam_picture`]: Turbo (Google's rainbow map, in d3's polynomial form as
/// the `colorous` crate evaluates it): near black for 0, through blue, green and yellow, to
/// dark red (144, 12, 0) for 1.
pub const CAM_COLORMAP: &str = "turbo";

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// `(H, W)` of a `[1, H, W, c]` or `[H, W, c]` tensor, both sides in `1..=MAX_SIDE`.
fn hw(t: &HostTensor, arg: &'static str, c: usize) -> Result<(usize, usize)> {
    let (h, w) = match *t.shape() {
        [1, h, w, cc] | [h, w, cc] if cc == c => (h, w),
        _ => (0, 0),
    };
    if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE {
        return Err(Error::Shape {
            op: OP,
            arg,
            got: t.shape().to_vec(),
            expected: format!("[1, H, W, {c}] or [H, W, {c}] with 1 <= H, W <= {MAX_SIDE}"),
        });
    }
    Ok((h, w))
}

/// Finite values of a tensor (f64), or an error naming the first that is not.
fn finite_values(t: &HostTensor, arg: &'static str) -> Result<Vec<f64>> {
    let v = t.to_f64();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(invalid(
            arg,
            format!("value {} at index {i} is not finite", v[i]),
        ));
    }
    Ok(v)
}

/// A `[0, 1]` value as a byte (clamped, rounded).
fn byte(v: f64) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn rgb(w: usize, h: usize, pixels: Vec<u8>) -> Result<RgbImage> {
    // Sides are at most MAX_SIDE, so they fit u32.
    RgbImage::from_raw(w as u32, h as u32, pixels).ok_or_else(|| {
        invalid(
            "pixels",
            format!("internal: {w}x{h} RGB picture from a wrong buffer"),
        )
    })
}

/// An RGB picture of `[1, H, W, 3]` (or `[H, W, 3]`) display values in `[0, 1]` (clamped).
pub fn rgb_from_unit(t: &HostTensor) -> Result<RgbImage> {
    let (h, w) = hw(t, "image", 3)?;
    let v = finite_values(t, "image")?;
    rgb(w, h, v.iter().map(|&x| byte(x)).collect())
}

/// Pictures of equal height placed left to right.
pub fn side_by_side(panels: &[RgbImage]) -> Result<RgbImage> {
    let Some(first) = panels.first() else {
        return Err(invalid(
            "panels",
            "none given; expected at least one".into(),
        ));
    };
    let h = first.height() as usize;
    if let Some(p) = panels.iter().find(|p| p.height() as usize != h) {
        return Err(invalid(
            "panels",
            format!(
                "heights {} and {}; expected panels of one height",
                h,
                p.height()
            ),
        ));
    }
    let w: usize = panels.iter().map(|p| p.width() as usize).sum();
    if w > MAX_SIDE * 4 {
        return Err(invalid(
            "panels",
            format!("total width {w}; expected at most {}", MAX_SIDE * 4),
        ));
    }
    let mut out = RgbImage::new(w as u32, h as u32);
    let mut x0 = 0u32;
    for p in panels {
        image::imageops::replace(&mut out, p, i64::from(x0), 0);
        x0 += p.width();
    }
    Ok(out)
}

/// An autoencoder's input, reconstruction and absolute error side by side.
#[derive(Clone, Debug)]
pub struct ReconstructionPicture {
    /// `3W × H`: input | reconstruction | `|reconstruction − input|` per channel.
    pub image: RgbImage,
    /// The error panel shows `|e| / error_scale` (full brightness = the largest error of the
    /// image, `error_scale`); 0 when the reconstruction is exact (the panel is black).
    pub error_scale: f64,
}

/// [`ReconstructionPicture`] of one frame: `input` and `reconstruction` `[1, H, W, 3]` display
/// values in `[0, 1]` (the autoencoder's input and output).
pub fn reconstruction_picture(
    input: &HostTensor,
    reconstruction: &HostTensor,
) -> Result<ReconstructionPicture> {
    let (h, w) = hw(input, "input", 3)?;
    if reconstruction.shape() != input.shape() {
        return Err(Error::Shape {
            op: OP,
            arg: "reconstruction",
            got: reconstruction.shape().to_vec(),
            expected: format!("{:?} (the input's shape)", input.shape()),
        });
    }
    let x = finite_values(input, "input")?;
    let r = finite_values(reconstruction, "reconstruction")?;
    let err: Vec<f64> = x.iter().zip(&r).map(|(a, b)| (b - a).abs()).collect();
    let error_scale = err.iter().copied().fold(0.0f64, f64::max);
    let inv = if error_scale > 0.0 {
        1.0 / error_scale
    } else {
        0.0
    };
    let panels = [
        rgb(w, h, x.iter().map(|&v| byte(v)).collect())?,
        rgb(w, h, r.iter().map(|&v| byte(v)).collect())?,
        rgb(w, h, err.iter().map(|&e| byte(e * inv)).collect())?,
    ];
    Ok(ReconstructionPicture {
        image: side_by_side(&panels)?,
        error_scale,
    })
}

/// `(v − min)/(max − min)` per value, with `(min, max)`; all zeros when the values are
/// constant. Non-finite values are an error.
pub fn normalize_unit(v: &[f64]) -> Result<(Vec<f64>, f64, f64)> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(invalid(
            "map",
            format!("value {} at index {i} is not finite", v[i]),
        ));
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = hi - lo;
    let n = if span > 0.0 {
        v.iter().map(|x| (x - lo) / span).collect()
    } else {
        vec![0.0; v.len()]
    };
    Ok((n, lo, hi))
}

/// The Turbo colour of `t` in `[0, 1]` (clamped).
pub fn turbo(t: f64) -> [u8; 3] {
    let c = colorous::TURBO.eval_continuous(t.clamp(0.0, 1.0));
    [c.r, c.g, c.b]
}

/// `background` with `heat` (row-major, one value in `[0, 1]` per pixel) blended over it in
/// the Turbo colormap: `(1 − alpha)·background + alpha·turbo(heat)`.
pub fn heatmap_overlay(background: &RgbImage, heat: &[f64], alpha: f64) -> Result<RgbImage> {
    let (w, h) = (background.width() as usize, background.height() as usize);
    if heat.len() != w * h {
        return Err(invalid(
            "heat",
            format!("{} values; expected {w}·{h} (one per pixel)", heat.len()),
        ));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(invalid("alpha", format!("{alpha}; expected 0..=1")));
    }
    let mut out = background.clone();
    for (p, &t) in out.pixels_mut().zip(heat) {
        let c = turbo(t);
        for (v, hc) in p.0.iter_mut().zip(c) {
            let b = (1.0 - alpha) * f64::from(*v) + alpha * f64::from(hc);
            *v = b.round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

/// A class activation map over its image.
#[derive(Clone, Debug)]
pub struct CamPicture {
    /// The image with the map in Turbo at [`CAM_ALPHA`].
    pub image: RgbImage,
    /// The map's smallest and largest values: the heat is `(cam − min)/(max − min)`.
    pub min: f64,
    pub max: f64,
}

/// [`CamPicture`] of `background` `[1, H, W, 3]` display values in `[0, 1]` and `cam`
/// `[1, H, W, 1]` (any scale; normalised here to `[0, 1]`).
pub fn cam_picture(background: &HostTensor, cam: &HostTensor) -> Result<CamPicture> {
    let (h, w) = hw(background, "background", 3)?;
    let (ch, cw) = hw(cam, "cam", 1)?;
    if (ch, cw) != (h, w) {
        return Err(Error::Shape {
            op: OP,
            arg: "cam",
            got: cam.shape().to_vec(),
            expected: format!("[1, {h}, {w}, 1] (the background's size)"),
        });
    }
    let (heat, min, max) = normalize_unit(&cam.to_f64())?;
    let image = heatmap_overlay(&rgb_from_unit(background)?, &heat, CAM_ALPHA)?;
    Ok(CamPicture { image, min, max })
}

/// Creates `dir` (and its parents) when missing; an existing non-folder is an error.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        op: OP,
        path: dir.display().to_string(),
        source: e,
    })
}

/// Writes `img` as a PNG at `path` atomically (encoded in memory, then
/// [`super::plot::write_atomic`]): on failure nothing is left at `path` that was not there.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| invalid("png", format!("{}: encoding: {e}", path.display())))?;
    super::plot::write_atomic(path, &bytes)
}

/// The longest stem kept in a picture name (characters).
const MAX_STEM: usize = 64;

/// One picture name per input: `{index}-{stem}{suffix}.png`, `index` the input's position
/// (zero-padded to the count's width), `stem` its file stem with characters other than
/// ASCII letters, digits, `.`, `_`, `-` replaced by `_` (at most 64 kept; `image` if empty).
/// The index makes every name distinct, so two `scan.png` from different folders never
/// overwrite each other.
pub fn picture_names(inputs: &[PathBuf], suffix: &str) -> Vec<String> {
    let width = inputs.len().saturating_sub(1).to_string().len();
    inputs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stem: String = p
                .file_stem()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default()
                .chars()
                .take(MAX_STEM)
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let stem = if stem.is_empty() {
                "image".into()
            } else {
                stem
            };
            format!("{i:0width$}-{stem}{suffix}.png")
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_for_equal_stems_and_sanitised() {
        let inputs: Vec<PathBuf> = ["a/scan.png", "b/scan.png", "c/ä b?.dcm", "d/.png"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let n = picture_names(&inputs, ".cam");
        assert_eq!(
            n,
            [
                "0-scan.cam.png",
                "1-scan.cam.png",
                "2-__b_.cam.png",
                "3-.png.cam.png"
            ]
        );
        let many: Vec<PathBuf> = (0..11).map(|_| PathBuf::from("x.png")).collect();
        let n = picture_names(&many, "");
        assert_eq!(n[0], "00-x.png");
        assert_eq!(n[10], "10-x.png");
    }

    #[test]
    fn normalize_and_turbo_ends() {
        let (n, lo, hi) = normalize_unit(&[2.0, -1.0, 5.0]).unwrap();
        assert_eq!((lo, hi), (-1.0, 5.0));
        assert_eq!(n, [0.5, 0.0, 1.0]);
        assert_eq!(normalize_unit(&[3.0; 4]).unwrap().0, [0.0; 4]);
        assert!(normalize_unit(&[1.0, f64::NAN]).is_err());
        // d3's published polynomial for Turbo (interpolateTurbo), what colorous evaluates.
        let d3 = |t: f64| {
            let r = 34.61
                + t * (1172.33 - t * (10793.56 - t * (33300.12 - t * (38394.49 - t * 14825.05))));
            let g =
                23.31 + t * (557.33 + t * (1225.33 - t * (3574.96 - t * (1073.77 + t * 707.56))));
            let b =
                27.2 + t * (3211.1 - t * (15327.97 - t * (27814.0 - t * (22569.18 - t * 6838.66))));
            [r, g, b].map(|v| v.clamp(0.0, 255.0))
        };
        for i in 0..=20 {
            let t = f64::from(i) / 20.0;
            let (got, want) = (turbo(t), d3(t));
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (f64::from(*g) - w).abs() <= 1.0,
                    "turbo({t}) = {got:?}, d3 {want:?}"
                );
            }
        }
        assert_eq!(turbo(-1.0), turbo(0.0));
        assert_eq!(turbo(2.0), turbo(1.0));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let t = HostTensor::new(&[1, 4, 4, 3], vec![0.5f32; 48]).unwrap();
        let r = HostTensor::new(&[1, 4, 5, 3], vec![0.5f32; 60]).unwrap();
        assert!(reconstruction_picture(&t, &r).is_err());
        let cam = HostTensor::new(&[1, 4, 5, 1], vec![0.5f32; 20]).unwrap();
        assert!(cam_picture(&t, &cam).is_err());
        let huge = HostTensor::new(&[1, MAX_SIDE + 1, 1, 3], vec![0u8; 3 * (MAX_SIDE + 1)]);
        assert!(rgb_from_unit(&huge.unwrap()).is_err());
        assert!(heatmap_overlay(&RgbImage::new(2, 2), &[0.0; 3], 0.5).is_err());
        assert!(heatmap_overlay(&RgbImage::new(2, 2), &[0.0; 4], 1.5).is_err());
    }
}
