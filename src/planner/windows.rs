//! Maintenance windows (`spec.windows`): new nodes start their checks only
//! inside one; outside, what runs finishes and nothing new starts, and the
//! batch says when the next window opens. Calendar and time-zone arithmetic
//! is jiff's, with its bundled time-zone database (daylight saving gaps and
//! folds resolved as jiff's `compatible` disambiguation does).

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use super::pool::parse_window;
use crate::api::{Weekday, Window};

/// Where `now` stands against a pool's windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// No windows, or inside one.
    Open,
    /// Outside every window; the next opens then, in the time zone of the
    /// window that opens.
    Closed { opens: Timestamp, time_zone: String },
    /// A window cannot be read: the field and why.
    Invalid { field: String, problem: String },
}

/// A window read: its days, its local start, its length, its zone.
struct Read {
    days: Vec<jiff::civil::Weekday>,
    start: Time,
    length: SignedDuration,
    zone: TimeZone,
}

fn weekday(day: Weekday) -> jiff::civil::Weekday {
    use jiff::civil::Weekday as W;
    match day {
        Weekday::Mon => W::Monday,
        Weekday::Tue => W::Tuesday,
        Weekday::Wed => W::Wednesday,
        Weekday::Thu => W::Thursday,
        Weekday::Fri => W::Friday,
        Weekday::Sat => W::Saturday,
        Weekday::Sun => W::Sunday,
    }
}

fn read(i: usize, window: &Window) -> Result<Read, (String, String)> {
    let field = |name: &str| format!("spec.windows[{i}].{name}");
    let zone = TimeZone::get(&window.time_zone).map_err(|_| {
        (
            field("timeZone"),
            format!(
                "unknown time zone {:?}: use an IANA name such as America/Chicago",
                window.time_zone
            ),
        )
    })?;
    let start: Time = window
        .start
        .parse()
        .map_err(|_| (field("start"), format!("{:?} is not HH:MM", window.start)))?;
    let length = parse_window(&window.duration)
        .filter(|d| d.is_positive() && *d <= SignedDuration::from_hours(168))
        .ok_or_else(|| {
            (
                field("duration"),
                format!(
                    "{:?} never opens a window: more than 0, at most 168h",
                    window.duration
                ),
            )
        })?;
    if window.days.is_empty() {
        return Err((field("days"), "names no day: the window never opens".into()));
    }
    Ok(Read {
        days: window.days.iter().copied().map(weekday).collect(),
        start,
        length,
        zone,
    })
}

/// The openings of `w` on the local dates from `from` for `days` days.
fn openings(w: &Read, from: Date, days: i64) -> impl Iterator<Item = Timestamp> + '_ {
    (0..days).filter_map(move |n| {
        let date = from.checked_add(n.days()).ok()?;
        if !w.days.contains(&date.weekday()) {
            return None;
        }
        let local = date.to_datetime(w.start);
        Some(local.to_zoned(w.zone.clone()).ok()?.timestamp())
    })
}

/// The first window that cannot be read, as (field, problem).
pub fn check(windows: &[Window]) -> Result<(), (String, String)> {
    windows
        .iter()
        .enumerate()
        .try_for_each(|(i, w)| read(i, w).map(|_| ()))
}

/// Where `now` stands against `windows`.
pub fn standing(windows: &[Window], now: Timestamp) -> Standing {
    if windows.is_empty() {
        return Standing::Open;
    }
    let mut next: Option<(Timestamp, &str)> = None;
    for (i, window) in windows.iter().enumerate() {
        let w = match read(i, window) {
            Ok(w) => w,
            Err((field, problem)) => return Standing::Invalid { field, problem },
        };
        let today = now.to_zoned(w.zone.clone()).date();
        // A window opened up to 8 days ago may still be open (168h at most);
        // the next opening is within the coming 8 days.
        let Ok(from) = today.checked_sub(8.days()) else {
            continue;
        };
        for opens in openings(&w, from, 17) {
            let closes = super::snapshot::later(opens, w.length);
            if opens <= now && now < closes {
                return Standing::Open;
            }
            if opens > now && next.is_none_or(|(t, _)| opens < t) {
                next = Some((opens, &window.time_zone));
            }
        }
    }
    // Every window's days exist every week: only dates at the end of time
    // have no next opening.
    let (opens, zone) = next.unwrap_or((Timestamp::MAX, "UTC"));
    Standing::Closed {
        opens,
        time_zone: zone.to_string(),
    }
}

/// "Thu 2026-12-03 08:00 CST (in 15h 0m)": `opens` in `time_zone`.
pub fn describe_opening(time_zone: &str, opens: Timestamp, now: Timestamp) -> String {
    let zone = TimeZone::get(time_zone).unwrap_or(TimeZone::UTC);
    let local = opens.to_zoned(zone);
    let wait = opens.duration_since(now);
    let (h, m) = (wait.as_secs() / 3600, (wait.as_secs() % 3600) / 60);
    format!(
        "{} ({})",
        local.strftime("%a %Y-%m-%d %H:%M %Z"),
        if h > 0 {
            format!("in {h}h {m}m")
        } else {
            format!("in {m}m")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[Weekday], start: &str, duration: &str, zone: &str) -> Window {
        Window {
            days: days.to_vec(),
            start: start.into(),
            duration: duration.into(),
            time_zone: zone.into(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn inside_and_outside_a_weekday_window_in_its_zone() {
        // 08:00-16:00 Chicago time (UTC-6 in December), Monday to Friday.
        let w = [window(
            &[
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            "08:00",
            "8h",
            "America/Chicago",
        )];
        // Wednesday 2026-12-02 15:00 UTC = 09:00 CST: open.
        assert_eq!(standing(&w, at("2026-12-02T15:00:00Z")), Standing::Open);
        // 23:00 UTC = 17:00 CST: closed until Thursday 08:00 CST.
        assert_eq!(
            standing(&w, at("2026-12-02T23:00:00Z")),
            Standing::Closed {
                opens: at("2026-12-03T14:00:00Z"),
                time_zone: "America/Chicago".into()
            }
        );
        // Saturday: closed until Monday.
        assert_eq!(
            standing(&w, at("2026-12-05T15:00:00Z")),
            Standing::Closed {
                opens: at("2026-12-07T14:00:00Z"),
                time_zone: "America/Chicago".into()
            }
        );
        let said = describe_opening(
            "America/Chicago",
            at("2026-12-03T14:00:00Z"),
            at("2026-12-02T23:00:00Z"),
        );
        assert_eq!(said, "Thu 2026-12-03 08:00 CST (in 15h 0m)");
    }

    #[test]
    fn the_next_opening_is_told_in_its_own_windows_zone() {
        let w = [
            window(&[Weekday::Mon], "08:00", "1h", "Asia/Tokyo"),
            window(&[Weekday::Thu], "08:00", "1h", "America/Chicago"),
        ];
        // Wednesday 23:00 UTC: Chicago's Thursday 08:00 (14:00 UTC) comes
        // before Tokyo's Monday.
        let Standing::Closed { opens, time_zone } = standing(&w, at("2026-12-02T23:00:00Z")) else {
            panic!("closed")
        };
        assert_eq!(time_zone, "America/Chicago");
        assert_eq!(opens, at("2026-12-03T14:00:00Z"));
    }

    #[test]
    fn a_window_past_midnight_is_open_the_next_morning() {
        let w = [window(&[Weekday::Sat], "22:00", "10h", "UTC")];
        // Sunday 07:00 UTC: inside Saturday's window.
        assert_eq!(standing(&w, at("2026-12-06T07:00:00Z")), Standing::Open);
    }

    #[test]
    fn bad_windows_name_their_field() {
        let bad = |w: Window| match standing(&[w], at("2026-12-02T00:00:00Z")) {
            Standing::Invalid { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bad(window(&[Weekday::Mon], "08:00", "8h", "Mars/Olympus")),
            "spec.windows[0].timeZone"
        );
        assert_eq!(
            bad(window(&[Weekday::Mon], "08:00", "0s", "UTC")),
            "spec.windows[0].duration"
        );
        assert_eq!(
            bad(window(&[], "08:00", "1h", "UTC")),
            "spec.windows[0].days"
        );
    }
}
