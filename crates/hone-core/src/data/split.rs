//! Split strings as Hugging Face `datasets` writes them: `train`, `train[:160]`, `train[160:]`,
//! `train[10:20]`, `train[:80%]`, `train[-20:]`.
//!
//! Differences from `datasets`, on purpose: an absolute bound beyond the number of rows is an
//! error (datasets clamps it silently), a selection with no rows is an error, and mixing `%` and
//! absolute bounds (`train[10%:20]`, which datasets reads as 10%..20%) is an error. Percent
//! bounds round to the nearest row with ties to even, as datasets' `round(pct * n / 100)`.

use std::ops::Range;
use std::str::FromStr;

use crate::data::read::Dataset;
use crate::error::{Error, Result};

/// A parsed split string: a split name and an optional `[from:to]` slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The text as written, for messages.
    pub spec: String,
    /// The split name before the brackets (`train`).
    pub name: String,
    from: Option<i64>,
    to: Option<i64>,
    percent: bool,
}

impl Split {
    /// Parse a split string such as `train[:80%]`.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "split '{spec}': {why}; expected e.g. train, train[:160], train[160:], \
                 train[10:20], train[:80%], train[-20:]"
            ))
        };
        let s = spec.trim();
        let (name, slice) = match s.find('[') {
            Some(i) => {
                let inner = s[i + 1..]
                    .strip_suffix(']')
                    .ok_or_else(|| bad("missing closing ']'"))?;
                (&s[..i], Some(inner))
            }
            None => (s, None),
        };
        let name_ok = !name.is_empty()
            && name.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            });
        if !name_ok {
            return Err(bad("the split name must be letters, digits and '_'"));
        }
        let mut split = Split {
            spec: spec.to_string(),
            name: name.to_string(),
            from: None,
            to: None,
            percent: false,
        };
        let Some(inner) = slice else {
            return Ok(split);
        };
        let (from, to) = inner
            .split_once(':')
            .ok_or_else(|| bad("a slice needs a ':'"))?;
        let mut units = Vec::new();
        let mut bound = |text: &str| -> Result<Option<i64>> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            let (digits, pct) = match text.strip_suffix('%') {
                Some(d) => (d, true),
                None => (text, false),
            };
            let unsigned = digits.strip_prefix('-').unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("'{text}' is not a whole number")));
            }
            let value: i64 = digits
                .parse()
                .map_err(|_| bad(&format!("'{text}' is too large")))?;
            if pct && value.abs() > 100 {
                return Err(bad("percent bounds must be between -100% and 100%"));
            }
            units.push(pct);
            Ok(Some(value))
        };
        split.from = bound(from)?;
        split.to = bound(to)?;
        if units.windows(2).any(|w| w[0] != w[1]) {
            return Err(bad("both bounds must be percentages or both row counts"));
        }
        split.percent = units.first().copied().unwrap_or(false);
        Ok(split)
    }

    /// The rows this split selects out of `num_rows`.
    pub fn range(&self, num_rows: usize) -> Result<Range<usize>> {
        let n = num_rows as i64;
        let resolve = |bound: Option<i64>, default: i64| -> Result<i64> {
            let Some(b) = bound else {
                return Ok(default);
            };
            let b = if self.percent {
                ((b * n) as f64 / 100.0).round_ties_even() as i64
            } else {
                b
            };
            if b.abs() > n {
                return Err(Error::Invalid(format!(
                    "split '{}': bound {b} is out of range for {num_rows} rows",
                    self.spec
                )));
            }
            Ok(if b < 0 { n + b } else { b })
        };
        let from = resolve(self.from, 0)?;
        let to = resolve(self.to, n)?;
        if from >= to {
            return Err(Error::Invalid(format!(
                "split '{}' selects no rows (rows {from}..{to} of {num_rows})",
                self.spec
            )));
        }
        Ok(from as usize..to as usize)
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Split::parse(s)
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec)
    }
}

impl Dataset {
    /// The rows a split selects (all rows without one), then at most `max_samples` of them
    /// (the first ones, as `--max_train_samples` in transformers' example scripts).
    pub fn select(&self, split: Option<&Split>, max_samples: Option<usize>) -> Result<Dataset> {
        let range = match split {
            Some(s) => s
                .range(self.rows.len())
                .map_err(|e| Error::format(&self.source, e.to_string()))?,
            None => 0..self.rows.len(),
        };
        let mut rows = self.rows[range].to_vec();
        if let Some(max) = max_samples {
            if max == 0 {
                return Err(Error::Invalid("max_samples must be at least 1".into()));
            }
            rows.truncate(max);
        }
        Ok(Dataset {
            source: self.source.clone(),
            format: self.format,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, n: usize) -> Result<Range<usize>> {
        Split::parse(spec)?.range(n)
    }

    #[test]
    fn absolute_slices_like_python() {
        assert_eq!(range("train", 200).unwrap(), 0..200);
        assert_eq!(range("train[:160]", 200).unwrap(), 0..160);
        assert_eq!(range("train[160:]", 200).unwrap(), 160..200);
        assert_eq!(range("train[10:20]", 200).unwrap(), 10..20);
        assert_eq!(range("train[-20:]", 200).unwrap(), 180..200);
        assert_eq!(range("train[:-20]", 200).unwrap(), 0..180);
        assert_eq!(range("train[:]", 5).unwrap(), 0..5);
        assert_eq!(range(" validation[ 1 : 3 ] ", 5).unwrap(), 1..3);
        assert_eq!(Split::parse("test[1:2]").unwrap().name, "test");
    }

    #[test]
    fn percent_slices_round_half_to_even() {
        assert_eq!(range("train[:80%]", 200).unwrap(), 0..160);
        assert_eq!(range("train[80%:]", 200).unwrap(), 160..200);
        assert_eq!(range("train[-10%:]", 200).unwrap(), 180..200);
        // 50% of 5 = 2.5 -> 2 (Python's round), 50% of 7 = 3.5 -> 4.
        assert_eq!(range("train[:50%]", 5).unwrap(), 0..2);
        assert_eq!(range("train[:50%]", 7).unwrap(), 0..4);
        assert_eq!(range("train[:33%]", 10).unwrap(), 0..3);
        assert_eq!(range("train[:100%]", 10).unwrap(), 0..10);
    }

    #[test]
    fn bad_syntax_names_the_split() {
        for spec in [
            "train[5]",
            "train[:10",
            "train[a:]",
            "[:10]",
            "train[:10%%]",
            "train[:150%]",
            "train[10%:20]",
            "tr ain",
            "train[--1:]",
            "train[1.5:]",
        ] {
            let err = Split::parse(spec).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("split '{spec}':")),
                "{spec}: {err}"
            );
        }
    }

    #[test]
    fn out_of_range_and_empty_selections_are_errors() {
        let err = range("train[:500]", 200).unwrap_err().to_string();
        assert_eq!(
            err,
            "split 'train[:500]': bound 500 is out of range for 200 rows"
        );
        assert!(range("train[-201:]", 200).is_err());
        let err = range("train[20:10]", 200).unwrap_err().to_string();
        assert!(
            err.starts_with("split 'train[20:10]' selects no rows"),
            "{err}"
        );
        assert!(range("train[200:]", 200).is_err());
        assert!(range("train[:1%]", 10).is_err()); // rounds to 0 rows
    }

    #[test]
    fn select_applies_split_then_max_samples() {
        let ds = crate::data::parse_dataset(
            b"a\nb\nc\nd\ne\n",
            "five.txt",
            crate::data::DataFormat::Text,
        )
        .unwrap();
        let s = Split::parse("train[1:]").unwrap();
        let sel = ds.select(Some(&s), Some(2)).unwrap();
        let lines: Vec<usize> = sel.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 3]);
        assert_eq!(ds.select(None, Some(10)).unwrap().rows.len(), 5);
        let err = ds
            .select(Some(&Split::parse("train[:9]").unwrap()), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("five.txt: split 'train[:9]'"), "{err}");
        assert!(ds.select(None, Some(0)).is_err());
    }
}
