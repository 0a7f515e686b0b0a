//! The checks of `promtool check metrics`, for machines where promtool cannot be installed.
//!
//! A port of the default validations of client_golang's `testutil/promlint` (what promtool runs
//! on Prometheus text 0.0.4): help text, base units, `_total` on counters only,
//! `_timestamp_seconds` on gauges only, histogram/summary suffixes and labels, type names,
//! colons, camelCase, abbreviated units, duplicate series. Each problem reads as promtool
//! prints it: `NAME: PROBLEM`.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
struct Family {
    kind: Option<String>,
    help: bool,
    labels: BTreeSet<String>,
}

const UNITS: &[(&str, &str)] = &[
    ("amperes", "amperes"),
    ("bytes", "bytes"),
    ("celsius", "celsius"),
    ("grams", "grams"),
    ("joules", "joules"),
    ("kelvin", "kelvin"),
    ("meters", "meters"),
    ("metres", "metres"),
    ("seconds", "seconds"),
    ("volts", "volts"),
    ("minutes", "seconds"),
    ("hours", "seconds"),
    ("days", "seconds"),
    ("weeks", "seconds"),
    ("kelvins", "kelvin"),
    ("fahrenheit", "celsius"),
    ("rankine", "celsius"),
    ("inches", "meters"),
    ("yards", "meters"),
    ("miles", "meters"),
    ("bits", "bytes"),
    ("calories", "joules"),
    ("pounds", "grams"),
    ("ounces", "grams"),
];
const PREFIXES: &[&str] = &[
    "pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi", "mega",
    "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi",
];
const ABBREVIATIONS: &[&str] = &[
    "s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d",
];
const TYPES: &[&str] = &["counter", "gauge", "summary", "histogram", "gaugehistogram"];

fn has_part(name: &str, part: &str) -> bool {
    name.contains(&format!("_{part}_")) || name.ends_with(&format!("_{part}"))
}

fn camel_case(text: &str) -> bool {
    text.as_bytes()
        .windows(2)
        .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase())
}

fn unit_of(name: &str) -> Option<(String, &'static str)> {
    let base = |s: &str| UNITS.iter().find(|(u, _)| *u == s).map(|(_, b)| *b);
    name.split('_').find_map(|part| {
        base(part).map(|b| (part.to_owned(), b)).or_else(|| {
            PREFIXES.iter().find_map(|p| {
                part.strip_prefix(p)
                    .and_then(base)
                    .map(|b| (part.to_owned(), b))
            })
        })
    })
}

/// The family a sample belongs to: its own name, or the histogram/summary it is a part of.
fn family_of<'a>(sample: &'a str, families: &BTreeMap<String, Family>) -> &'a str {
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && families
                .get(base)
                .and_then(|f| f.kind.as_deref())
                .is_some_and(|k| k == "histogram" || k == "summary")
        {
            return base;
        }
    }
    sample
}

/// Lints Prometheus text 0.0.4; returns promtool's problems (empty when it would exit 0).
pub(crate) fn lint(text: &str) -> Vec<String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut series = BTreeSet::new();
    let mut problems = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            families.entry(name.to_owned()).or_default().help = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let name = words.next().unwrap_or_default();
            families.entry(name.to_owned()).or_default().kind = words.next().map(str::to_owned);
        } else if line.starts_with('#') {
            continue;
        } else {
            let (head, _) = line.rsplit_once(' ').unwrap_or((line, ""));
            let (name, labels) = head.split_once('{').unwrap_or((head, ""));
            let family = family_of(name, &families).to_owned();
            if !series.insert(head.to_owned()) {
                problems.push(format!("{family}: metric {head} is duplicated"));
            }
            let entry = families.entry(family).or_default();
            for pair in labels
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                if let Some((label, _)) = pair.split_once('=') {
                    entry.labels.insert(label.to_owned());
                }
            }
        }
    }
    for (name, family) in &families {
        let kind = family.kind.as_deref().unwrap_or("untyped");
        let mut problem = |p: &str| problems.push(format!("{name}: {p}"));
        if !family.help {
            problem("no help text");
        }
        if let Some((unit, base)) = unit_of(name)
            && unit != base
        {
            problem(&format!("use base unit \"{base}\" instead of \"{unit}\""));
        }
        let total = name.ends_with("_total");
        if kind == "counter" && !total {
            problem("counter metrics should have \"_total\" suffix");
        } else if kind != "untyped" && kind != "counter" && total {
            problem("non-counter metrics should not have \"_total\" suffix");
        }
        if kind != "untyped" && kind != "gauge" && name.ends_with("_timestamp_seconds") {
            problem("non-gauge metrics should not have \"_timestamp_seconds\" suffix");
        }
        if kind != "untyped" {
            let histogram = kind == "histogram";
            let summary = kind == "summary";
            if !histogram && name.ends_with("_bucket") {
                problem("non-histogram metrics should not have \"_bucket\" suffix");
            }
            for suffix in ["_count", "_sum"] {
                if !histogram && !summary && name.ends_with(suffix) {
                    problem(&format!(
                        "non-histogram and non-summary metrics should not have \"{suffix}\" suffix"
                    ));
                }
            }
            if !histogram && family.labels.contains("le") {
                problem("non-histogram metrics should not have \"le\" label");
            }
            if !summary && family.labels.contains("quantile") {
                problem("non-summary metrics should not have \"quantile\" label");
            }
        }
        let lower = name.to_lowercase();
        for t in TYPES {
            if has_part(&lower, t) {
                problem(&format!("metric name should not include type '{t}'"));
            }
        }
        if name.contains(':') {
            problem("metric names should not contain ':'");
        }
        if camel_case(name) {
            problem("metric names should be written in 'snake_case' not 'camelCase'");
        }
        if family.labels.iter().any(|l| camel_case(l)) {
            problem("label names should be written in 'snake_case' not 'camelCase'");
        }
        if ABBREVIATIONS.iter().any(|a| has_part(&lower, a)) {
            problem("metric names should not contain abbreviated units");
        }
    }
    problems
}

#[test]
fn the_port_finds_what_promlint_finds() {
    // Cases from promlint's own tests.
    let cases = [
        (
            "# TYPE x_requests counter\nx_requests 1\n",
            "counter metrics should have \"_total\" suffix",
        ),
        (
            "# HELP x_total h\n# TYPE x_total gauge\nx_total 1\n",
            "non-counter metrics should not have \"_total\" suffix",
        ),
        (
            "# HELP x_milliseconds h\n# TYPE x_milliseconds gauge\nx_milliseconds 1\n",
            "use base unit \"seconds\" instead of \"milliseconds\"",
        ),
        (
            "# HELP x_ms h\n# TYPE x_ms gauge\nx_ms 1\n",
            "abbreviated units",
        ),
        (
            "# HELP x_gauge h\n# TYPE x_gauge gauge\nx_gauge 1\n",
            "should not include type 'gauge'",
        ),
        (
            "# HELP fooBar h\n# TYPE fooBar gauge\nfooBar 1\n",
            "'snake_case' not 'camelCase'",
        ),
        (
            "# HELP a:b h\n# TYPE a:b gauge\na:b 1\n",
            "should not contain ':'",
        ),
        (
            "# HELP x_sum h\n# TYPE x_sum gauge\nx_sum 1\n",
            "should not have \"_sum\" suffix",
        ),
        (
            "# HELP x h\n# TYPE x gauge\nx{le=\"1\"} 1\n",
            "should not have \"le\" label",
        ),
        (
            "# HELP x_timestamp_seconds h\n# TYPE x_timestamp_seconds counter\nx_timestamp_seconds 1\n",
            "non-gauge metrics should not have \"_timestamp_seconds\"",
        ),
        (
            "# HELP x h\n# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n",
            "duplicated",
        ),
        ("# TYPE x gauge\nx 1\n", "no help text"),
    ];
    for (text, want) in cases {
        let problems = lint(text);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{text:?}: {problems:?}"
        );
    }
    let clean = "# HELP h_seconds h\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 1\nh_seconds_sum 0.5\nh_seconds_count 1\n# HELP c_total h\n# TYPE c_total counter\nc_total{r=\"a\"} 1\n# HELP g_timestamp_seconds h\n# TYPE g_timestamp_seconds gauge\ng_timestamp_seconds 1\n";
    assert_eq!(lint(clean), Vec::<String>::new());
}
