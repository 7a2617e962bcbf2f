//! Time zones by IANA name, read from the system's zoneinfo files (TZif): the UTC offset at any
//! instant, so that a report's days are the clinic's days. Only the version 1 data block is
//! read (transitions to 2037, which Debian's "fat" files carry); after the last transition the
//! last offset holds.

use std::path::PathBuf;

/// Where zoneinfo files are, unless `TZDIR` says otherwise.
const ZONEINFO_DIR: &str = "/usr/share/zoneinfo";
/// Longest zone name accepted.
const MAX_NAME: usize = 64;

/// A time zone: its transitions (Unix seconds) and the offset (seconds east of UTC) from each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The IANA name.
    pub name: String,
    /// Offset before the first transition.
    initial: i64,
    /// (transition at, offset from then on), in order.
    transitions: Vec<(i64, i64)>,
}

impl Zone {
    /// UTC.
    pub fn utc() -> Self {
        Self { name: "UTC".into(), initial: 0, transitions: Vec::new() }
    }

    /// The zone called `name` (e.g. `Australia/Sydney`, `Asia/Dhaka`), or `None` if the name
    /// is malformed or the system does not know it.
    pub fn named(name: &str) -> Option<Self> {
        if name == "UTC" || name == "Etc/UTC" {
            return Some(Self::utc());
        }
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME
            && !name.starts_with('/')
            && !name.contains("..")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !ok {
            return None;
        }
        let dir = std::env::var_os("TZDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(ZONEINFO_DIR));
        let data = std::fs::read(dir.join(name)).ok()?;
        Self::parse(name, &data)
    }

    /// Reads a TZif file's version 1 block.
    fn parse(name: &str, d: &[u8]) -> Option<Self> {
        if d.len() < 44 || &d[..4] != b"TZif" {
            return None;
        }
        let count =
            |i: usize| u32::from_be_bytes([d[20 + 4 * i], d[21 + 4 * i], d[22 + 4 * i], d[23 + 4 * i]]) as usize;
        let (timecnt, typecnt) = (count(3), count(4));
        if typecnt == 0 {
            return None;
        }
        let times_at = 44;
        let idx_at = times_at + 4 * timecnt;
        let types_at = idx_at + timecnt;
        if d.len() < types_at + 6 * typecnt {
            return None;
        }
        let offset_of = |t: usize| {
            let o = types_at + 6 * t;
            i64::from(i32::from_be_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]))
        };
        let mut transitions = Vec::with_capacity(timecnt);
        for i in 0..timecnt {
            let o = times_at + 4 * i;
            let at = i64::from(i32::from_be_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]));
            let t = usize::from(d[idx_at + i]);
            if t >= typecnt {
                return None;
            }
            transitions.push((at, offset_of(t)));
        }
        Some(Self { name: name.to_owned(), initial: offset_of(0), transitions })
    }

    /// Seconds east of UTC at `unix_secs`.
    pub fn offset_at(&self, unix_secs: i64) -> i64 {
        match self.transitions.partition_point(|(at, _)| *at <= unix_secs) {
            0 => self.initial,
            n => self.transitions[n - 1].1,
        }
    }

    /// The local calendar date of an instant (Unix ms).
    pub fn date_of(&self, ms: i64) -> Date {
        let local = ms.div_euclid(1000) + self.offset_at(ms.div_euclid(1000));
        Date::from_days(local.div_euclid(86_400))
    }

    /// The local time of day of an instant, `HH:MM`.
    pub fn time_of(&self, ms: i64) -> String {
        let local = ms.div_euclid(1000) + self.offset_at(ms.div_euclid(1000));
        let s = local.rem_euclid(86_400);
        format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
    }

    /// The instant (Unix ms) local midnight begins on `date`.
    pub fn midnight(&self, date: Date) -> i64 {
        let local = date.days() * 86_400;
        // The offset at the instant itself, found from a first guess (a DST change at
        // midnight is settled by the second look).
        let guess = local - self.offset_at(local);
        (local - self.offset_at(guess)) * 1000
    }
}

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year.
    pub y: i64,
    /// Month 1-12.
    pub m: u32,
    /// Day 1-31.
    pub d: u32,
}

impl Date {
    /// `YYYY-MM-DD`, checked.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('-');
        let (y, m, d) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        if parts.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 {
            return None;
        }
        let date = Self { y, m, d };
        (Self::from_days(date.days()) == date).then_some(date)
    }

    /// Days since 1970-01-01 (H. Hinnant's days_from_civil).
    pub fn days(self) -> i64 {
        let y = if self.m <= 2 { self.y - 1 } else { self.y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.m);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date `days` after 1970-01-01 (civil_from_days).
    pub fn from_days(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Self { y: yoe + era * 400 + i64::from(m <= 2), m, d }
    }

    /// The next day.
    pub fn next(self) -> Self {
        Self::from_days(self.days() + 1)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.y, self.m, self.d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_bad_ones_are_refused() {
        let d = Date::parse("2026-12-01").unwrap();
        assert_eq!(d.days(), 20_788);
        assert_eq!(Date::from_days(d.days()), d);
        assert_eq!(Date::parse("2024-02-29").unwrap().next().to_string(), "2024-03-01");
        for bad in ["2026-02-30", "2026-13-01", "x", "2026-1", "2026-01-01-01", "1969-12-31"] {
            assert_eq!(Date::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sydney_days_follow_daylight_saving() {
        let Some(syd) = Zone::named("Australia/Sydney") else { return };
        // 2026-12-01 00:00 UTC is 11:00 in Sydney (AEDT, +11).
        assert_eq!(syd.offset_at(1_796_083_200), 11 * 3600);
        assert_eq!(syd.offset_at(1_781_136_000), 10 * 3600, "June: AEST");
        let dec1 = Date::parse("2026-12-01").unwrap();
        assert_eq!(syd.midnight(dec1), 1_796_083_200_000 - 11 * 3_600_000);
        assert_eq!(syd.date_of(1_796_083_200_000 - 1_800_000).to_string(), "2026-12-01");
        assert_eq!(syd.time_of(1_796_083_200_000), "11:00");
        assert!(Zone::named("../../etc/passwd").is_none() && Zone::named("Mars/Base").is_none());
    }
}
