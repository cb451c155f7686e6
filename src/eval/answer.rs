//! Answer extraction and matching for generated benchmark answers.
//!
//! Rules (in order; the first that finds something wins):
//!
//! **Numbers** ([`extract_number`]):
//! 1. the content of the last `\boxed{…}`;
//! 2. the text after the last `####`;
//! 3. the text after the last "answer is" / "answer:" (case-insensitive);
//! 4. otherwise the whole text.
//!
//! and in the chosen text the *first* number for rules 1–3, the *last* number for rule 4. A number
//! is an optional minus sign, digits with optional thousands commas (`1,234`), an optional decimal
//! part, or a fraction `a/b`. `$`, `%` and trailing units are ignored because only the number is
//! read. Two numbers match when they differ by at most 1e-6 relative.
//!
//! **Option letters** ([`extract_letter`], with `n` choices, letters A.. up to the n-th):
//! 1. the last `\boxed{X}`; 2. "answer is X" / "answer: X" / "answer is (X)";
//! 3. the last parenthesised `(X)`; 4. a letter at the very start followed by `.`, `)`, `:` or
//!    the end; 5. an answer equal to one choice's text (case-insensitive); 6. the last standalone
//!    capital letter in range that is not an article or pronoun, i.e. not followed by a space and
//!    a lower-case word ("A ball rolls" is not an answer).
//!
//! Not here: symbolic equality (`1/2` vs `0.5` is handled, `x+1` vs `1+x` is not).

/// A parsed number; fractions become their value.
pub fn parse_number(s: &str) -> Option<f64> {
    let nums = numbers_in(s);
    if nums.len() == 1 {
        Some(nums[0])
    } else {
        None
    }
}

/// Every number in `s`, in order (see the module docs for what counts as one).
pub fn numbers_in(s: &str) -> Vec<f64> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let neg = (c[i] == '-' || c[i] == '−')
            && i + 1 < c.len()
            && c[i + 1].is_ascii_digit()
            && (i == 0 || !c[i - 1].is_ascii_alphanumeric());
        let start = if neg { i + 1 } else { i };
        if start < c.len() && c[start].is_ascii_digit() && (start == 0 || !c[start - 1].is_ascii_alphanumeric() || neg)
        {
            let (value, end) = read_number(&c, start);
            out.push(if neg { -value } else { value });
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Read digits (thousands commas allowed), an optional decimal part and an optional `/denominator`
/// starting at `c[i]`; returns (value, index after the number).
fn read_number(c: &[char], mut i: usize) -> (f64, usize) {
    let mut text = String::new();
    while i < c.len() {
        if c[i].is_ascii_digit() {
            text.push(c[i]);
        } else if c[i] == ',' && is_thousands_group(c, i + 1) {
            // thousands separator: skip it
        } else {
            break;
        }
        i += 1;
    }
    if i + 1 < c.len() && c[i] == '.' && c[i + 1].is_ascii_digit() {
        text.push('.');
        i += 1;
        while i < c.len() && c[i].is_ascii_digit() {
            text.push(c[i]);
            i += 1;
        }
    }
    let mut value: f64 = text.parse().unwrap_or(f64::NAN);
    if i + 1 < c.len() && c[i] == '/' && c[i + 1].is_ascii_digit() {
        let (den, end) = read_number(c, i + 1);
        if den != 0.0 {
            value /= den;
            i = end;
        }
    }
    (value, i)
}

/// Exactly three digits at c[j..j+3], then no further digit.
fn is_thousands_group(c: &[char], j: usize) -> bool {
    j + 3 <= c.len()
        && c[j..j + 3].iter().all(|d| d.is_ascii_digit())
        && c.get(j + 3).is_none_or(|d| !d.is_ascii_digit())
}

/// The text the answer is read from, and whether to take the first number in it (else the last).
fn answer_span(text: &str) -> (&str, bool) {
    if let Some(inner) = last_boxed(text) {
        return (inner, true);
    }
    if let Some(p) = text.rfind("####") {
        return (&text[p + 4..], true);
    }
    let lower = text.to_lowercase();
    // byte offsets of the lower-cased text equal the original's for ASCII markers only when the
    // text is ASCII; fall back to the whole text otherwise
    if lower.len() == text.len() {
        let marker = ["answer is", "answer:"]
            .iter()
            .filter_map(|m| lower.rfind(m).map(|p| p + m.len()))
            .max();
        if let Some(p) = marker {
            return (&text[p..], true);
        }
    }
    (text, false)
}

/// Content of the last `\boxed{…}` (braces balanced), if any.
pub fn last_boxed(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, ch) in text[start..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The number a generated answer gives (module docs, rules 1–4).
pub fn extract_number(text: &str) -> Option<f64> {
    let (span, first) = answer_span(text);
    let nums = numbers_in(span);
    let pick = if first { nums.first() } else { nums.last() };
    pick.copied().or_else(|| numbers_in(text).last().copied())
}

/// Do two numbers agree within 1e-6 relative?
pub fn numbers_match(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

const LETTERS: &str = "ABCDEFGHIJ";

/// The option letter (0-based index) a generated answer picks among `choices` (module docs).
pub fn extract_letter(text: &str, choices: &[String]) -> Option<usize> {
    let n = choices.len().min(LETTERS.len());
    let index = |c: char| LETTERS.find(c).filter(|&i| i < n);
    let single = |s: &str| -> Option<usize> {
        let t = s.trim().trim_matches(|c| c == '(' || c == ')' || c == '.' || c == ':');
        let mut it = t.chars();
        match (it.next(), it.next()) {
            (Some(c), None) => index(c),
            _ => None,
        }
    };
    if let Some(i) = last_boxed(text).and_then(single) {
        return Some(i);
    }
    if let Some(i) = after_answer_marker(text)
        .and_then(|rest| first_word(rest))
        .and_then(single)
    {
        return Some(i);
    }
    let c: Vec<char> = text.chars().collect();
    let paren = (0..c.len().saturating_sub(2))
        .rev()
        .find_map(|i| (c[i] == '(' && c[i + 2] == ')').then(|| index(c[i + 1])).flatten());
    if paren.is_some() {
        return paren;
    }
    let trimmed: Vec<char> = text.trim_start().chars().collect();
    if let Some(&first) = trimmed.first() {
        if trimmed.get(1).is_none_or(|d| matches!(d, '.' | ')' | ':' | '\n')) {
            if let Some(i) = index(first) {
                return Some(i);
            }
        }
    }
    let norm = |s: &str| s.trim().trim_end_matches('.').to_lowercase();
    if let Some(i) = choices
        .iter()
        .position(|ch| norm(ch) == norm(text) && !norm(ch).is_empty())
    {
        return Some(i);
    }
    (0..c.len()).rev().find_map(|i| {
        let standalone = (i == 0 || !c[i - 1].is_alphanumeric()) && c.get(i + 1).is_none_or(|d| !d.is_alphanumeric());
        let article = c.get(i + 1) == Some(&' ') && c.get(i + 2).is_some_and(|d| d.is_lowercase());
        if standalone && !article {
            index(c[i])
        } else {
            None
        }
    })
}

fn after_answer_marker(text: &str) -> Option<&str> {
    let lower = text.to_lowercase();
    if lower.len() != text.len() {
        return None;
    }
    ["answer is", "answer:"]
        .iter()
        .filter_map(|m| lower.rfind(m).map(|p| p + m.len()))
        .max()
        .map(|p| &text[p..])
}

fn first_word(s: &str) -> Option<&str> {
    s.split_whitespace().next()
}

/// The letter for a 0-based choice index.
pub fn letter(i: usize) -> char {
    LETTERS.chars().nth(i).unwrap_or('?')
}

/// Index of a gold letter among `n` choices.
pub fn letter_index(gold: &str, n: usize) -> Option<usize> {
    let mut it = gold.trim().chars();
    match (it.next(), it.next()) {
        (Some(c), None) => LETTERS.find(c).filter(|&i| i < n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abcd() -> Vec<String> {
        ["red", "green", "blue", "yellow"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn numbers_with_commas_dollars_units_and_signs() {
        assert_eq!(extract_number("She pays $1,234.50 in total."), Some(1234.5));
        assert_eq!(extract_number("It is 18 km/h"), Some(18.0));
        assert_eq!(extract_number("The answer is 45%."), Some(45.0));
        assert_eq!(extract_number("the result is -7"), Some(-7.0));
        assert_eq!(extract_number("He has 3 apples, 4 pears, 12 plums"), Some(12.0));
        assert_eq!(extract_number("1,000,000 people"), Some(1_000_000.0));
        // a comma between list items is not a thousands separator
        assert_eq!(numbers_in("1,2,3"), vec![1.0, 2.0, 3.0]);
        assert_eq!(numbers_in("x2 and 3/4"), vec![0.75]);
    }

    #[test]
    fn markers_take_precedence_over_the_last_number() {
        assert_eq!(extract_number("So \\boxed{42} and then 7 more lines 9"), Some(42.0));
        assert_eq!(extract_number("5 + 5 = 10\n#### 10\nnext 3"), Some(10.0));
        assert_eq!(
            extract_number("The answer is 12 because 3 times 4 is 12 and 99"),
            Some(12.0)
        );
        assert_eq!(extract_number("Answer: 1,050 dollars. I bought 2"), Some(1050.0));
        assert_eq!(extract_number("no number here"), None);
        assert_eq!(extract_number(""), None);
    }

    #[test]
    fn number_matching_is_tolerant_to_formatting_only() {
        assert!(numbers_match(parse_number("1,234").unwrap(), 1234.0));
        assert!(numbers_match(
            parse_number("0.5").unwrap(),
            parse_number("1/2").unwrap()
        ));
        assert!(!numbers_match(12.0, 13.0));
        assert_eq!(parse_number("3 and 4"), None);
    }

    #[test]
    fn option_letters_in_prose() {
        let ch = abcd();
        assert_eq!(extract_letter("The answer is (C).", &ch), Some(2));
        assert_eq!(extract_letter("answer: B", &ch), Some(1));
        assert_eq!(extract_letter("\\boxed{D}", &ch), Some(3));
        assert_eq!(extract_letter("B. green", &ch), Some(1));
        assert_eq!(extract_letter("C", &ch), Some(2));
        assert_eq!(extract_letter("blue", &ch), Some(2));
        // "A" as an article is not an answer; the standalone D is
        assert_eq!(extract_letter("A ball is blue, so I pick D", &ch), Some(3));
        assert_eq!(extract_letter("A cat sat on the mat", &ch), None);
        // a letter outside the choices is ignored
        assert_eq!(extract_letter("(F)", &ch), None);
        assert_eq!(extract_letter("I think (A) or maybe (B)", &ch), Some(1));
        assert_eq!(extract_letter("", &ch), None);
    }

    #[test]
    fn gold_letters() {
        assert_eq!(letter_index("C", 4), Some(2));
        assert_eq!(letter_index("E", 4), None);
        assert_eq!(letter_index("", 4), None);
        assert_eq!(letter(1), 'B');
    }
}
