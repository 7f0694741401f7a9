//! Numbers as short text: sizes, rates, latencies, times, bars and sparklines.

const KIB: f64 = 1024.0;

/// A size in few characters: `512B`, `12K`, `3.4M`, `31G`.
pub fn size(bytes: u64) -> String {
    let (value, unit) = scale(bytes, bytes);
    format!("{}{unit}", number(value))
}

/// Used and total in one unit, chosen by the total: `3.2/7.8G`, `12/31G`.
pub fn size_pair(used: u64, total: u64) -> String {
    let (t, unit) = scale(total.max(used), total);
    let (u, _) = scale(total.max(used), used);
    format!("{}/{}{unit}", number(u), number(t))
}

/// Scales `value` into the unit that suits `by`.
fn scale(by: u64, value: u64) -> (f64, &'static str) {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut unit = 0;
    let mut limit = KIB;
    while (by as f64) >= limit && unit < UNITS.len() - 1 {
        unit += 1;
        limit *= KIB;
    }
    (value as f64 / (limit / KIB), UNITS[unit])
}

fn number(value: f64) -> String {
    if value < 9.95 && value.fract() != 0.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// A rate, or `-` when not yet known.
pub fn rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_string(),
        Some(r) if r >= 9_950.0 => format!("{:.0}k", r / 1000.0),
        Some(r) if r >= 999.5 => format!("{:.1}k", r / 1000.0),
        Some(r) if r >= 99.95 || r == 0.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

/// A latency given in microseconds: `850µs`, `12ms`, `1.2s`; `-` without data.
pub fn latency(us: Option<u64>) -> String {
    match us {
        None => "-".to_string(),
        Some(us) if us < 1_000 => format!("{us}µs"),
        Some(us) if us < 9_950 => format!("{:.1}ms", us as f64 / 1e3),
        Some(us) if us < 999_500 => format!("{:.0}ms", us as f64 / 1e3),
        Some(us) if us < 9_950_000 => format!("{:.1}s", us as f64 / 1e6),
        Some(us) => format!("{:.0}s", us as f64 / 1e6),
    }
}

/// A duration given in milliseconds: `45s`, `4m10s`, `2h05m`.
pub fn duration_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// The time of day (UTC) of milliseconds since the epoch: `12:03:04`.
pub fn clock(time_ms: u64) -> String {
    let s = (time_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

/// A horizontal gauge of `width` cells for `fraction` (0..1), with eighth-cell steps.
pub fn bar(fraction: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let eighths = (fraction * width as f64 * 8.0).round() as usize;
    let full = eighths / 8;
    let mut out = String::with_capacity(width * 3);
    for _ in 0..full.min(width) {
        out.push('█');
    }
    if full < width {
        let part = eighths % 8;
        out.push(if part == 0 { '░' } else { PARTS[part] });
        for _ in full + 1..width {
            out.push('░');
        }
    }
    out
}

/// A one-cell vertical gauge for `fraction` (0..1).
pub fn level(fraction: f64) -> char {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    LEVELS[((fraction * 7.0).round() as usize).min(7)]
}

/// The last `width` values as a sparkline scaled to their maximum, right-aligned.
pub fn sparkline(values: impl Iterator<Item = f64> + Clone, width: usize) -> String {
    let count = values.clone().count();
    let skip = count.saturating_sub(width);
    let max = values
        .clone()
        .skip(skip)
        .fold(0.0_f64, |m, v| if v > m { v } else { m });
    let mut out = String::with_capacity(width * 3);
    for _ in count.min(width)..width {
        out.push(' ');
    }
    for v in values.skip(skip) {
        out.push(if max > 0.0 { level(v / max) } else { '▁' });
    }
    out
}

/// `a/b` as a fraction, 0 when b is 0.
pub fn fraction(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_short() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(3 * 1024 * 1024 + 400 * 1024), "3.4M");
        assert_eq!(size(31 << 30), "31G");
        assert_eq!(size_pair(12 << 30, 31 << 30), "12/31G");
        assert_eq!(size_pair(512 << 20, 1 << 30), "0.5/1G");
        assert_eq!(size_pair(0, 0), "0/0B");
    }

    #[test]
    fn latencies_rates_and_times() {
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(850)), "850µs");
        assert_eq!(latency(Some(1_234)), "1.2ms");
        assert_eq!(latency(Some(45_000)), "45ms");
        assert_eq!(latency(Some(2_500_000)), "2.5s");
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.0)), "0");
        assert_eq!(rate(Some(12.34)), "12.3");
        assert_eq!(rate(Some(1234.0)), "1.2k");
        assert_eq!(duration_ms(250_000), "4m10s");
        assert_eq!(duration_ms(-5), "0s");
        assert_eq!(clock(1_700_000_000_000), "22:13:20");
    }

    #[test]
    fn bars_and_sparklines_have_their_width() {
        assert_eq!(bar(0.0, 4), "░░░░");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(bar(f64::NAN, 3).chars().count(), 3);
        assert_eq!(bar(0.3, 5).chars().count(), 5);
        let spark = sparkline([0.0, 5.0, 10.0].into_iter(), 5);
        assert_eq!(spark, "  ▁▅█");
        assert_eq!(sparkline([1.0; 100].into_iter(), 8).chars().count(), 8);
    }
}
