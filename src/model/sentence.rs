//! Sentence-transformers model folders: `modules.json` names the modules a text goes through
//! (Transformer, Pooling, Normalize), and their files say how (`1_Pooling/config.json`,
//! `sentence_bert_config.json`). [`read`] turns them into the settings a
//! [`TextEncoder`](crate::model::encoder::TextEncoder) runs with, so a folder embeds as
//! sentence-transformers embeds it. A module medkern does not run (Dense, a pooling mode it
//! lacks) is an error: run without it, the vectors would silently differ.

use crate::error::{Error, Result};
use crate::model::bert::Pooling;
use serde_json::Value;
use std::path::{Component, Path, PathBuf};

const OP: &str = "encoder";

/// The most modules `modules.json` may list (sentence-transformers pipelines have 2 to 5).
pub const MAX_MODULES: usize = 16;

const TRANSFORMER: &str = "sentence_transformers.models.Transformer";
const POOLING: &str = "sentence_transformers.models.Pooling";
const NORMALIZE: &str = "sentence_transformers.models.Normalize";

/// The settings of a sentence-transformers folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentenceConfig {
    /// The Transformer module's folder: config.json, model.safetensors, tokenizer.json.
    pub transformer_dir: PathBuf,
    /// The Pooling module's mode.
    pub pooling: Pooling,
    /// Whether a Normalize module follows the pooling.
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`: tokens kept per text, specials included.
    pub max_seq_length: Option<usize>,
    /// `sentence_bert_config.json`'s `do_lower_case`: texts are lower-cased before tokenising.
    pub do_lower_case: bool,
    /// The Pooling config's `word_embedding_dimension`, checked against the model's width.
    pub word_embedding_dimension: Option<usize>,
    /// The Pooling config file, named in errors about it.
    pub pooling_file: PathBuf,
    /// Each module's folder as `modules.json` names it, relative to the model folder ("" for
    /// the folder itself); what a copy of the folder keeps.
    pub module_paths: Vec<String>,
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::Corrupt {
        op: OP,
        arg: "file",
        detail: format!("{}: {detail}", path.display()),
    }
}

/// Reads a JSON file of the folder through the model-file limit.
fn json(path: &Path, what: &str) -> Result<Value> {
    let bytes = crate::input::read_regular(OP, path, what)?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(path, format!("{e}; expected {what}")))
}

/// `dir` joined with a module's relative `path` ("" is `dir` itself); anything that could leave
/// the folder (`..`, an absolute path, a drive prefix) is refused before it is used.
fn module_dir(dir: &Path, file: &Path, path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(dir.join(p))
    } else {
        Err(corrupt(
            file,
            format!(
                "module path {path:?} leaves the model folder; expected a relative folder name \
                 without \"..\""
            ),
        ))
    }
}

/// The settings of `dir` when it holds `modules.json`; None for a plain Hugging Face folder
/// (its embeddings keep medkern's defaults: mean pooling, no normalisation).
pub fn read(dir: &Path) -> Result<Option<SentenceConfig>> {
    let file = dir.join("modules.json");
    match std::fs::symlink_metadata(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let v = json(
        &file,
        "modules.json (a list of sentence-transformers modules)",
    )?;
    let list = v.as_array().ok_or_else(|| {
        corrupt(
            &file,
            "expected a JSON list of {idx, name, path, type} modules".into(),
        )
    })?;
    if list.len() > MAX_MODULES {
        return Err(corrupt(
            &file,
            format!("{} modules; expected at most {MAX_MODULES}", list.len()),
        ));
    }
    let mut modules = Vec::with_capacity(list.len());
    let mut module_paths = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = |k: &str| m.get(k).and_then(Value::as_str);
        let (Some(kind), Some(path)) = (field("type"), field("path")) else {
            return Err(corrupt(
                &file,
                format!("module {i} has no \"type\" or \"path\" string; expected both"),
            ));
        };
        modules.push((kind, module_dir(dir, &file, path)?));
        module_paths.push(path.to_string());
    }
    let kinds: Vec<&str> = modules.iter().map(|m| m.0).collect();
    if let Some((i, k)) = kinds
        .iter()
        .enumerate()
        .find(|(_, k)| ![TRANSFORMER, POOLING, NORMALIZE].contains(k))
    {
        return Err(corrupt(
            &file,
            format!(
                "module {i} has type {k:?}, which medkern does not run; expected \
                 {TRANSFORMER}, {POOLING} and {NORMALIZE} only (the folder is refused rather \
                 than embedded without it)"
            ),
        ));
    }
    let order_ok = matches!(
        kinds.as_slice(),
        [TRANSFORMER, POOLING] | [TRANSFORMER, POOLING, NORMALIZE]
    );
    if !order_ok {
        return Err(corrupt(
            &file,
            format!(
                "modules {kinds:?}; expected a Transformer, a Pooling and an optional Normalize \
                 module, in that order"
            ),
        ));
    }
    let transformer_dir = modules[0].1.clone();
    let pooling_file = modules[1].1.join("config.json");
    let (pooling, word_embedding_dimension) = pooling_of(&pooling_file)?;
    let (max_seq_length, do_lower_case) = transformer_settings(&transformer_dir)?;
    Ok(Some(SentenceConfig {
        transformer_dir,
        pooling,
        normalize: modules.len() == 3,
        max_seq_length,
        do_lower_case,
        word_embedding_dimension,
        pooling_file,
        module_paths,
    }))
}

/// The Pooling module's mode and width from its `config.json`: exactly one of the mean, CLS
/// and max modes (sentence-transformers concatenates several; medkern runs one).
fn pooling_of(file: &Path) -> Result<(Pooling, Option<usize>)> {
    let v = json(file, "a sentence-transformers Pooling config")?;
    let obj = v
        .as_object()
        .ok_or_else(|| corrupt(file, "expected a JSON object".into()))?;
    let mut on = Vec::new();
    if let Some(mode) = obj.get("pooling_mode").filter(|m| !m.is_null()) {
        // A "pooling_mode" string replaces the flags, as in sentence-transformers.
        let m = mode
            .as_str()
            .ok_or_else(|| corrupt(file, format!("pooling_mode is {mode}; expected a string")))?;
        on.push(format!("pooling_mode_{m}"));
    } else {
        for (k, val) in obj.iter().filter(|(k, _)| k.starts_with("pooling_mode_")) {
            match val.as_bool() {
                Some(true) => on.push(k.clone()),
                Some(false) => {}
                None => {
                    return Err(corrupt(
                        file,
                        format!("{k} is {val}; expected true or false"),
                    ));
                }
            }
        }
    }
    let pooling = match on.as_slice() {
        [one] => match one.as_str() {
            "pooling_mode_mean_tokens" | "pooling_mode_mean" => Pooling::Mean,
            "pooling_mode_cls_token" | "pooling_mode_cls" => Pooling::Cls,
            "pooling_mode_max_tokens" | "pooling_mode_max" => Pooling::Max,
            other => {
                return Err(corrupt(
                    file,
                    format!(
                        "pooling mode {other} is not supported; expected one of \
                         pooling_mode_mean_tokens, pooling_mode_cls_token, \
                         pooling_mode_max_tokens"
                    ),
                ));
            }
        },
        [] => {
            return Err(corrupt(
                file,
                "no pooling mode is true; expected one of pooling_mode_mean_tokens, \
                 pooling_mode_cls_token, pooling_mode_max_tokens"
                    .into(),
            ));
        }
        many => {
            return Err(corrupt(
                file,
                format!(
                    "pooling modes {} are all true (concatenated); expected exactly one, \
                     which is all medkern runs",
                    many.join(", ")
                ),
            ));
        }
    };
    let dim = match obj.get("word_embedding_dimension") {
        None | Some(Value::Null) => None,
        Some(d) => Some(
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| {
                    corrupt(
                        file,
                        format!("word_embedding_dimension is {d}; expected a whole number"),
                    )
                })?,
        ),
    };
    Ok((pooling, dim))
}

/// `max_seq_length` and `do_lower_case` of the Transformer folder's
/// `sentence_bert_config.json` (absent: none and false).
fn transformer_settings(dir: &Path) -> Result<(Option<usize>, bool)> {
    let file = dir.join("sentence_bert_config.json");
    if let Err(e) = std::fs::symlink_metadata(&file) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok((None, false));
        }
    }
    let v = json(&file, "sentence_bert_config.json")?;
    let max = match v.get("max_seq_length") {
        None | Some(Value::Null) => None,
        Some(m) => {
            let n = m
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n >= 2)
                .ok_or_else(|| {
                    corrupt(
                        &file,
                        format!(
                            "max_seq_length is {m}; expected a whole number of at least 2 \
                             ([CLS] and [SEP] count)"
                        ),
                    )
                })?;
            Some(n)
        }
    };
    let lower = match v.get("do_lower_case") {
        None | Some(Value::Null) => false,
        Some(b) => b.as_bool().ok_or_else(|| {
            corrupt(
                &file,
                format!("do_lower_case is {b}; expected true or false"),
            )
        })?,
    };
    Ok((max, lower))
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn folder(tag: &str, modules: &str, pooling: Option<&str>) -> PathBuf {
        let d = std::env::temp_dir().join(format!("medkern-sentence-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("1_Pooling")).expect("mkdir");
        std::fs::write(d.join("modules.json"), modules).expect("write");
        if let Some(p) = pooling {
            std::fs::write(d.join("1_Pooling/config.json"), p).expect("write");
        }
        d
    }

    const ST: &str = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;

    #[test]
    fn no_modules_json_is_none() {
        let d = std::env::temp_dir().join(format!("medkern-sentence-none-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        assert_eq!(read(&d).expect("read"), None);
    }

    #[test]
    fn modes_and_refusals_name_the_file() {
        let d = folder(
            "max",
            ST,
            Some(r#"{"pooling_mode_max_tokens": true, "pooling_mode_mean_tokens": false}"#),
        );
        let c = read(&d).expect("read").expect("some");
        assert_eq!(
            (c.pooling, c.normalize, c.max_seq_length),
            (Pooling::Max, false, None)
        );
        let d = folder(
            "sqrt",
            ST,
            Some(r#"{"pooling_mode_mean_sqrt_len_tokens": true}"#),
        );
        let e = read(&d).expect_err("sqrt").to_string();
        assert!(
            e.contains("pooling_mode_mean_sqrt_len_tokens") && e.contains("config.json"),
            "{e}"
        );
        let d = folder(
            "two",
            ST,
            Some(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#),
        );
        assert!(
            read(&d)
                .expect_err("two")
                .to_string()
                .contains("exactly one")
        );
        let up = ST.replace("1_Pooling", "../x");
        let d = folder("escape", &up, None);
        assert!(
            read(&d)
                .expect_err("..")
                .to_string()
                .contains("leaves the model folder")
        );
    }
}
