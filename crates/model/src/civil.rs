//! Calendar arithmetic shared by the readers of dates (run folders, scored CSV series).

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm). The caller
/// checks that the month and day exist.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_days() {
        assert_eq!(super::days_from_civil(1970, 1, 1), 0);
        assert_eq!(super::days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(super::days_from_civil(2026, 11, 1), 20_758);
    }
}
