//! How kiln writes numbers for people: the command line's tables and the web UI round the same
//! way.

/// A number for people: integers as integers, others with six significant digits.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{}", x as i64);
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-4..15).contains(&magnitude) {
        return format!("{x:.5e}");
    }
    let decimals = (5 - magnitude).clamp(0, 12) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::num;

    #[test]
    fn numbers_for_people() {
        assert_eq!(num(569.0), "569");
        assert_eq!(num(14.127291739894552), "14.1273");
        assert_eq!(num(0.48515303791685704), "0.485153");
        assert_eq!(num(0.0627976), "0.0627976");
        assert_eq!(num(-0.5), "-0.5");
        assert_eq!(num(1.5e-7), "1.50000e-7");
        assert_eq!(num(f64::NAN), "NaN");
    }
}
