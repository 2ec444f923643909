//! Small formatting helpers shared by the agent's modules.

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `9812` → `9,812`: counts in log lines an operator reads.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `4500` → `1h 15m`, `75` → `1m 15s`, `9` → `9s`: durations (ETA, time in trouble).
pub fn duration_words(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Lower-case hex of `bytes` (digests for logs and comparisons).
pub fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_words() {
        assert_eq!(super::duration_words(9), "9s");
        assert_eq!(super::duration_words(75), "1m 15s");
        assert_eq!(super::duration_words(4500), "1h 15m");
        assert_eq!(super::duration_words(2 * 86400 + 7200), "2d 2h");
        assert_eq!(super::duration_words(-3), "0s");
    }
}
