//! Figures, their targets, and how they are printed (a table, or JSON).

use serde::Serialize;
use std::time::Duration;

/// How a figure is compared with its target.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The figure must be below the target.
    Below(f64),
    /// The figure must be at least the target.
    AtLeast(f64),
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The scenario that measured it.
    pub scenario: String,
    /// The coordinator's store it was measured on: `sqlite` or `postgres` (None: the
    /// scenario runs no coordinator).
    pub store: Option<String>,
    /// What it is.
    pub name: String,
    /// The value (median over the runs where there are several).
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The target, if there is one.
    pub target: Option<Goal>,
    /// Whether the target is met (None: no target).
    pub met: Option<bool>,
    /// How it was measured (sizes, runs, spread).
    pub note: String,
}

impl Figure {
    /// A figure with a target.
    pub fn new(scenario: &str, name: &str, value: f64, unit: &str, target: Option<Goal>) -> Figure {
        let met = target.map(|t| match t {
            Goal::Below(x) => value < x,
            Goal::AtLeast(x) => value >= x,
        });
        Figure {
            scenario: scenario.into(),
            store: None,
            name: name.into(),
            value,
            unit: unit.into(),
            target,
            met,
            note: String::new(),
        }
    }

    /// Says which store the coordinator had.
    pub fn store(mut self, kind: &str) -> Figure {
        self.store = Some(kind.into());
        self
    }

    /// Adds how it was measured.
    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Prints figures as an aligned text table.
pub fn table(figs: &[Figure]) -> String {
    let rows: Vec<[String; 6]> = figs
        .iter()
        .map(|f| {
            [
                f.scenario.clone(),
                f.store.clone().unwrap_or_else(|| "-".into()),
                f.name.clone(),
                format!("{} {}", fmt_value(f.value), f.unit),
                match f.target {
                    Some(Goal::Below(x)) => format!("< {} {}", fmt_value(x), f.unit),
                    Some(Goal::AtLeast(x)) => format!(">= {} {}", fmt_value(x), f.unit),
                    None => "-".into(),
                },
                match f.met {
                    Some(true) => "met".into(),
                    Some(false) => "NOT MET".into(),
                    None => "".into(),
                },
            ]
        })
        .collect();
    let head = ["scenario", "store", "figure", "value", "target", ""];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: [&str; 6], out: &mut String| {
        for (i, c) in cells.iter().enumerate() {
            out.push_str(&format!("{:<width$}  ", c, width = w[i]));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(head, &mut out);
    for r in &rows {
        line(
            [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]].map(|s| s.as_str()),
            &mut out,
        );
    }
    for f in figs.iter().filter(|f| !f.note.is_empty()) {
        out.push_str(&format!("  {} / {}: {}\n", f.scenario, f.name, f.note));
    }
    out
}

/// The `q` quantile (0..=1) of `v` by nearest rank; 0 for an empty slice.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The median of `v`.
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "min-max" of a list of values, for notes.
pub fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}-{}", fmt_value(lo), fmt_value(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_targets() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(
            Figure::new("s", "n", 1.0, "ms", Some(Goal::Below(2.0))).met,
            Some(true)
        );
        assert_eq!(
            Figure::new("s", "n", 1.0, "/s", Some(Goal::AtLeast(2.0))).met,
            Some(false)
        );
        let t = table(&[
            Figure::new("s", "n", 1.0, "ms", None).note("x"),
            Figure::new("d", "p50", 1.5, "ms", None).store("postgres"),
        ]);
        assert!(t.contains("s / n: x"), "{t}");
        assert!(
            t.lines().next().unwrap().starts_with("scenario  store"),
            "{t}"
        );
        assert!(t.contains("s         -         n"), "{t}");
        assert!(t.contains("d         postgres  p50"), "{t}");
    }
}
