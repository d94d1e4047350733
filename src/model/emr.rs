//! EMR (electronic medical record) inputs of the EXAM model: a configurable list of features
//! (vitals, labs, age, ED oxygen device), each with its unit, plausible range and
//! normalisation, encoded from JSON into the fixed-length vector the Deep & Cross branch reads.
//!
//! # Vector layout
//! `[value slots | presence mask]`: one slot per numeric feature and one per category of each
//! categorical feature (one-hot), in list order, then one presence bit per feature (1 =
//! given, 0 = missing), in list order. A missing feature (key absent or `null`) has all its
//! value slots 0 **and** its presence bit 0, so "missing" never reads as a measured mean
//! value: the network sees the mask. [`EmrConfig::slot_names`] names every position.
//!
//! # Normalisation
//! Numeric: `z = (v − mean) / std`, or for skewed labs (`log: true`)
//! `z = (ln(1 + v) − mean) / std` with `mean`/`std` in log units. Values outside
//! `[min, max]` (physiologically implausible: a unit error or a typo) are rejected, not
//! clipped. The default statistics ([`EmrConfig::exam_default`]) are round, literature-typical
//! values for adult ED patients with suspected COVID-19, documented for reproducibility; a
//! trained checkpoint should carry the ones it was trained with (the EXAM loader reads them
//! from the safetensors metadata key `medkern.exam.emr`).
//!
//! # Default features
//! | key | unit | plausible range | transform | mean | std |
//! |---|---|---|---|---|---|
//! | age | years | 0–120 | – | 60 | 18 |
//! | spo2 | % | 40–100 | – | 94 | 5 |
//! | respiratory_rate | breaths/min | 4–80 | – | 21 | 6 |
//! | heart_rate | beats/min | 20–250 | – | 92 | 20 |
//! | systolic_bp | mmHg | 40–300 | – | 132 | 24 |
//! | diastolic_bp | mmHg | 20–200 | – | 76 | 14 |
//! | temperature | °C | 30–44 | – | 37.3 | 0.9 |
//! | crp | mg/L | 0–700 | ln(1+v) | 3.6 | 1.3 |
//! | d_dimer | ng/mL FEU | 0–100000 | ln(1+v) | 6.8 | 1.0 |
//! | ldh | U/L | 0–10000 | ln(1+v) | 5.7 | 0.45 |
//! | troponin_t | ng/L (high-sensitivity) | 0–100000 | ln(1+v) | 2.8 | 1.3 |
//! | procalcitonin | ng/mL | 0–1000 | ln(1+v) | 0.25 | 0.45 |
//! | wbc | 10⁹/L | 0–500 | ln(1+v) | 2.1 | 0.4 |
//! | lymphocytes | 10⁹/L | 0–400 | ln(1+v) | 0.7 | 0.35 |
//! | neutrophils | 10⁹/L | 0–300 | ln(1+v) | 1.8 | 0.45 |
//! | creatinine | mg/dL | 0–30 | ln(1+v) | 0.75 | 0.4 |
//! | glucose | mg/dL | 10–2000 | ln(1+v) | 4.85 | 0.35 |
//! | ferritin | ng/mL | 0–100000 | ln(1+v) | 6.2 | 1.2 |
//! | sodium | mmol/L | 90–200 | – | 137 | 4.5 |
//! | ed_oxygen_device | category | room_air, nasal_cannula, face_mask, non_rebreather, high_flow_nasal_cannula, niv, mechanical_ventilation | one-hot | | |
//!
//! 19 numeric + 7 one-hot slots + 20 presence bits = 46 inputs.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const OP: &str = "emr";

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// How one feature is encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeatureKind {
    /// One slot: `(v − mean)/std`, or `(ln(1 + v) − mean)/std` with `log`.
    Numeric {
        min: f64,
        max: f64,
        mean: f64,
        std: f64,
        #[serde(default)]
        log: bool,
    },
    /// One slot per category, one-hot; the JSON value is the category's name.
    Categorical { categories: Vec<String> },
}

/// One EMR feature: its JSON key, unit (documentation) and encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmrFeature {
    pub key: String,
    pub unit: String,
    #[serde(flatten)]
    pub kind: FeatureKind,
}

/// The ordered feature list (serde: `{"features": [{"key", "unit", "type": "numeric", "min",
/// "max", "mean", "std", "log"} | {"key", "unit", "type": "categorical", "categories"}]}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmrConfig {
    pub features: Vec<EmrFeature>,
}

fn num(key: &str, unit: &str, min: f64, max: f64, mean: f64, std: f64, log: bool) -> EmrFeature {
    EmrFeature {
        key: key.into(),
        unit: unit.into(),
        kind: FeatureKind::Numeric {
            min,
            max,
            mean,
            std,
            log,
        },
    }
}

/// ED oxygen device categories of the default list, least to most support.
pub const OXYGEN_DEVICES: [&str; 7] = [
    "room_air",
    "nasal_cannula",
    "face_mask",
    "non_rebreather",
    "high_flow_nasal_cannula",
    "niv",
    "mechanical_ventilation",
];

impl EmrConfig {
    /// The default EXAM list (module docs: 20 features, 46 inputs).
    pub fn exam_default() -> EmrConfig {
        let features = vec![
            num("age", "years", 0.0, 120.0, 60.0, 18.0, false),
            num("spo2", "%", 40.0, 100.0, 94.0, 5.0, false),
            num(
                "respiratory_rate",
                "breaths/min",
                4.0,
                80.0,
                21.0,
                6.0,
                false,
            ),
            num("heart_rate", "beats/min", 20.0, 250.0, 92.0, 20.0, false),
            num("systolic_bp", "mmHg", 40.0, 300.0, 132.0, 24.0, false),
            num("diastolic_bp", "mmHg", 20.0, 200.0, 76.0, 14.0, false),
            num("temperature", "°C", 30.0, 44.0, 37.3, 0.9, false),
            num("crp", "mg/L", 0.0, 700.0, 3.6, 1.3, true),
            num("d_dimer", "ng/mL FEU", 0.0, 100000.0, 6.8, 1.0, true),
            num("ldh", "U/L", 0.0, 10000.0, 5.7, 0.45, true),
            num("troponin_t", "ng/L (hs)", 0.0, 100000.0, 2.8, 1.3, true),
            num("procalcitonin", "ng/mL", 0.0, 1000.0, 0.25, 0.45, true),
            num("wbc", "10^9/L", 0.0, 500.0, 2.1, 0.4, true),
            num("lymphocytes", "10^9/L", 0.0, 400.0, 0.7, 0.35, true),
            num("neutrophils", "10^9/L", 0.0, 300.0, 1.8, 0.45, true),
            num("creatinine", "mg/dL", 0.0, 30.0, 0.75, 0.4, true),
            num("glucose", "mg/dL", 10.0, 2000.0, 4.85, 0.35, true),
            num("ferritin", "ng/mL", 0.0, 100000.0, 6.2, 1.2, true),
            num("sodium", "mmol/L", 90.0, 200.0, 137.0, 4.5, false),
            EmrFeature {
                key: "ed_oxygen_device".into(),
                unit: "category".into(),
                kind: FeatureKind::Categorical {
                    categories: OXYGEN_DEVICES.iter().map(|s| s.to_string()).collect(),
                },
            },
        ];
        EmrConfig { features }
    }

    /// Parses and validates a feature list from JSON.
    pub fn from_json(text: &str) -> Result<EmrConfig> {
        let c: EmrConfig = serde_json::from_str(text)
            .map_err(|e| invalid("config", format!("EMR feature list: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks keys (non-empty, unique) and every feature's parameters.
    pub fn validate(&self) -> Result<()> {
        if self.features.is_empty() {
            return Err(invalid(
                "config",
                "no features; expected at least one".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.features {
            if f.key.is_empty() || !seen.insert(f.key.as_str()) {
                return Err(invalid(
                    "config",
                    format!("feature key {:?} is empty or repeated", f.key),
                ));
            }
            match &f.kind {
                FeatureKind::Numeric {
                    min,
                    max,
                    mean,
                    std,
                    log,
                } => {
                    let ok = [min, max, mean, std].iter().all(|v| v.is_finite())
                        && min <= max
                        && *std > 0.0
                        && (!log || *min > -1.0);
                    if !ok {
                        return Err(invalid(
                            "config",
                            format!(
                                "feature {:?}: min {min}, max {max}, mean {mean}, std {std}, log \
                                 {log}; expected finite values, min <= max, std > 0 and min > -1 \
                                 with log",
                                f.key
                            ),
                        ));
                    }
                    // The z-score is monotonic in the value, so finite f32 scores at both ends
                    // of the plausible range mean every accepted value encodes finitely (a
                    // tiny std or a huge range would otherwise feed inf to the network).
                    let (lo, hi) = (
                        zscore(*min, *mean, *std, *log),
                        zscore(*max, *mean, *std, *log),
                    );
                    if !(lo.is_finite() && hi.is_finite()) {
                        return Err(invalid(
                            "config",
                            format!(
                                "feature {:?}: the range [{min}, {max}] with mean {mean}, std \
                                 {std} (log {log}) encodes to [{lo}, {hi}]; expected finite f32 \
                                 scores",
                                f.key
                            ),
                        ));
                    }
                }
                FeatureKind::Categorical { categories } => {
                    let mut cs = std::collections::HashSet::new();
                    if categories.is_empty() || !categories.iter().all(|c| cs.insert(c)) {
                        return Err(invalid(
                            "config",
                            format!(
                                "feature {:?}: categories {categories:?}; expected a non-empty \
                                 list of distinct names",
                                f.key
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Value slots (numeric features + categories of the categorical ones).
    pub fn value_slots(&self) -> usize {
        self.features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Numeric { .. } => 1,
                FeatureKind::Categorical { categories } => categories.len(),
            })
            .sum()
    }

    /// Length of the encoded vector: value slots + one presence bit per feature.
    pub fn dim(&self) -> usize {
        self.value_slots() + self.features.len()
    }

    /// The name of every position of the encoded vector: `key`, `key=category`, then
    /// `key.present`.
    pub fn slot_names(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(self.dim());
        for f in &self.features {
            match &f.kind {
                FeatureKind::Numeric { .. } => v.push(f.key.clone()),
                FeatureKind::Categorical { categories } => {
                    v.extend(categories.iter().map(|c| format!("{}={c}", f.key)));
                }
            }
        }
        v.extend(self.features.iter().map(|f| format!("{}.present", f.key)));
        v
    }

    /// Encodes one record (a JSON object `{key: number | category string | null}`). Absent and
    /// `null` keys are missing; unknown keys, wrong types, out-of-range values and unknown
    /// categories are errors naming the key.
    pub fn encode(&self, record: &Value) -> Result<Vec<f32>> {
        let obj = record.as_object().ok_or_else(|| {
            invalid(
                "record",
                format!(
                    "{}; expected a JSON object {{feature key: value}}",
                    kind_of(record)
                ),
            )
        })?;
        for k in obj.keys() {
            if !self.features.iter().any(|f| &f.key == k) {
                return Err(invalid(
                    "record",
                    format!(
                        "unknown key {k:?}; expected one of: {}",
                        self.features
                            .iter()
                            .map(|f| f.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let slots = self.value_slots();
        let mut out = vec![0f32; self.dim()];
        let mut s = 0;
        for (i, f) in self.features.iter().enumerate() {
            let v = obj.get(&f.key).filter(|v| !v.is_null());
            match &f.kind {
                FeatureKind::Numeric {
                    min,
                    max,
                    mean,
                    std,
                    log,
                } => {
                    if let Some(v) = v {
                        let x = v.as_f64().ok_or_else(|| {
                            invalid(
                                "record",
                                format!(
                                    "key {:?}: {}; expected a number in {} or null",
                                    f.key,
                                    kind_of(v),
                                    f.unit
                                ),
                            )
                        })?;
                        if !(x >= *min && x <= *max) {
                            return Err(invalid(
                                "record",
                                format!(
                                    "key {:?}: {x} {} is outside the plausible range [{min}, \
                                     {max}]",
                                    f.key, f.unit
                                ),
                            ));
                        }
                        let z = zscore(x, *mean, *std, *log);
                        if !z.is_finite() {
                            return Err(invalid(
                                "record",
                                format!(
                                    "key {:?}: {x} {} encodes to {z}; expected a finite score",
                                    f.key, f.unit
                                ),
                            ));
                        }
                        out[s] = z;
                        out[slots + i] = 1.0;
                    }
                    s += 1;
                }
                FeatureKind::Categorical { categories } => {
                    if let Some(v) = v {
                        let name = v.as_str().ok_or_else(|| {
                            invalid(
                                "record",
                                format!(
                                    "key {:?}: {}; expected one of {categories:?} or null",
                                    f.key,
                                    kind_of(v)
                                ),
                            )
                        })?;
                        let c = categories.iter().position(|c| c == name).ok_or_else(|| {
                            invalid(
                                "record",
                                format!(
                                    "key {:?}: unknown category {name:?}; expected one of \
                                     {categories:?}",
                                    f.key
                                ),
                            )
                        })?;
                        out[s + c] = 1.0;
                        out[slots + i] = 1.0;
                    }
                    s += categories.len();
                }
            }
        }
        Ok(out)
    }

    /// Encodes JSON text holding one record (an object) or several (an array of objects)
    /// into an f32 `[N, dim]` host tensor.
    pub fn encode_json(&self, text: &str) -> Result<HostTensor> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| invalid("record", format!("not valid JSON: {e}")))?;
        let records: Vec<&Value> = match &v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        if records.is_empty() {
            return Err(invalid("record", "an empty array; expected records".into()));
        }
        self.encode_batch(&records)
    }

    /// Encodes records into an f32 `[N, dim]` host tensor (record `i` named in errors when
    /// there are several).
    pub fn encode_batch(&self, records: &[&Value]) -> Result<HostTensor> {
        let mut data = Vec::with_capacity(records.len() * self.dim());
        for (i, r) in records.iter().enumerate() {
            let row = self.encode(r).map_err(|e| match e {
                Error::Invalid { op, arg, detail } if records.len() > 1 => Error::Invalid {
                    op,
                    arg,
                    detail: format!("record {i}: {detail}"),
                },
                e => e,
            })?;
            data.extend(row);
        }
        let t = HostTensor::new(&[records.len(), self.dim()], data)?;
        debug_assert_eq!(t.dtype(), DType::F32);
        Ok(t)
    }
}

/// The encoded value of `x`: `(t − mean)/std` with `t = ln(1 + x)` under `log`, as f32.
fn zscore(x: f64, mean: f64, std: f64, log: bool) -> f32 {
    let t = if log { x.ln_1p() } else { x };
    ((t - mean) / std) as f32
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}
