//! Numbers as the report and the charts print them.

/// `x` rounded, with thousands separators; `–` if not finite.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

/// A size in bytes, in KiB when it is a whole number of them.
pub fn bytes(n: usize) -> String {
    if n >= 1024 && n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}
