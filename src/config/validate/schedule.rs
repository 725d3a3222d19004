//! When a device or register is polled: `every` (with `align`) or `cron`
//! (with `timezone`), never both.

use serde_saphyr::Spanned;

use super::super::DEFAULT_EVERY;
use super::super::raw::RawDevice;
use super::{Ctx, Validator};
use crate::registry::{Align, CronSchedule, Schedule};

impl Validator<'_> {
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
