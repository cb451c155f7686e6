//! Worked solutions for the demo corpus's arithmetic, written the way one works on paper:
//! column by column from the ones digit, with carries and borrows spelled out, ending in
//! `→ ANSWER`. Each step is a one-digit fact a tiny model can learn; the answer is then a copy.
//!
//! Examples:
//! - `addition(347, 268)`       = `347 + 268: 7+8=15 carry 1, 4+6+1=11 carry 1, 3+2+1=6 → 615`
//! - `subtraction(652, 268)`    = `652 - 268: 12-8=4 borrow 1, 15-6-1=8 borrow 1, 6-2-1=3 → 384`
//! - `multiplication(47, 6)`    = `47 * 6: 7*6=42 carry 4, 4*6+4=28 carry 2 → 282`

/// Decimal digits of `n`, ones digit first (`[0]` for 0).
fn digits_low_first(mut n: u64) -> Vec<u64> {
    let mut d = vec![n % 10];
    n /= 10;
    while n > 0 {
        d.push(n % 10);
        n /= 10;
    }
    d
}

/// `a + b` worked column by column.
pub fn addition(a: u64, b: u64) -> String {
    let (da, db) = (digits_low_first(a), digits_low_first(b));
    let mut carry = 0;
    let mut steps = Vec::new();
    for i in 0..da.len().max(db.len()) {
        let (x, y) = (da.get(i).copied().unwrap_or(0), db.get(i).copied().unwrap_or(0));
        let s = x + y + carry;
        let plus_carry = if carry > 0 { "+1" } else { "" };
        carry = s / 10;
        let note = if carry > 0 { " carry 1" } else { "" };
        steps.push(format!("{x}+{y}{plus_carry}={s}{note}"));
    }
    format!("{a} + {b}: {} → {}", steps.join(", "), a + b)
}

/// `a - b` (a ≥ b) worked column by column, borrowing from the next column.
pub fn subtraction(a: u64, b: u64) -> String {
    assert!(a >= b, "subtraction({a}, {b}) would be negative");
    let (da, db) = (digits_low_first(a), digits_low_first(b));
    let mut borrow = 0;
    let mut steps = Vec::new();
    for (i, &x) in da.iter().enumerate() {
        let y = db.get(i).copied().unwrap_or(0);
        let minus_borrow = if borrow > 0 { "-1" } else { "" };
        let needs_borrow = x < y + borrow;
        let top = if needs_borrow { x + 10 } else { x };
        let d = top - y - borrow;
        borrow = u64::from(needs_borrow);
        let note = if needs_borrow { " borrow 1" } else { "" };
        steps.push(format!("{top}-{y}{minus_borrow}={d}{note}"));
    }
    format!("{a} - {b}: {} → {}", steps.join(", "), a - b)
}

/// `a * k` for a one-digit `k`, worked column by column.
pub fn multiplication(a: u64, k: u64) -> String {
    assert!(k < 10, "multiplication works one-digit multipliers, got {k}");
    let mut carry = 0;
    let mut steps = Vec::new();
    for x in digits_low_first(a) {
        let p = x * k + carry;
        let plus_carry = if carry > 0 { format!("+{carry}") } else { String::new() };
        carry = p / 10;
        let note = if carry > 0 { format!(" carry {carry}") } else { String::new() };
        steps.push(format!("{x}*{k}{plus_carry}={p}{note}"));
    }
    // As in `addition`, the last column notes its carry too: it is the product's leading digit.
    format!("{a} * {k}: {} → {}", steps.join(", "), a * k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workings_match_the_module_examples() {
        assert_eq!(addition(347, 268), "347 + 268: 7+8=15 carry 1, 4+6+1=11 carry 1, 3+2+1=6 → 615");
        assert_eq!(subtraction(652, 268), "652 - 268: 12-8=4 borrow 1, 15-6-1=8 borrow 1, 6-2-1=3 → 384");
        assert_eq!(multiplication(47, 6), "47 * 6: 7*6=42 carry 4, 4*6+4=28 carry 2 → 282");
    }

    #[test]
    fn uneven_lengths_and_final_carry() {
        assert_eq!(addition(95, 7), "95 + 7: 5+7=12 carry 1, 9+0+1=10 carry 1 → 102");
        assert_eq!(subtraction(100, 1), "100 - 1: 10-1=9 borrow 1, 10-0-1=9 borrow 1, 1-0-1=0 → 99");
        assert_eq!(multiplication(5, 3), "5 * 3: 5*3=15 carry 1 → 15");
    }
}
