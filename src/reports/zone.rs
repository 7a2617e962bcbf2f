//! Time zones by IANA name, so that a report's days are the clinic's days: the UTC offset at any
//! instant and the instant each local day begins. jiff reads the system's zoneinfo (or its
//! bundled tz database where a host has none), with the rules that run past 2037 and days that
//! do not begin at midnight.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Longest zone name accepted.
const MAX_NAME: usize = 64;

/// A time zone by name.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The IANA name.
    pub name: String,
    tz: TimeZone,
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl Zone {
    /// UTC.
    pub fn utc() -> Self {
        Self { name: "UTC".into(), tz: TimeZone::UTC }
    }

    /// The zone called `name` (e.g. `Australia/Sydney`, `Asia/Dhaka`), or `None` if the name
    /// is malformed or the tz database does not know it.
    pub fn named(name: &str) -> Option<Self> {
        if name == "UTC" || name == "Etc/UTC" {
            return Some(Self::utc());
        }
        // Names only: never a path, never a POSIX rule string.
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME
            && !name.starts_with('/')
            && !name.contains("..")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !ok {
            return None;
        }
        let tz = TimeZone::get(name).ok()?;
        Some(Self { name: name.to_owned(), tz })
    }

    /// Seconds east of UTC at `unix_secs`.
    pub fn offset_at(&self, unix_secs: i64) -> i64 {
        match Timestamp::from_second(unix_secs) {
            Ok(t) => i64::from(self.tz.to_offset(t).seconds()),
            Err(_) => 0,
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

    /// The instant (Unix ms) the local day `date` begins: midnight, or the first instant after
    /// it where a clock change skips midnight.
    pub fn midnight(&self, date: Date) -> i64 {
        let start = i8::try_from(date.m)
            .ok()
            .zip(i8::try_from(date.d).ok())
            .zip(i16::try_from(date.y).ok())
            .and_then(|((m, d), y)| jiff::civil::Date::new(y, m, d).ok())
            .and_then(|d| d.to_zoned_datetime(self.tz.clone()).ok());
        match start {
            Some(z) => z.timestamp().as_millisecond(),
            // Outside jiff's range (years past 9999 are refused when parsed): UTC midnight.
            None => date.days() * 86_400_000,
        }
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
        let syd = Zone::named("Australia/Sydney").expect("Sydney is known");
        // 2026-12-01 00:00 UTC is 11:00 in Sydney (AEDT, +11).
        assert_eq!(syd.offset_at(1_796_083_200), 11 * 3600);
        assert_eq!(syd.offset_at(1_781_136_000), 10 * 3600, "June: AEST");
        let dec1 = Date::parse("2026-12-01").unwrap();
        assert_eq!(syd.midnight(dec1), 1_796_083_200_000 - 11 * 3_600_000);
        assert_eq!(syd.date_of(1_796_083_200_000 - 1_800_000).to_string(), "2026-12-01");
        assert_eq!(syd.time_of(1_796_083_200_000), "11:00");
        assert!(Zone::named("../../etc/passwd").is_none() && Zone::named("Mars/Base").is_none());
    }

    #[test]
    fn daylight_saving_holds_past_2037() {
        let syd = Zone::named("Australia/Sydney").expect("Sydney is known");
        // 2040-07-01 00:00 UTC: winter, AEST (+10); 2040-12-01: summer, AEDT (+11).
        assert_eq!(syd.offset_at(2_224_713_600), 10 * 3600, "July 2040");
        assert_eq!(syd.offset_at(2_237_932_800), 11 * 3600, "December 2040");
    }

    #[test]
    fn a_day_whose_midnight_does_not_exist_starts_when_it_does() {
        // Havana moves its clocks from 00:00 to 01:00 on 2024-03-10: that day begins at
        // 01:00 local (-04:00), 05:00 UTC, and is 23 hours long.
        let havana = Zone::named("America/Havana").expect("Havana is known");
        let day = Date::parse("2024-03-10").unwrap();
        assert_eq!(havana.midnight(day), 1_710_046_800_000);
        assert_eq!(havana.date_of(1_710_046_800_000).to_string(), "2024-03-10");
        assert_eq!(havana.date_of(1_710_046_800_000 - 1).to_string(), "2024-03-09");
        assert_eq!(havana.midnight(day.next()) - havana.midnight(day), 23 * 3_600_000);
        assert_eq!(havana.midnight(day) - havana.midnight(Date::parse("2024-03-09").unwrap()), 24 * 3_600_000);
    }
}
