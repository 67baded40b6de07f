//! The resource guard: once a second the agent measures its own CPU use (all threads, from
//! `/proc/self/stat`) and resident memory (`/proc/self/status`). Over either limit it pauses the
//! high-volume hooks (syscalls, files, network; exec stays) for a cooldown, which doubles when it
//! trips again within ten minutes of resuming (10 s, 20 s, … up to 10 min by default). Fingerprints of
//! windows with a pause say `capture_paused`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::capture::Control;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Percent of one core.
    pub max_cpu_percent: f64,
    pub max_rss_bytes: u64,
    /// The first pause; it doubles on each trip soon after resuming.
    pub cooldown: Duration,
}

const SAMPLE: Duration = Duration::from_secs(1);
const MAX_COOLDOWN: Duration = Duration::from_secs(600);
const REPEAT_WITHIN: Duration = Duration::from_secs(600);
/// `USER_HZ`: the unit of utime/stime in /proc (100 on every Linux architecture the agent runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// (utime + stime) of the whole process, in ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")" the fields start at 3 (state); utime is field 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the guard until the capture loop is gone.
pub async fn run(limits: Limits, control: Sender<Control>, metrics: Arc<Metrics>) {
    let mut cooldown = limits.cooldown;
    let mut paused_until: Option<Instant> = None;
    let mut resumed_at: Option<Instant> = None;
    let mut interval = tokio::time::interval(SAMPLE);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the first sample then covers one whole second of running
    // (not the start-up, when loading the programs takes a burst of CPU).
    interval.tick().await;
    let mut last = (Instant::now(), cpu_ticks().unwrap_or(0));
    loop {
        interval.tick().await;
        let now = Instant::now();
        let ticks = cpu_ticks().unwrap_or(last.1);
        let elapsed = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let cpu_percent =
            (ticks.saturating_sub(last.1) as f64 / TICKS_PER_SECOND) / elapsed * 100.0;
        last = (now, ticks);
        let rss = rss_bytes().unwrap_or(0);
        metrics
            .cpu_centipercent
            .store((cpu_percent * 100.0) as u64, Relaxed);
        metrics.rss_bytes.store(rss, Relaxed);

        if let Some(until) = paused_until {
            if now >= until {
                paused_until = None;
                resumed_at = Some(now);
                metrics.guard_paused.store(0, Relaxed);
                tracing::info!("resource guard: cooldown over, capture resumes");
                if control.send(Control::GuardPause(false)).is_err() {
                    return;
                }
            }
            continue;
        }
        let over_cpu = cpu_percent > limits.max_cpu_percent;
        let over_rss = rss > limits.max_rss_bytes;
        if !(over_cpu || over_rss) {
            continue;
        }
        cooldown = match resumed_at {
            Some(at) if now.duration_since(at) < REPEAT_WITHIN => (cooldown * 2).min(MAX_COOLDOWN),
            _ => limits.cooldown,
        };
        paused_until = Some(now + cooldown);
        metrics.guard_paused.store(1, Relaxed);
        Metrics::add(&metrics.guard_trips, 1);
        tracing::warn!(
            cpu_percent = format!("{cpu_percent:.1}"),
            max_cpu_percent = limits.max_cpu_percent,
            rss_mib = rss >> 20,
            max_rss_mib = limits.max_rss_bytes >> 20,
            cooldown_s = cooldown.as_secs(),
            "resource guard: over the limit, pausing the syscall, file and network hooks"
        );
        if control.send(Control::GuardPause(true)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_cpu_and_memory() {
        let before = super::cpu_ticks().expect("cpu ticks");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = super::cpu_ticks().expect("cpu ticks");
        assert!(
            after > before,
            "200 ms of spinning shows as CPU time ({before} → {after})"
        );
        assert!(super::rss_bytes().expect("rss") > 1 << 20);
    }
}
