//! Several rounds of the same scenarios, merged: on a shared machine one run per scenario
//! cannot carry a conclusion, so each figure is reported as the median of the rounds with their
//! range, and a target met in some rounds only is "not separable on this machine".
//!
//! Merging works on the report's cells as written: cells that differ between rounds only in
//! their numbers (`12.3 ms`, `+2.3 ms`, `0.80x`, `97.8 %`) become `median [min–max]` (`12.3
//! [10.1–51.0] ms`; signed ones `+2.3 [-0.4 to +9.9] ms`) with the precision the scenario chose; cells that differ otherwise are shown round by round.

use serde_json::json;

use crate::report::{Section, Target};

/// A cell split into its text and the numbers in it, in order.
#[derive(Debug, PartialEq)]
struct Shape {
    /// The text around the numbers, one more piece than there are numbers.
    text: Vec<String>,
    /// Each number's value, decimals as written, and whether it was written with a sign.
    numbers: Vec<(f64, usize, bool)>,
}

/// Splits `cell` into text and numbers. A number is a run of digits with at most one decimal
/// point, with its sign if one comes right before it at the start of the cell or of a word
/// (`+2.3`, `-0.8`; a thousands separator stays in the text).
fn shape(cell: &str) -> Shape {
    let mut text = vec![String::new()];
    let mut numbers = Vec::new();
    let chars: Vec<char> = cell.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let word_start = i == 0 || chars[i - 1].is_whitespace() || "([".contains(chars[i - 1]);
        let signed = word_start
            && (chars[i] == '+' || chars[i] == '-')
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if signed || chars[i].is_ascii_digit() {
            let start = i;
            if signed {
                i += 1;
            }
            let mut seen_point = false;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.'
                        && !seen_point
                        && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                seen_point |= chars[i] == '.';
                i += 1;
            }
            let literal: String = chars[start..i].iter().collect();
            let decimals = literal.split_once('.').map_or(0, |(_, d)| d.len());
            numbers.push((literal.parse().unwrap_or(f64::NAN), decimals, signed));
            text.push(String::new());
        } else {
            text.last_mut().expect("one piece at least").push(chars[i]);
            i += 1;
        }
    }
    Shape { text, numbers }
}

/// The median of the values (the lower middle of an even count) and their range.
fn median_and_range(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values[(values.len() - 1) / 2];
    (median, values[0], values[values.len() - 1])
}

/// One cell of every round, merged.
fn merge_cell(cells: &[&str]) -> String {
    if cells.iter().all(|c| *c == cells[0]) {
        return cells[0].to_owned();
    }
    let shapes: Vec<Shape> = cells.iter().map(|c| shape(c)).collect();
    let alike = shapes
        .iter()
        .all(|s| s.text == shapes[0].text && s.numbers.len() == shapes[0].numbers.len());
    if !alike || shapes[0].numbers.is_empty() {
        return cells.join(" / ");
    }
    let mut out = String::new();
    for (k, piece) in shapes[0].text.iter().enumerate() {
        out.push_str(piece);
        let Some(&(_, decimals, _)) = shapes[0].numbers.get(k) else {
            continue;
        };
        let signed = shapes.iter().any(|s| s.numbers[k].2);
        let mut values: Vec<f64> = shapes.iter().map(|s| s.numbers[k].0).collect();
        let (median, low, high) = median_and_range(&mut values);
        if low == high {
            out.push_str(&format!("{median:.decimals$}"));
        } else if signed {
            // Signed figures keep their signs; "to" keeps a minus apart from the range's dash.
            out.push_str(&format!(
                "{median:+.decimals$} [{low:+.decimals$} to {high:+.decimals$}]"
            ));
        } else {
            out.push_str(&format!(
                "{median:.decimals$} [{low:.decimals$}–{high:.decimals$}]"
            ));
        }
    }
    out
}

/// Rounds' targets of one name, merged: met when met in every round, missed when in none, not
/// separable otherwise.
fn merge_target(rounds: &[&Target]) -> Target {
    let measured: Vec<&str> = rounds.iter().map(|t| t.measured.as_str()).collect();
    let met = rounds.iter().filter(|t| t.met).count();
    Target {
        name: rounds[0].name.clone(),
        measured: merge_cell(&measured),
        limit: rounds[0].limit.clone(),
        met: met == rounds.len(),
        verdict: match met {
            0 => "**missed**".to_owned(),
            m if m == rounds.len() => "met".to_owned(),
            m => format!(
                "not separable on this machine (met in {m} of {} rounds)",
                rounds.len()
            ),
        },
    }
}

/// The same section from every round, merged (the first round's when their tables differ in
/// shape, with a note saying so).
pub(crate) fn merge(rounds: Vec<Section>) -> Section {
    let mut merged = rounds[0].clone();
    if rounds.len() == 1 {
        return merged;
    }
    let same_table = rounds
        .iter()
        .all(|s| s.headers == merged.headers && s.rows.len() == merged.rows.len());
    if same_table {
        merged.rows = (0..merged.rows.len())
            .map(|r| {
                (0..merged.rows[r].len())
                    .map(|c| {
                        let cells: Vec<&str> = rounds
                            .iter()
                            .map(|s| s.rows[r].get(c).map_or("", String::as_str))
                            .collect();
                        merge_cell(&cells)
                    })
                    .collect()
            })
            .collect();
        merged.note(format!(
            "Each cell: the median of {} rounds [their range].",
            rounds.len()
        ));
    } else {
        merged.note(format!(
            "The {} rounds' tables differ in shape: the first round's is shown.",
            rounds.len()
        ));
    }
    merged.targets = merged
        .targets
        .iter()
        .map(|first| {
            let same: Vec<&Target> = rounds
                .iter()
                .filter_map(|s| s.targets.iter().find(|t| t.name == first.name))
                .collect();
            merge_target(&same)
        })
        .collect();
    merged.figures = json!({
        "rounds": rounds.iter().map(|s| s.figures.clone()).collect::<Vec<_>>(),
    });
    merged
}

/// Proves the merging on known cells before any round is measured (the suite has no test
/// harness: it runs as a plain program), so a report never rests on a broken merge.
pub(crate) fn self_test() {
    cells_that_differ_in_numbers_become_median_and_range();
    a_target_met_in_some_rounds_is_not_separable();
}

fn cells_that_differ_in_numbers_become_median_and_range() {
    {
        assert_eq!(
            merge_cell(&["12.3 ms", "10.1 ms", "51.0 ms"]),
            "12.3 [10.1–51.0] ms"
        );
        assert_eq!(
            merge_cell(&["+2.3 ms", "+1.0 ms", "+9.9 ms"]),
            "+2.3 [+1.0 to +9.9] ms"
        );
        assert_eq!(
            merge_cell(&["-0.8 ms", "-2.2 ms", "+0.4 ms"]),
            "-0.8 [-2.2 to +0.4] ms"
        );
        assert_eq!(
            merge_cell(&[
                "10.0 ms (floor + 2.0 ms)",
                "12.0 ms (floor + 4.0 ms)",
                "11.0 ms (floor + 3.0 ms)"
            ]),
            "11.0 [10.0–12.0] ms (floor + 3.0 [2.0–4.0] ms)"
        );
        assert_eq!(
            merge_cell(&["0.80x", "0.54x", "0.87x"]),
            "0.80 [0.54–0.87]x"
        );
        assert_eq!(merge_cell(&["yes", "yes", "yes"]), "yes");
        assert_eq!(
            merge_cell(&["n/a", "1.0 ms", "2.0 ms"]),
            "n/a / 1.0 ms / 2.0 ms"
        );
        assert_eq!(merge_cell(&["500", "100", "500"]), "500 [100–500]");
    }
}

fn a_target_met_in_some_rounds_is_not_separable() {
    {
        let target = |met| Target {
            name: "p99".into(),
            measured: if met { "1.0x".into() } else { "1.2x".into() },
            limit: "<= 1.05x".into(),
            met,
            verdict: String::new(),
        };
        let (a, b) = (target(true), target(false));
        assert_eq!(merge_target(&[&a, &a, &a]).verdict, "met");
        assert_eq!(merge_target(&[&b, &b, &b]).verdict, "**missed**");
        let mixed = merge_target(&[&a, &b, &a]);
        assert!(!mixed.met);
        assert_eq!(
            mixed.verdict,
            "not separable on this machine (met in 2 of 3 rounds)"
        );
        assert_eq!(mixed.measured, "1.0 [1.0–1.2]x");
    }
}
