//! Calendar dates named in a recall cue ("what did we decide on 3 June
//! 2023?"): recall favours memories from those days (`index.rs`).
//!
//! Understood: a day, a month name (or its usual abbreviation) and a year in
//! either order — "3 June 2023", "3rd of June, 2023", "June 3, 2023",
//! "Jun 3 2023" — and ISO dates, "2023-06-03". Days are UTC calendar days;
//! the ranking allows one day either side, so a time zone does not matter.
//! Anything else (relative dates, a month alone, 03/06/2023, which is
//! ambiguous) names no day; nor do impossible dates ("31 February") or years
//! outside 1970..=2200.

use unicode_segmentation::UnicodeSegmentation;

/// At most this many dates are taken from one cue: a cue listing more is
/// not asking about particular days.
pub const MAX_DATES: usize = 4;

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Days since 1970-01-01 (UTC) of every date the cue names, in order, at
/// most [`MAX_DATES`], without repeats.
pub fn days(cue: &str) -> Vec<i64> {
    let words: Vec<(usize, &str)> = cue.unicode_word_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() && out.len() < MAX_DATES {
        let w = |k: usize| words.get(i + k).map(|x| x.1);
        let sep = |k: usize| {
            // Text between word k and word k + 1.
            let (at, word) = words[i + k];
            words.get(i + k + 1).map(|next| &cue[at + word.len()..next.0])
        };
        let iso = match (w(0).and_then(year), w(1), w(2)) {
            (Some(y), Some(m), Some(d))
                if sep(0) == Some("-") && sep(1) == Some("-") && m.len() == 2 && d.len() == 2 =>
            {
                Some((y, m, d))
            }
            _ => None,
        };
        let found = if let Some((y, m, d)) = iso {
            // ISO 8601: 2023-06-03.
            Some((3, y, number(m, 12), number(d, 31)))
        } else if let Some(d) = w(0).and_then(day) {
            let of = usize::from(w(1).is_some_and(|x| x.eq_ignore_ascii_case("of")));
            match (w(1 + of).and_then(month), w(2 + of).and_then(year)) {
                (Some(m), Some(y)) => Some((3 + of, y, Some(m), Some(d))),
                _ => None,
            }
        } else if let (Some(m), Some(d), Some(y)) = (w(0).and_then(month), w(1).and_then(day), w(2).and_then(year)) {
            Some((3, y, Some(m), Some(d)))
        } else {
            None
        };
        match found {
            Some((len, y, Some(m), Some(d))) => {
                match day_number(y, m, d) {
                    Some(n) if !out.contains(&n) => out.push(n),
                    _ => {}
                }
                i += len;
            }
            Some((len, ..)) => i += len,
            None => i += 1,
        }
    }
    out
}

/// 1..=max from one or two ASCII digits.
fn number(w: &str, max: u32) -> Option<u32> {
    if w.is_empty() || w.len() > 2 || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    w.parse().ok().filter(|n| (1..=max).contains(n))
}

/// A day of the month, with or without its English ordinal suffix.
fn day(w: &str) -> Option<u32> {
    let lower = w.to_ascii_lowercase();
    let digits = ["st", "nd", "rd", "th"].iter().find_map(|s| lower.strip_suffix(s)).unwrap_or(&lower);
    number(digits, 31)
}

fn month(w: &str) -> Option<u32> {
    let lower = w.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if lower.len() < 3 {
        return None;
    }
    // The full name, or its first three letters ("Sept" too).
    MONTHS
        .iter()
        .position(|m| {
            *m == lower || (lower.len() == 3 && m.starts_with(lower)) || (lower == "sept" && *m == "september")
        })
        .map(|i| i as u32 + 1)
}

fn year(w: &str) -> Option<i32> {
    if w.len() != 4 || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    w.parse().ok().filter(|y| (1970..=2200).contains(y))
}

/// Days since 1970-01-01, or `None` for a date that does not exist.
fn day_number(y: i32, m: u32, d: u32) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(&format!("{y:04}-{m:02}-{d:02}T00:00:00")).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64 / 86_400)
}

#[cfg(test)]
mod tests {
    use super::days;

    /// 2023-06-03 is day 19,511 since 1970-01-01.
    const JUNE_3: i64 = 19_511;

    #[test]
    fn every_written_form_names_the_same_day() {
        for cue in [
            "what did we decide on 3 June 2023?",
            "what did we decide on 3 June, 2023?",
            "on 3rd of June, 2023",
            "June 3, 2023",
            "jun 3 2023",
            "3 Jun. 2023",
            "2023-06-03",
            "(2023-06-03)",
        ] {
            assert_eq!(days(cue), vec![JUNE_3], "{cue}");
        }
        assert_eq!(days("Sept 1, 2023"), vec![JUNE_3 + 90]);
        assert_eq!(days("on 1 January 1970"), vec![0]);
    }

    #[test]
    fn what_is_not_a_day_names_none() {
        for cue in [
            "",
            "what did we decide in June 2023?",
            "June 2023",
            "03/06/2023",
            "31 February 2023",
            "29 February 2023",
            "2023-6-3",
            "2023-13-01",
            "2023 06 03",
            "32 June 2023",
            "0 June 2023",
            "3 Juno 2023",
            "3 June 23",
            "3 June 1492",
            "31 December 1969",
            "the 3 may 20000 meetings",
            "may I ask 2 things",
        ] {
            assert_eq!(days(cue), Vec::<i64>::new(), "{cue}");
        }
        assert_eq!(days("29 February 2024").len(), 1);
    }

    #[test]
    fn several_dates_each_once_and_at_most_four() {
        assert_eq!(days("between 3 June 2023 and June 4, 2023, not 2023-06-03"), vec![JUNE_3, JUNE_3 + 1]);
        let many: String = (1..=9).map(|d| format!("{d} June 2023 ")).collect();
        assert_eq!(days(&many), vec![JUNE_3 - 2, JUNE_3 - 1, JUNE_3, JUNE_3 + 1]);
    }
}
