//! A checker of the Prometheus text exposition format (version 0.0.4), as
//! far as this endpoint uses it: every sample's family has `# HELP` and
//! `# TYPE` before its first sample, names and label sets are well formed,
//! no series appears twice, values are numbers, and each histogram series
//! has increasing `le` bounds, cumulative bucket counts ending at `+Inf`
//! equal to its `_count`, and a `_sum`. Pure; used by the unit tests and by
//! the integration tests on a live scrape.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample line: name, labels in order, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// Parse one sample line.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = |why: &str| format!("{why}: {line:?}");
    let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(bad("invalid metric name"));
    }
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut l) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = l.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = l.find("=\"").ok_or_else(|| bad("label without =\""))?;
            let key = &l[..eq];
            if !valid_name(key) || key.contains(':') {
                return Err(bad("invalid label name"));
            }
            let body = &l[eq + 2..];
            let mut value = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err(bad("invalid escape in a label value")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("unterminated label value")),
                }
            };
            labels.push((key.to_string(), value));
            l = &body[end + 1..];
            l = l.strip_prefix(',').unwrap_or(l);
        }
    }
    let mut parts = rest.split_whitespace();
    let value = parts.next().and_then(parse_value).ok_or_else(|| bad("value is not a number"))?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>().map_err(|_| bad("invalid timestamp"))?;
    }
    if parts.next().is_some() || !rest.starts_with(' ') {
        return Err(bad("malformed sample"));
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// The family a sample belongs to, given the declared types: its own name,
/// or for a histogram's `_bucket`, `_sum` and `_count` the base name.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| types.get(*base).is_some_and(|t| t == "histogram" || t == "summary"))
}

/// Check a whole exposition text; the first problem found is the error.
pub fn check(text: &str) -> Result<(), String> {
    let mut helps: HashSet<String> = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    // Per histogram series (family + labels without le): buckets, sum, count.
    type Key = (String, Vec<(String, String)>);
    let mut buckets: BTreeMap<Key, Vec<(f64, f64)>> = BTreeMap::new();
    let mut sums: HashSet<Key> = HashSet::new();
    let mut counts: BTreeMap<Key, f64> = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut w = c.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("HELP"), Some(name), _) if !helps.insert(name.to_string()) => {
                    return Err(format!("second HELP for {name}"));
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("unknown type {kind} for {name}"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(format!("second TYPE for {name}"));
                    }
                }
                _ => {}
            }
            continue;
        }
        let s = parse_sample(line)?;
        let family = family_of(&s.name, &types).ok_or_else(|| format!("sample before its TYPE line: {line:?}"))?;
        if !helps.contains(family) {
            return Err(format!("no HELP for {family}"));
        }
        let mut series = s.name.clone();
        for (k, v) in &s.labels {
            series.push_str(&format!(",{k}={v}"));
        }
        if !seen.insert(series) {
            return Err(format!("series appears twice: {line:?}"));
        }
        if types[family] != "histogram" {
            continue;
        }
        let base: Vec<(String, String)> = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        let key = (family.to_string(), base);
        if s.name.ends_with("_bucket") {
            let le = s.labels.iter().find(|(k, _)| k == "le").ok_or_else(|| format!("bucket without le: {line:?}"))?;
            let bound = parse_value(&le.1).ok_or_else(|| format!("invalid le: {line:?}"))?;
            buckets.entry(key).or_default().push((bound, s.value));
        } else if s.name.ends_with("_sum") {
            sums.insert(key);
        } else if s.name.ends_with("_count") {
            counts.insert(key, s.value);
        }
    }
    for (key, b) in &buckets {
        let what = format!("{} {:?}", key.0, key.1);
        if b.windows(2).any(|w| w[1].0 <= w[0].0) {
            return Err(format!("{what}: le bounds not increasing"));
        }
        if b.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{what}: buckets not cumulative"));
        }
        let Some(&(last, n)) = b.last() else { continue };
        if last != f64::INFINITY {
            return Err(format!("{what}: no +Inf bucket"));
        }
        if counts.get(key) != Some(&n) {
            return Err(format!("{what}: +Inf bucket {n} differs from _count {:?}", counts.get(key)));
        }
        if !sums.contains(key) {
            return Err(format!("{what}: no _sum"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{w=\"0\"} 3\na_total{w=\"1\"} 4\n\
        # HELP h H.\n# TYPE h histogram\nh_bucket{w=\"0\",le=\"0.1\"} 1\nh_bucket{w=\"0\",le=\"1\"} 2\n\
        h_bucket{w=\"0\",le=\"+Inf\"} 2\nh_sum{w=\"0\"} 0.7\nh_count{w=\"0\"} 2\n";

    #[test]
    fn a_valid_text_passes() {
        check(GOOD).expect("valid");
        let s = parse_sample("x{a=\"q\\\"uote\",b=\"\"} 1.5e3").expect("parsed");
        assert_eq!(s.labels, vec![("a".into(), "q\"uote".into()), ("b".into(), String::new())]);
        assert_eq!(s.value, 1500.0);
    }

    #[test]
    fn each_kind_of_mistake_is_caught() {
        let broken = [
            (GOOD.replace("# TYPE a_total counter\n", ""), "sample before its TYPE"),
            (GOOD.replace("# HELP h H.\n", ""), "no HELP"),
            (GOOD.replace("le=\"1\"} 2", "le=\"1\"} 0"), "not cumulative"),
            (GOOD.replace("le=\"+Inf\"} 2", "le=\"+Inf\"} 3"), "differs from _count"),
            (GOOD.replace("h_bucket{w=\"0\",le=\"+Inf\"} 2\n", ""), "no +Inf"),
            (GOOD.replace("h_sum{w=\"0\"} 0.7\n", ""), "no _sum"),
            (GOOD.replace("le=\"1\"", "le=\"0.01\""), "not increasing"),
            (GOOD.replace("a_total{w=\"1\"} 4", "a_total{w=\"0\"} 4"), "twice"),
            (GOOD.replace("} 4", "} four"), "not a number"),
            (GOOD.replace("a_total{w=\"1\"}", "a-total{w=\"1\"}"), "invalid metric name"),
        ];
        for (text, why) in broken {
            let err = check(&text).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
