//! The participation report for a region (issue 4, item 6): which registered organisations
//! actually use the VIR, and which went quiet.
//!
//! The report is computed from the organisation list and the audit log (D8) alone, as a pure
//! function of both and an injected `today`, so tests fix the date instead of waiting. It holds
//! no child data: only organisation ids, names and domains, counts and dates. Signal ids, the
//! audit's subjects and details, and coordinators' contact details never reach it.
//!
//! # Rules
//!
//! - Dates are calendar dates in the Netherlands (`Europe/Amsterdam`), as everywhere else.
//! - A **signal** of organisation `X` is an audit entry with action `signal.register` and
//!   actor `org:X` (a repeat, `signal.register.repeat`, is not a new signal, D2).
//! - "**In the last N days**" means on `today` or one of the `N - 1` days before it: a
//!   signal `d` counts when `0 <= today - d < N` days. Entries dated after `today` are ignored
//!   everywhere, so a report for an earlier date reads the log as it was then.
//! - `last_signal` is the latest signal date, however old.
//! - **Matches** are `notice.match-created` entries addressed to the professional of `X`
//!   (detail `to professional of org:X (cursor N)`): one per match per reporting professional
//!   of `X`. Notices to coordinators and the match officer are not counted, so a match is not
//!   counted twice for an organisation with a coordinator.
//! - An organisation is **inactive** when its last signal, or if it never signalled the date
//!   it was registered (`org.add`), lies more than `quiet_after_days` days before `today`
//!   (exactly `quiet_after_days` days is not yet inactive). It is **active** when it signalled
//!   within `quiet_after_days` days. A recently registered organisation that has not signalled
//!   yet is neither: it still has its period of grace, and it does not count as active for
//!   others.
//! - An organisation is flagged **quiet** when it is inactive while at least one other
//!   organisation of the same domain in the region is active. When a whole domain is inactive
//!   nobody in it is flagged: that is a different problem (the domain does not take part),
//!   visible in the per-domain totals.
//! - **Domain totals** are signals per calendar month for the 12 months up to and including
//!   `today`'s month, per domain that has at least one registered organisation.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::domain::{AuditAction, OrgDomain, OrgId, Organisation};
use crate::store::AuditEntry;

/// Prefix of a match notice's detail when it is addressed to a reporting professional.
const TO_PROFESSIONAL: &str = "to professional of org:";
/// Months in the per-domain totals.
const MONTHS: usize = 12;

/// Tunables of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ParticipationConfig {
    /// Days without a signal after which an organisation counts as inactive (default 182,
    /// about 6 months).
    pub quiet_after_days: u32,
}

impl ParticipationConfig {
    pub const DEFAULT_QUIET_AFTER_DAYS: u32 = 182;
}

impl Default for ParticipationConfig {
    fn default() -> Self {
        ParticipationConfig { quiet_after_days: Self::DEFAULT_QUIET_AFTER_DAYS }
    }
}

/// One registered organisation's use of the VIR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrgParticipation {
    pub org: OrgId,
    pub name: String,
    pub domain: OrgDomain,
    /// Signals made today and in the 29 days before.
    pub signals_30d: u64,
    /// Signals made today and in the 89 days before.
    pub signals_90d: u64,
    /// Signals made today and in the 364 days before.
    pub signals_365d: u64,
    /// Date (in the Netherlands) of the latest signal, however old.
    pub last_signal: Option<NaiveDate>,
    /// Match notices to this organisation's reporting professionals, ever.
    pub matches: u64,
    /// Family match notices (D11) to this organisation's reporting professionals, ever.
    pub family_matches: u64,
    /// Inactive while another organisation of its domain is active (see the module docs).
    pub quiet: bool,
}

/// Signals per month of one domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DomainTotals {
    pub domain: OrgDomain,
    /// `(YYYY-MM, signals)` for the last 12 months, oldest first, ending with `today`'s month.
    pub per_month: Vec<(String, u64)>,
}

/// The region's participation report as of `generated_on`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParticipationReport {
    pub generated_on: NaiveDate,
    /// The period after which an organisation counts as inactive, as used for `quiet`.
    pub quiet_after_days: u32,
    /// Every registered organisation, by domain (in [`OrgDomain::ALL`] order), then by id.
    pub orgs: Vec<OrgParticipation>,
    /// Domains with at least one registered organisation, in [`OrgDomain::ALL`] order.
    pub domains: Vec<DomainTotals>,
}

/// What the audit log says about one organisation.
#[derive(Default)]
struct Tally {
    signal_dates: Vec<NaiveDate>,
    registered: Option<NaiveDate>,
    matches: u64,
    family_matches: u64,
}

fn dutch_date(entry: &AuditEntry) -> NaiveDate {
    entry.at.with_timezone(&chrono_tz::Europe::Amsterdam).date_naive()
}

/// The organisation a match notice is addressed to, when it is for a reporting professional.
fn professional_recipient(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix(TO_PROFESSIONAL)?;
    Some(rest.split_once(' ').map_or(rest, |(id, _)| id))
}

/// `YYYY-MM` of the month `back` months before `date`'s month.
fn month_key(date: NaiveDate, back: u32) -> String {
    let index = date.year() * 12 + date.month0() as i32 - back as i32;
    format!("{:04}-{:02}", index.div_euclid(12), index.rem_euclid(12) + 1)
}

fn domain_rank(domain: OrgDomain) -> usize {
    OrgDomain::ALL.iter().position(|d| *d == domain).unwrap_or(OrgDomain::ALL.len())
}

/// Builds the report for the organisations `orgs` from the audit log `audit`, as of `today`.
///
/// Pure: reads nothing but its arguments. One pass over the log; entries of organisations
/// that are not in `orgs` are ignored.
pub fn report(
    orgs: &[Organisation],
    audit: &[AuditEntry],
    today: NaiveDate,
    config: &ParticipationConfig,
) -> ParticipationReport {
    let index: HashMap<&str, usize> = orgs.iter().enumerate().map(|(i, o)| (o.id.as_str(), i)).collect();
    let mut tallies: Vec<Tally> = orgs.iter().map(|_| Tally::default()).collect();
    for entry in audit {
        let date = dutch_date(entry);
        if date > today {
            continue;
        }
        // Signals, registrations with the region, and match notices to professionals.
        let action = AuditAction::parse(&entry.action);
        let org = match action {
            Some(AuditAction::SignalRegister) => entry.actor.strip_prefix("org:"),
            Some(AuditAction::OrgAdd) => Some(entry.subject.as_str()),
            Some(AuditAction::NoticeMatchCreated | AuditAction::NoticeFamilyMatchCreated) => {
                professional_recipient(&entry.detail)
            }
            _ => None,
        };
        let Some(tally) = org.and_then(|id| index.get(id)).map(|&i| &mut tallies[i]) else {
            continue;
        };
        match action {
            Some(AuditAction::SignalRegister) => tally.signal_dates.push(date),
            Some(AuditAction::OrgAdd) => tally.registered = Some(tally.registered.map_or(date, |r| r.min(date))),
            Some(AuditAction::NoticeFamilyMatchCreated) => tally.family_matches += 1,
            _ => tally.matches += 1,
        }
    }

    let period = i64::from(config.quiet_after_days);
    let days_before = |d: NaiveDate| (today - d).num_days();
    let within = |dates: &[NaiveDate], n: i64| dates.iter().filter(|&&d| days_before(d) < n).count() as u64;
    let last_signals: Vec<Option<NaiveDate>> = tallies.iter().map(|t| t.signal_dates.iter().max().copied()).collect();
    let active: Vec<bool> = last_signals.iter().map(|last| last.is_some_and(|d| days_before(d) <= period)).collect();
    let inactive: Vec<bool> = tallies
        .iter()
        .zip(&last_signals)
        .map(|(t, last)| last.or(t.registered).is_some_and(|d| days_before(d) > period))
        .collect();

    let mut rows: Vec<OrgParticipation> = orgs
        .iter()
        .enumerate()
        .map(|(i, org)| {
            let dates = &tallies[i].signal_dates;
            let peer_active =
                orgs.iter().enumerate().any(|(j, other)| j != i && other.domain == org.domain && active[j]);
            OrgParticipation {
                org: org.id.clone(),
                name: org.name.clone(),
                domain: org.domain,
                signals_30d: within(dates, 30),
                signals_90d: within(dates, 90),
                signals_365d: within(dates, 365),
                last_signal: last_signals[i],
                matches: tallies[i].matches,
                family_matches: tallies[i].family_matches,
                quiet: inactive[i] && peer_active,
            }
        })
        .collect();
    rows.sort_by(|a, b| (domain_rank(a.domain), &a.org).cmp(&(domain_rank(b.domain), &b.org)));

    let months: Vec<String> = (0..MONTHS as u32).rev().map(|back| month_key(today, back)).collect();
    let domains = OrgDomain::ALL
        .into_iter()
        .filter(|d| orgs.iter().any(|o| o.domain == *d))
        .map(|domain| {
            let mut per_month: Vec<(String, u64)> = months.iter().map(|m| (m.clone(), 0)).collect();
            for (_, tally) in orgs.iter().zip(&tallies).filter(|(o, _)| o.domain == domain) {
                for d in &tally.signal_dates {
                    let key = month_key(*d, 0);
                    if let Some(slot) = per_month.iter_mut().find(|(m, _)| *m == key) {
                        slot.1 += 1;
                    }
                }
            }
            DomainTotals { domain, per_month }
        })
        .collect();

    ParticipationReport { generated_on: today, quiet_after_days: config.quiet_after_days, orgs: rows, domains }
}

// ---- rendering ------------------------------------------------------------------------------

/// Escapes text for HTML element content and double-quoted attribute values.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break, with quotes
/// doubled. A text starting with `=`, `+`, `-` or `@` gets a leading `'` so a spreadsheet
/// does not run it as a formula (an organisation name is operator input).
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn date_or_never(date: Option<NaiveDate>) -> String {
    date.map_or_else(|| "never".to_owned(), |d| d.to_string())
}

/// Line colours of the chart, per domain in [`OrgDomain::ALL`] order (colour-blind safe).
const COLOURS: [&str; 6] = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#555555"];

impl ParticipationReport {
    /// The organisations flagged quiet.
    pub fn quiet_orgs(&self) -> impl Iterator<Item = &OrgParticipation> {
        self.orgs.iter().filter(|o| o.quiet)
    }

    /// CSV export: a header, then one row per organisation, CRLF line ends (RFC 4180).
    ///
    /// Columns: `organisation,name,domain,signals_30d,signals_90d,signals_365d,last_signal,
    /// matches,quiet,family_matches`; `last_signal` is `YYYY-MM-DD` or empty, `quiet` is
    /// `true`/`false` (`family_matches` was appended last, so earlier readers keep working).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "organisation,name,domain,signals_30d,signals_90d,signals_365d,last_signal,matches,quiet,family_matches\r\n",
        );
        for o in &self.orgs {
            let _ = write!(
                out,
                "{},{},{},{},{},{},{},{},{},{}\r\n",
                csv_field(o.org.as_str()),
                csv_field(&o.name),
                o.domain,
                o.signals_30d,
                o.signals_90d,
                o.signals_365d,
                o.last_signal.map(|d| d.to_string()).unwrap_or_default(),
                o.matches,
                o.quiet,
                o.family_matches
            );
        }
        out
    }

    /// Plain text for `virfed participation`: the table, the quiet organisations, and the
    /// per-domain monthly totals.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "Participation report, {} (quiet: no signal for more than {} days while others of the same domain signal)\n\n",
            self.generated_on, self.quiet_after_days
        );
        let header =
            ["organisation", "name", "domain", "30d", "90d", "365d", "last signal", "matches", "family", "quiet"];
        let rows: Vec<[String; 10]> = self
            .orgs
            .iter()
            .map(|o| {
                [
                    o.org.to_string(),
                    o.name.clone(),
                    o.domain.to_string(),
                    o.signals_30d.to_string(),
                    o.signals_90d.to_string(),
                    o.signals_365d.to_string(),
                    date_or_never(o.last_signal),
                    o.matches.to_string(),
                    o.family_matches.to_string(),
                    if o.quiet { "QUIET".into() } else { String::new() },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let numeric = [false, false, false, true, true, true, false, true, true, false];
        let mut line = |cells: &[String]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
                if i > 0 {
                    text.push_str("  ");
                }
                if numeric[i] {
                    text.push_str(&pad);
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&pad);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&header.map(String::from));
        for row in &rows {
            line(row);
        }
        if self.orgs.is_empty() {
            out.push_str("(no organisations registered)\n");
        }

        let quiet: Vec<&OrgParticipation> = self.quiet_orgs().collect();
        if quiet.is_empty() {
            out.push_str("\nNo quiet organisations.\n");
        } else {
            let _ = writeln!(out, "\n{} quiet organisation(s):", quiet.len());
            for o in quiet {
                let _ = writeln!(
                    out,
                    "  {} ({}, {}): last signal {}",
                    o.org,
                    o.name,
                    o.domain,
                    date_or_never(o.last_signal)
                );
            }
        }

        if !self.domains.is_empty() {
            out.push_str("\nSignals per month by domain:\n");
            let width = self.domains.iter().map(|d| d.domain.as_str().len()).max().unwrap_or(0).max(7);
            let _ = write!(out, "{:width$}", "month");
            for d in &self.domains {
                let _ = write!(out, "  {:>width$}", d.domain.as_str());
            }
            out.push('\n');
            for (i, (month, _)) in self.domains[0].per_month.iter().enumerate() {
                let _ = write!(out, "{month:width$}");
                for d in &self.domains {
                    let _ = write!(out, "  {:>width$}", d.per_month.get(i).map_or(0, |(_, n)| *n));
                }
                out.push('\n');
            }
        }
        out
    }

    /// A self-contained HTML page: the table (quiet rows highlighted) and an inline SVG line
    /// chart of the per-domain monthly totals. No scripts, no external assets; every text
    /// from the data is escaped.
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        let date = self.generated_on;
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>VIR participation report {date}</title>\n<style>\n\
             body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\n\
             table{{border-collapse:collapse}}\n\
             th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}\n\
             td.n{{text-align:right}}\n\
             tr.quiet td{{background:#fde2e1}}\n\
             .legend span{{margin-right:1.2em}}\n\
             </style>\n</head>\n<body>\n<h1>VIR participation report</h1>\n\
             <p>As of {date}. An organisation is <strong>quiet</strong> when it has not signalled for more than \
             {days} days while another organisation of its domain has. The report holds no data about children.</p>\n",
            days = self.quiet_after_days
        );

        let quiet = self.quiet_orgs().count();
        let _ = writeln!(out, "<h2>Organisations</h2>\n<p>{} organisation(s), {quiet} quiet.</p>", self.orgs.len());
        out.push_str(
            "<table>\n<thead><tr><th>Organisation</th><th>Name</th><th>Domain</th><th>Signals 30 days</th>\
             <th>Signals 90 days</th><th>Signals 365 days</th><th>Last signal</th><th>Matches</th><th>Family matches</th><th>Quiet</th>\
             </tr></thead>\n<tbody>\n",
        );
        for o in &self.orgs {
            let _ = writeln!(
                out,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                if o.quiet { " class=\"quiet\"" } else { "" },
                html_escape(o.org.as_str()),
                html_escape(&o.name),
                html_escape(o.domain.as_str()),
                o.signals_30d,
                o.signals_90d,
                o.signals_365d,
                date_or_never(o.last_signal),
                o.matches,
                o.family_matches,
                if o.quiet { "quiet" } else { "" }
            );
        }
        out.push_str("</tbody>\n</table>\n<h2>Signals per month by domain</h2>\n");
        out.push_str(&self.svg_chart());
        out.push_str("</body>\n</html>\n");
        out
    }

    /// The per-domain monthly totals as an inline SVG line chart.
    fn svg_chart(&self) -> String {
        const W: f64 = 760.0;
        const H: f64 = 320.0;
        const LEFT: f64 = 50.0;
        const RIGHT: f64 = 20.0;
        const TOP: f64 = 20.0;
        const BOTTOM: f64 = 40.0;
        let months: Vec<&str> =
            self.domains.first().map(|d| d.per_month.iter().map(|(m, _)| m.as_str()).collect()).unwrap_or_default();
        let max = self.domains.iter().flat_map(|d| d.per_month.iter().map(|(_, n)| *n)).max().unwrap_or(0);
        // A round top for the y axis: the next multiple of a step giving at most 5 ticks.
        let step = [1u64, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10_000]
            .into_iter()
            .find(|s| max.div_ceil(*s) <= 5)
            .unwrap_or_else(|| max.div_ceil(5).max(1));
        let top = (max.div_ceil(step) * step).max(step);
        let plot_w = W - LEFT - RIGHT;
        let plot_h = H - TOP - BOTTOM;
        let x = |i: usize| LEFT + if months.len() > 1 { plot_w * i as f64 / (months.len() - 1) as f64 } else { 0.0 };
        let y = |n: u64| TOP + plot_h - plot_h * n as f64 / top as f64;

        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
             role=\"img\" aria-label=\"Signals per month by domain\" font-family=\"sans-serif\" font-size=\"11\">\n"
        );
        let mut tick = 0;
        while tick <= top {
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{x2}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{tick}</text>",
                yy = y(tick),
                x2 = W - RIGHT,
                tx = LEFT - 6.0,
                ty = y(tick) + 4.0
            );
            tick += step;
        }
        for (i, month) in months.iter().enumerate() {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x(i),
                H - BOTTOM + 16.0,
                html_escape(month)
            );
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{r}\" y2=\"{b:.1}\" stroke=\"#888\"/>\
             <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\" stroke=\"#888\"/>",
            b = TOP + plot_h,
            r = W - RIGHT
        );
        for d in &self.domains {
            let colour = COLOURS[domain_rank(d.domain).min(COLOURS.len() - 1)];
            let points: Vec<String> =
                d.per_month.iter().enumerate().map(|(i, (_, n))| format!("{:.1},{:.1}", x(i), y(*n))).collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
                points.join(" "),
                html_escape(d.domain.as_str())
            );
            for (i, (month, n)) in d.per_month.iter().enumerate() {
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{} {}: {n}</title></circle>",
                    x(i),
                    y(*n),
                    html_escape(d.domain.as_str()),
                    html_escape(month)
                );
            }
        }
        svg.push_str("</svg>\n<p class=\"legend\">");
        for d in &self.domains {
            let colour = COLOURS[domain_rank(d.domain).min(COLOURS.len() - 1)];
            let _ = write!(svg, "<span style=\"color:{colour}\">&#9632; {}</span>", html_escape(d.domain.as_str()));
        }
        if self.domains.is_empty() {
            svg.push_str("No organisations registered.");
        }
        svg.push_str("</p>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_keys_cross_year_boundaries() {
        let d = NaiveDate::from_ymd_opt(2026, 2, 15).unwrap();
        assert_eq!(month_key(d, 0), "2026-02");
        assert_eq!(month_key(d, 1), "2026-01");
        assert_eq!(month_key(d, 2), "2025-12");
        assert_eq!(month_key(d, 13), "2025-01");
        assert_eq!(month_key(d, 14), "2024-12");
    }

    #[test]
    fn professional_recipient_is_parsed_exactly() {
        assert_eq!(professional_recipient("to professional of org:a-b (cursor 3)"), Some("a-b"));
        assert_eq!(professional_recipient("to professional of org:a-b"), Some("a-b"));
        assert_eq!(professional_recipient("to coordinator of org:a-b (cursor 3)"), None);
        assert_eq!(professional_recipient("to match officer of org:a-b (cursor 3)"), None);
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("=1,2"), "\"'=1,2\"");
    }
}
