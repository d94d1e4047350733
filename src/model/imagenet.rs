//! The 1000 ImageNet-1k class names in index order (the order of every ImageNet classifier's
//! logits: torchvision, timm, the TF-Lite EfficientNets), embedded at compile time from
//! `assets/imagenet_classes.txt` (torchvision's `_IMAGENET_CATEGORIES`; origin in
//! `assets/README.md`).

use std::sync::OnceLock;

/// The names file, one name per line.
const NAMES: &str = include_str!("../../assets/imagenet_classes.txt");

/// Number of ImageNet-1k classes.
pub const NUM_CLASSES: usize = 1000;

/// The class names, index `i` the name of logit `i`.
pub fn class_names() -> &'static [&'static str] {
    static LIST: OnceLock<Vec<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| NAMES.lines().collect())
}

/// The name of class `i`, None past the last class.
pub fn class_name(i: usize) -> Option<&'static str> {
    class_names().get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_1000_distinct_non_empty_names() {
        let n = class_names();
        assert_eq!(n.len(), NUM_CLASSES);
        assert!(
            n.iter().all(|s| !s.is_empty() && s.trim() == *s),
            "blank or padded name"
        );
        let distinct: std::collections::BTreeSet<_> = n.iter().collect();
        assert_eq!(distinct.len(), NUM_CLASSES);
        // Fixed points of the standard order.
        assert_eq!(class_name(0), Some("tench"));
        assert_eq!(class_name(281), Some("tabby"));
        assert_eq!(class_name(967), Some("espresso"));
        assert_eq!(class_name(999), Some("toilet tissue"));
        assert_eq!(class_name(1000), None);
    }
}
