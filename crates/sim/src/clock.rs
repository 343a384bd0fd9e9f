//! A node's own clock: local time = offset + real time elapsed × (1 + rate). Rates change
//! only at fault boundaries; each change re-anchors the clock, so local time stays
//! continuous and increasing. Integer arithmetic, so runs stay exact and reproducible.

use ekmat_core::Time;

const PPM: i128 = 1_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    anchor_real: Time,
    anchor_local: Time,
    /// Parts per million faster (positive) or slower (negative) than real time.
    rate_ppm: i32,
}

impl Clock {
    pub fn rate_ppm(&self) -> i32 {
        self.rate_ppm
    }

    /// The node's time at real time `real` (never before the last rate change).
    pub fn local(&self, real: Time) -> Time {
        assert!(real >= self.anchor_real, "clocks are read forward");
        let dt = i128::from(real.0 - self.anchor_real.0);
        let scaled = dt * (PPM + i128::from(self.rate_ppm)) / PPM;
        Time(self.anchor_local.0 + scaled as u64)
    }

    /// The first real time at which the node's clock shows `local` or later: when a timer
    /// the node set for `local` fires.
    pub fn real_at(&self, local: Time) -> Time {
        let Some(dl) = local.0.checked_sub(self.anchor_local.0) else {
            return self.anchor_real;
        };
        let rate = PPM + i128::from(self.rate_ppm);
        let dt = (i128::from(dl) * PPM + rate - 1) / rate;
        Time(self.anchor_real.0 + dt as u64)
    }

    /// From real time `now` on, run `rate_ppm` fast (or slow, if negative).
    pub fn set_rate(&mut self, now: Time, rate_ppm: i32) {
        assert!(
            i128::from(rate_ppm).abs() < PPM,
            "a clock must move forward"
        );
        self.anchor_local = self.local(now);
        self.anchor_real = now;
        self.rate_ppm = rate_ppm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undisturbed_clock_shows_real_time() {
        let c = Clock::default();
        assert_eq!(c.local(Time(123_456)), Time(123_456));
        assert_eq!(c.real_at(Time(5)), Time(5));
    }

    #[test]
    fn drifting_clocks_stay_continuous_and_timers_fire_on_time() {
        let mut c = Clock::default();
        c.set_rate(Time(1_000_000), -200_000); // 20% slow from 1 s
        assert_eq!(c.local(Time(1_000_000)), Time(1_000_000));
        assert_eq!(c.local(Time(2_000_000)), Time(1_800_000));
        // A timer set at local 1.8 s for 80 ms fires 100 ms of real time later.
        assert_eq!(c.real_at(Time(1_880_000)), Time(2_100_000));
        c.set_rate(Time(2_000_000), 200_000); // then 20% fast
        assert_eq!(c.local(Time(2_000_000)), Time(1_800_000));
        assert_eq!(c.local(Time(2_100_000)), Time(1_920_000));
        for local in [1_800_001u64, 1_850_003, 1_999_999] {
            let real = c.real_at(Time(local));
            assert!(c.local(real) >= Time(local));
            assert!(
                c.local(Time(real.0 - 1)) < Time(local),
                "first such instant"
            );
        }
    }
}
