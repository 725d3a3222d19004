//! When a device or register is polled: `every` (with `align`) or `cron`
//! (with `timezone`), never both.

use serde_saphyr::Spanned;

use super::super::DEFAULT_EVERY;
use super::super::raw::RawDevice;
use super::{Ctx, Validator};
use crate::registry::{Align, CronSchedule, Schedule};

impl Validator<'_> {
    /// `timezone` written where no `cron` applies would be silently ignored.
    pub(super) fn timezone_without_cron(
        &mut self,
        timezone: Option<&Spanned<String>>,
        cron: Option<&Spanned<String>>,
        what: &str,
        ctx: Ctx<'_>,
    ) {
        if let (Some(tz), None) = (timezone, cron) {
            self.error(
                tz.referenced,
                ctx,
                format!(
                    "`timezone` applies only to a `cron` schedule and this {what} has none; remove `timezone`, or poll on a `cron` expression instead of `every`"
                ),
            );
        }
    }

    /// A device's schedule: its own `every` or `cron` if it has one, else the
    /// one in `defaults`; `timezone` and `align` likewise.
    pub(super) fn device_schedule(
        &mut self,
        raw: &RawDevice,
        defaults: &RawDevice,
        ctx: Ctx<'_>,
    ) -> Schedule {
        let own = raw.every.is_some() || raw.cron.is_some();
        let src = if own { raw } else { defaults };
        self.timezone_without_cron(raw.timezone.as_ref(), src.cron.as_ref(), "device", ctx);
        let tz = raw.timezone.as_ref().or(defaults.timezone.as_ref());
        let align = raw.align.as_ref().or(defaults.align.as_ref());
        self.schedule(src.every.as_ref(), src.cron.as_ref(), tz, align, ctx)
            .unwrap_or(Schedule::every(DEFAULT_EVERY))
    }

    /// `every` (with `align`) or `cron` (with `timezone`), never both.
    pub(super) fn schedule(
        &mut self,
        every: Option<&Spanned<String>>,
        cron: Option<&Spanned<String>>,
        timezone: Option<&Spanned<String>>,
        align: Option<&Spanned<String>>,
        ctx: Ctx<'_>,
    ) -> Option<Schedule> {
        match (every, cron) {
            (Some(_), Some(c)) => {
                self.error(c.referenced, ctx, "use either `every` or `cron`, not both");
                None
            }
            (None, Some(c)) => self.cron(c, timezone, align, ctx),
            (Some(e), None) => Some(self.every(e, align, ctx)),
            (None, None) => None,
        }
    }

    fn cron(
        &mut self,
        c: &Spanned<String>,
        timezone: Option<&Spanned<String>>,
        align: Option<&Spanned<String>>,
        ctx: Ctx<'_>,
    ) -> Option<Schedule> {
        if let Some(a) = align {
            self.error(
                a.referenced,
                ctx,
                "`align` applies to `every` schedules; a cron expression says exactly when to poll",
            );
        }
        let tz = timezone.map_or("UTC", |t| t.value.as_str());
        match CronSchedule::parse(&c.value, tz) {
            Ok(s) if never_fires(&s) => {
                self.error(
                    c.referenced,
                    ctx,
                    format!(
                        "cron `{}` never fires: no date matches it (such as 30 February or 31 April); check its day-of-month and month fields",
                        c.value
                    ),
                );
                None
            }
            Ok(s) => Some(Schedule::Cron(Box::new(s))),
            Err(m) => {
                let at = if m.starts_with("unknown time zone") {
                    timezone.map_or(c.referenced, |t| t.referenced)
                } else {
                    c.referenced
                };
                self.error(at, ctx, m);
                None
            }
        }
    }

    fn every(
        &mut self,
        e: &Spanned<String>,
        align: Option<&Spanned<String>>,
        ctx: Ctx<'_>,
    ) -> Schedule {
        let every = self.duration(Some(e), ctx, "every", DEFAULT_EVERY);
        let align = match align.map(|a| (a, a.value.as_str())) {
            None | Some((_, "spread")) => Align::Spread,
            Some((_, "strict")) => Align::Strict,
            Some((a, other)) => {
                self.error(
                    a.referenced,
                    ctx,
                    format!("unknown align `{other}`; valid: spread (default), strict"),
                );
                Align::Spread
            }
        };
        Schedule::Every { every, align }
    }
}

/// Whether a valid cron pattern names no real date (`0 0 0 30 2 *`). Every
/// pattern that can fire does so within 8 years (29 February, across a
/// century that is not a leap year), so searching 30 years ahead is enough,
/// and croner's own search stops at year 5000, which takes milliseconds.
fn never_fires(s: &CronSchedule) -> bool {
    let now = chrono::Utc::now();
    s.next_after(now)
        .is_none_or(|next| next - now > chrono::TimeDelta::days(30 * 366))
}
