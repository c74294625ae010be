//! Retention rules D3 (age) and D4 (active 2 years, archive 5 years) as pure functions of
//! dates. The store and the sweeper call these; nothing else decides when data goes.
//!
//! Anniversaries of 29 February fall on 1 March in non-leap years: a child born on
//! 29 Feb 2004 turns 23 on 1 Mar 2027, and a signal made on 29 Feb 2028 may stay active
//! until 1 Mar 2030. Chosen so that no period is ever shortened by the calendar.

use chrono::{Datelike, NaiveDate};

/// Anyone under this age is a child for the VIR (D3).
pub const AGE_LIMIT_YEARS: i32 = 23;
/// Longest time a signal stays active (D4).
pub const ACTIVE_YEARS: i32 = 2;
/// How long an expired or resolved signal stays in the archive (D4).
pub const ARCHIVE_YEARS: i32 = 5;

/// Why a registration's dates were refused. Messages are for the person entering them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("date_of_birth: the date of birth {0} lies in the future; check the date")]
    BirthInFuture(NaiveDate),
    #[error(
        "date_of_birth: the child is 23 or older (turned 23 on {0}); the VIR only holds signals on people under 23"
    )]
    TooOld(NaiveDate),
    #[error("removal_date: the removal date {0} is not after today; give a date in the future, at most 2 years ahead")]
    RemovalNotInFuture(NaiveDate),
    #[error("removal_date: the removal date {given} is more than 2 years ahead; the latest allowed is {latest}")]
    RemovalTooLate { given: NaiveDate, latest: NaiveDate },
}

/// `date` plus whole years, with 29 Feb moving to 1 Mar when the target year has none.
pub fn add_years(date: NaiveDate, years: i32) -> NaiveDate {
    let year = date.year() + years;
    NaiveDate::from_ymd_opt(year, date.month(), date.day())
        .or_else(|| NaiveDate::from_ymd_opt(year, 3, 1))
        .unwrap_or(NaiveDate::MAX)
}

/// The date on which every signal and archive entry of the child must be deleted (D3).
pub fn age_limit_date(date_of_birth: NaiveDate) -> NaiveDate {
    add_years(date_of_birth, AGE_LIMIT_YEARS)
}

/// Latest removal date for a signal registered on `registered_on` (D4).
pub fn latest_removal_date(registered_on: NaiveDate) -> NaiveDate {
    add_years(registered_on, ACTIVE_YEARS)
}

/// The date on which an entry archived on `archived_on` is deleted (D4).
pub fn archive_end_date(archived_on: NaiveDate) -> NaiveDate {
    add_years(archived_on, ARCHIVE_YEARS)
}

/// Checks a new signal's dates (D3, D4) and returns its removal date: the requested one,
/// or the latest allowed when none was given.
pub fn removal_date_for_registration(
    date_of_birth: NaiveDate,
    requested_removal: Option<NaiveDate>,
    today: NaiveDate,
) -> Result<NaiveDate, RetentionError> {
    if date_of_birth > today {
        return Err(RetentionError::BirthInFuture(date_of_birth));
    }
    let limit = age_limit_date(date_of_birth);
    if today >= limit {
        return Err(RetentionError::TooOld(limit));
    }
    let latest = latest_removal_date(today);
    match requested_removal {
        None => Ok(latest),
        Some(given) if given <= today => Err(RetentionError::RemovalNotInFuture(given)),
        Some(given) if given > latest => Err(RetentionError::RemovalTooLate { given, latest }),
        Some(given) => Ok(given),
    }
}

/// What happens to an active signal today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveFate {
    Keep,
    /// Removal date reached: move to the archive, stop matching (D4).
    Archive,
    /// The child turned 23: delete, do not archive (D3).
    DeleteAgeLimit,
}

/// Decides an active signal's fate; the age limit wins over archiving.
pub fn active_fate(date_of_birth: NaiveDate, removal_date: NaiveDate, today: NaiveDate) -> ActiveFate {
    if today >= age_limit_date(date_of_birth) {
        ActiveFate::DeleteAgeLimit
    } else if today >= removal_date {
        ActiveFate::Archive
    } else {
        ActiveFate::Keep
    }
}

/// What happens to an archive entry today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchivedFate {
    Keep,
    /// The child turned 23 (D3).
    DeleteAgeLimit,
    /// Five years in the archive are over (D4).
    DeleteRetentionEnded,
}

pub fn archived_fate(date_of_birth: NaiveDate, archived_on: NaiveDate, today: NaiveDate) -> ArchivedFate {
    if today >= age_limit_date(date_of_birth) {
        ArchivedFate::DeleteAgeLimit
    } else if today >= archive_end_date(archived_on) {
        ArchivedFate::DeleteRetentionEnded
    } else {
        ArchivedFate::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn d3_age_limit_day_before_of_and_after_23rd_birthday() {
        let dob = d(2004, 6, 15);
        // Day before: still 22, accepted (the sweeper deletes it on the birthday).
        assert!(removal_date_for_registration(dob, None, d(2027, 6, 14)).is_ok());
        // Day of and after: refused.
        assert_eq!(
            removal_date_for_registration(dob, None, d(2027, 6, 15)),
            Err(RetentionError::TooOld(d(2027, 6, 15)))
        );
        assert!(removal_date_for_registration(dob, None, d(2027, 6, 16)).is_err());
        // Active and archived entries are deleted on the birthday, not before.
        let removal = d(2028, 1, 1);
        assert_eq!(active_fate(dob, removal, d(2027, 6, 14)), ActiveFate::Keep);
        assert_eq!(active_fate(dob, removal, d(2027, 6, 15)), ActiveFate::DeleteAgeLimit);
        assert_eq!(active_fate(dob, removal, d(2027, 6, 16)), ActiveFate::DeleteAgeLimit);
        assert_eq!(archived_fate(dob, d(2026, 1, 1), d(2027, 6, 14)), ArchivedFate::Keep);
        assert_eq!(archived_fate(dob, d(2026, 1, 1), d(2027, 6, 15)), ArchivedFate::DeleteAgeLimit);
    }

    #[test]
    fn d3_leap_day_birthday_turns_23_on_first_of_march() {
        assert_eq!(age_limit_date(d(2004, 2, 29)), d(2027, 3, 1));
        assert_eq!(age_limit_date(d(2005, 2, 28)), d(2028, 2, 28));
    }

    #[test]
    fn d3_birth_in_future_refused() {
        assert_eq!(
            removal_date_for_registration(d(2026, 5, 2), None, d(2026, 5, 1)),
            Err(RetentionError::BirthInFuture(d(2026, 5, 2)))
        );
        // Born today is fine.
        assert!(removal_date_for_registration(d(2026, 5, 1), None, d(2026, 5, 1)).is_ok());
    }

    #[test]
    fn d4_removal_date_exactly_two_years_is_the_maximum() {
        let dob = d(2015, 1, 1);
        let today = d(2026, 3, 10);
        assert_eq!(removal_date_for_registration(dob, None, today), Ok(d(2028, 3, 10)));
        assert_eq!(removal_date_for_registration(dob, Some(d(2028, 3, 10)), today), Ok(d(2028, 3, 10)));
        assert_eq!(
            removal_date_for_registration(dob, Some(d(2028, 3, 11)), today),
            Err(RetentionError::RemovalTooLate { given: d(2028, 3, 11), latest: d(2028, 3, 10) })
        );
        assert_eq!(
            removal_date_for_registration(dob, Some(today), today),
            Err(RetentionError::RemovalNotInFuture(today))
        );
        assert_eq!(removal_date_for_registration(dob, Some(d(2026, 3, 11)), today), Ok(d(2026, 3, 11)));
    }

    #[test]
    fn d4_signal_archives_on_its_removal_date() {
        let dob = d(2015, 1, 1);
        let removal = d(2028, 3, 10);
        assert_eq!(active_fate(dob, removal, d(2028, 3, 9)), ActiveFate::Keep);
        assert_eq!(active_fate(dob, removal, d(2028, 3, 10)), ActiveFate::Archive);
        assert_eq!(active_fate(dob, removal, d(2028, 3, 11)), ActiveFate::Archive);
    }

    #[test]
    fn d4_archive_ends_after_exactly_five_years() {
        let dob = d(2015, 1, 1);
        let archived = d(2026, 7, 1);
        assert_eq!(archive_end_date(archived), d(2031, 7, 1));
        assert_eq!(archived_fate(dob, archived, d(2031, 6, 30)), ArchivedFate::Keep);
        assert_eq!(archived_fate(dob, archived, d(2031, 7, 1)), ArchivedFate::DeleteRetentionEnded);
        assert_eq!(archived_fate(dob, archived, d(2031, 7, 2)), ArchivedFate::DeleteRetentionEnded);
    }

    #[test]
    fn d4_leap_day_signal_may_stay_until_first_of_march() {
        assert_eq!(latest_removal_date(d(2028, 2, 29)), d(2030, 3, 1));
    }
}
