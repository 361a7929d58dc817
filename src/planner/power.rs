//! The pool's power budget (`spec.power`): a node starts its checks only
//! when the power the pool's nodes under test draw, with it, stays within
//! the budget, and the power started in the last minute within the ramp,
//! counted across every batch of the pool.
//!
//! Under test: validating (a probe or a rack test runs), and soaking when
//! the pool says its soak runs at load. Each node draws what `spec.power`
//! gives its product. A lower budget never stops a check that runs: it
//! only holds new starts until the load is under it. The ramp counts every
//! node of the pool whose `gpufleet.io/started` is within the last minute,
//! whether its check still runs or not: it limits the steps up.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::jiff;

use super::snapshot::{NodeState, NodeView, later};
use super::state::Planner;
use crate::api::{GpuPoolSpec, Power};
use crate::keys;

/// The window the ramp limit counts starts in.
const RAMP_WINDOW: SignedDuration = SignedDuration::from_secs(60);

/// The power in use, and what a start may add.
#[derive(Clone, Debug)]
pub(super) struct PowerUse {
    /// Watts drawn by the pool's nodes under test now, this plan's starts
    /// included.
    pub in_use: u64,
    pub budget: u64,
    /// Watts of the nodes started within the ramp window, this plan's
    /// starts included, and when the earliest of them leaves the window.
    pub ramped: u64,
    pub ramp: Option<u64>,
    pub ramp_frees: Option<Timestamp>,
}

/// Is a node in `state` under test, for a pool with `power` (or none)? A
/// soaking node only while its soak runs: see [`drawing`].
fn under_test(power: Option<&Power>, state: NodeState) -> bool {
    state == NodeState::Validating
        || (power.is_some_and(|p| p.soak_at_load) && state == NodeState::Soaking)
}

/// When `node`'s soak ends, as the soak rule counts it: `soakSeconds` from
/// the later of its `since` and the last change of a condition the pool
/// watches (a recovery restarts the soak). `None` when it has no `since`.
fn soak_ends(pool: &GpuPoolSpec, node: &NodeView) -> Option<Timestamp> {
    let since = node.since.get()?;
    let start = super::health::watched_conditions(pool)
        .filter_map(|t| node.condition_since.get(t).copied())
        .fold(since, Timestamp::max);
    let soak = SignedDuration::from_secs(i64::from(pool.health_checks.soak_seconds));
    Some(later(start, soak))
}

/// Does `node` draw its test power at `now`? Validating; or soaking while
/// its soak runs at load. A node whose soak is over waits for its domain
/// idle: counting it would hold the rest of its domain back for ever under
/// a budget smaller than the domain.
pub(super) fn drawing(pool: &GpuPoolSpec, node: &NodeView, now: Timestamp) -> bool {
    let power = pool.power.as_ref();
    match node.state() {
        NodeState::Soaking if under_test(power, NodeState::Soaking) => {
            soak_ends(pool, node).is_none_or(|end| now < end)
        }
        state => state == NodeState::Validating && under_test(power, state),
    }
}

/// Watts `node` draws under test, by the pool's `power` or the defaults.
fn watts(power: Option<&Power>, node: &NodeView) -> u64 {
    let product = node.labels.get(keys::GPU_PRODUCT);
    u64::from(crate::api::node_watts(power, product))
}

/// `w` watts in the unit `scale` reads best in (MW from 1 MW, else kW),
/// with the unit: "9.8 MW", "120 kW".
fn figure(w: u64, scale: u64) -> String {
    let (unit, div) = if scale >= 1_000_000 {
        ("MW", 1_000_000.0)
    } else {
        ("kW", 1_000.0)
    };
    let v = w as f64 / div;
    if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// "9.8 of 10 MW", "120 of 400 kW".
pub(super) fn megawatts(in_use: u64, budget: u64) -> String {
    let used = figure(in_use, budget);
    let used = used.rsplit_once(' ').map_or(used.as_str(), |(v, _)| v);
    format!("{used} of {}", figure(budget, budget))
}

impl Planner<'_> {
    /// The pool's power in use now, for a pool with a budget: the members'
    /// by their state in this plan, every other node of the pool by its
    /// label.
    pub(super) fn power_use(&self) -> Option<PowerUse> {
        let power = self.pool.spec.power.as_ref()?;
        let since = later(self.now, -RAMP_WINDOW);
        let mut in_use = self.power_elsewhere.0;
        let mut ramped = self.power_elsewhere.1 + self.power_started;
        let mut ramp_frees = self.power_elsewhere.2;
        for member in &self.members {
            // Most members are neither under test nor just started: their
            // watts are not read.
            let w = || watts(Some(power), member.view);
            // A soak that passed (the soak rule ran before any start) waits
            // for its domain idle.
            let soaked = member.state == NodeState::Soaking && member.passed;
            // A pass not yet written draws as in validation (state.rs,
            // `PASS_IN_POD`): the node may be probed again.
            if member.holds_a_slot() || (under_test(Some(power), member.state) && !soaked) {
                in_use += w();
            }
            // Every start within the window counts, whether its check is
            // still running or not: the ramp limits the steps up. (This
            // plan's starts are in `power_started`; a retried node this plan
            // started again may count twice, which only errs on the safe
            // side.)
            if let Some(started) = member.view.started.get().filter(|s| *s > since) {
                ramped += w();
                ramp_frees = Some(ramp_frees.map_or(started, |t: Timestamp| t.min(started)));
            }
        }
        // Trays under a rack test draw as much as under a probe; counted
        // at the pool's default node power (they are not validating). Those
        // whose test began within the window count against the ramp.
        let tray = u64::from(power.node_watts(None));
        in_use += u64::from(self.rack_testing()) * tray;
        let (recent, earliest) = self.rack_started_since(since);
        ramped += u64::from(recent) * tray;
        if let Some(at) = earliest {
            ramp_frees = Some(ramp_frees.map_or(at, |t: Timestamp| t.min(at)));
        }
        Some(PowerUse {
            in_use,
            budget: u64::from(power.budget_kilowatts) * 1000,
            ramped,
            ramp: power.ramp_kilowatts_per_minute.map(|k| u64::from(k) * 1000),
            ramp_frees: ramp_frees.map(|t| later(t, RAMP_WINDOW)),
        })
    }

    /// May member `m` start now under `use_`? If so the start is counted;
    /// if not, why, in words, and when to look again.
    pub(super) fn power_allows(&mut self, use_: &mut PowerUse, m: usize) -> bool {
        let Some(power) = self.pool.spec.power.as_ref() else {
            return true;
        };
        let w = watts(Some(power), self.members[m].view);
        if use_.in_use + w > use_.budget {
            self.power_held = Some(if w > use_.budget {
                format!(
                    "power budget: a node draws {}, more than the whole budget of {}; raise spec.power.budgetKilowatts",
                    figure(w, w),
                    figure(use_.budget, use_.budget)
                )
            } else {
                format!(
                    "power budget: {} in use; nodes start as checks finish",
                    megawatts(use_.in_use, use_.budget)
                )
            });
            return false;
        }
        if let Some(ramp) = use_.ramp
            && use_.ramped + w > ramp
        {
            self.power_held = Some(format!(
                "power ramp: {} started in the last minute, {} a minute allowed; more start as the minute passes",
                figure(use_.ramped, ramp),
                figure(ramp, ramp)
            ));
            if let Some(at) = use_.ramp_frees {
                self.wake_at(at);
            }
            return false;
        }
        use_.in_use += w;
        use_.ramped += w;
        self.power_started += w;
        // A start made now leaves the window a minute from now.
        let frees = later(self.now, RAMP_WINDOW);
        use_.ramp_frees = Some(use_.ramp_frees.map_or(frees, |t| t.min(frees)));
        true
    }
}

impl Planner<'_> {
    /// Trays a new rack test round may occupy under the power budget and
    /// ramp (each at the pool's node power); no limit without a budget.
    pub(super) fn rack_power_room(&self) -> u32 {
        let (Some(power), Some(use_)) = (self.pool.spec.power.as_ref(), self.power_use()) else {
            return u32::MAX;
        };
        let tray = u64::from(power.node_watts(None)).max(1);
        let mut room = use_.budget.saturating_sub(use_.in_use) / tray;
        if let Some(ramp) = use_.ramp {
            room = room.min(ramp.saturating_sub(use_.ramped) / tray);
        }
        u32::try_from(room).unwrap_or(u32::MAX)
    }

    /// A rack test round of `trays` waits for power: says so, and when the
    /// ramp's minute frees room.
    pub(super) fn rack_waits_for_power(&mut self, trays: u32) {
        let (Some(power), Some(use_)) = (self.pool.spec.power.as_ref(), self.power_use()) else {
            return;
        };
        let want = u64::from(trays) * u64::from(power.node_watts(None));
        self.rack_power_held = Some(if want > use_.budget {
            format!(
                "power budget: a rack test round of {trays} trays draws {}, more than the whole budget of {}; raise spec.power.budgetKilowatts",
                figure(want, want),
                figure(use_.budget, use_.budget)
            )
        } else {
            format!(
                "power budget: {} in use; a rack test of {trays} trays needs {}",
                megawatts(use_.in_use, use_.budget),
                figure(want, use_.budget)
            )
        });
        // Held by the ramp (the budget has room): look again as the
        // minute frees some. Held by the budget: a check ending is news.
        if use_.in_use + want <= use_.budget
            && let (Some(_), Some(at)) = (use_.ramp, use_.ramp_frees)
        {
            self.wake_at(at);
        }
    }

    /// When the probe `view` awaits, this batch's for its current run,
    /// finished with a pass; `None` while it runs (or is no pass).
    fn probe_finished(&self, view: &NodeView) -> Option<Timestamp> {
        let name = super::probes::awaited_probe(view);
        let probe = self.probe_named.get(name.as_str())?;
        let passed = probe.phase == super::snapshot::ProbePhase::Succeeded;
        probe
            .finished_at
            .filter(|_| passed && self.made_for_run(probe, view))
    }

    /// Energy accounting: the load this batch's nodes had under test since
    /// the status last counted (their states as this plan read them), times
    /// the time since, added to each wave and the batch; the GPUs admitted,
    /// and the GPU-hours they were online. Counting pauses while nothing is
    /// under test and no admitted GPU counts.
    pub(super) fn energy(
        &self,
        previous: &crate::api::RolloutBatchStatus,
        waves: &mut [crate::api::WaveStatus],
    ) -> crate::api::EnergyStatus {
        let power = self.pool.spec.power.as_ref();
        let before = previous.energy.clone().unwrap_or_default();
        let since = before.accounted_at.as_ref().map(|t| t.0);
        let hours = since.map_or(0.0, |t| {
            self.now.duration_since(t).as_secs_f64().max(0.0) / 3600.0
        });
        let soak = SignedDuration::from_secs(i64::from(self.pool.spec.health_checks.soak_seconds));
        let mut added = vec![0.0f64; waves.len()];
        for member in &self.members {
            let state = member.view.state();
            if !under_test(power, state) {
                continue;
            }
            // A soak at load draws until it ends, not while the node then
            // waits for its domain; a probe until it finished, not while
            // its pass waits to be read or written (`PASS_IN_POD`).
            let end = match state {
                NodeState::Soaking => soak_ends(&self.pool.spec, member.view),
                // A pass not yet written soaks from the probe's finish.
                NodeState::Validating => self.probe_finished(member.view).map(|finished| {
                    if power.is_some_and(|p| p.soak_at_load) {
                        later(finished, soak)
                    } else {
                        finished
                    }
                }),
                _ => None,
            };
            let hours = match (since, end) {
                (Some(from), Some(end)) => {
                    end.min(self.now)
                        .duration_since(from)
                        .as_secs_f64()
                        .max(0.0)
                        / 3600.0
                }
                _ => hours,
            };
            if let Some(slot) = added.get_mut(member.wave) {
                *slot += watts(power, member.view) as f64 * hours;
            }
        }
        // Trays under a rack test draw as under a probe, at the pool's node
        // power as the budget counts them, for the wave of their domain.
        if let Some(from) = since {
            let tray = f64::from(crate::api::node_watts(power, None));
            let fallback = self.open_wave().unwrap_or(added.len().saturating_sub(1));
            for (wave, hours) in self.rack_test_hours(from, fallback) {
                if let Some(slot) = added.get_mut(wave) {
                    *slot += tray * hours;
                }
            }
        }
        let mut total = before.watt_hours;
        for (wave, add) in waves.iter_mut().zip(&added) {
            let was = previous
                .waves
                .iter()
                .find(|p| p.index == wave.index)
                .map_or(0, |p| p.energy_watt_hours);
            let add = add.round() as u64;
            wave.energy_watt_hours = was.saturating_add(add);
            total = total.saturating_add(add);
        }
        let still_testing = self.rack_testing() > 0
            || self.members.iter().any(|m| {
                under_test(power, m.state) && !(m.state == NodeState::Soaking && m.passed)
            });
        // GPU-hours: the GPUs online since the last count (admissions
        // happen in plans, so between two plans the count held), while
        // some node of the batch is still undecided.
        let gpu_hours = before
            .gpu_hours
            .saturating_add((f64::from(before.gpus_online) * hours).round() as u64);
        let open = self.members.iter().any(|m| {
            matches!(
                m.state,
                NodeState::Pending | NodeState::Validating | NodeState::Soaking
            )
        });
        // Saturating: a node's allocatable may say anything up to u32::MAX.
        let gpus_online: u32 = self
            .members
            .iter()
            .filter(|m| m.state == NodeState::Ready)
            .fold(0u32, |sum, m| sum.saturating_add(m.view.gpus()));
        crate::api::EnergyStatus {
            watt_hours: total,
            accounted_at: (still_testing || (open && gpus_online > 0)).then_some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(self.now),
            ),
            gpus_online,
            gpu_hours,
        }
    }
}

/// The power drawn by the nodes under test of the pool that are not this
/// batch's members (other batches'), the part of it started within the
/// ramp window, and the earliest such start.
pub(super) fn elsewhere<'a>(
    pool: &GpuPoolSpec,
    others: impl Iterator<Item = &'a NodeView>,
    now: Timestamp,
) -> (u64, u64, Option<Timestamp>) {
    let Some(power) = pool.power.as_ref() else {
        return (0, 0, None);
    };
    let since = later(now, -RAMP_WINDOW);
    let mut totals = (0, 0, None);
    for node in others {
        let w = || watts(Some(power), node);
        if drawing(pool, node, now) {
            totals.0 += w();
        }
        if let Some(started) = node.started.get().filter(|s| *s > since) {
            totals.1 += w();
            totals.2 = Some(totals.2.map_or(started, |t: Timestamp| t.min(started)));
        }
    }
    totals
}

/// Watts drawn at `now` by `nodes` under test ([`drawing`]) and by
/// `rack_testing` trays under a rack test: what the budget counts.
pub(super) fn load<'a>(
    pool: &GpuPoolSpec,
    nodes: impl Iterator<Item = &'a NodeView>,
    rack_testing: u32,
    now: Timestamp,
) -> u64 {
    let power = pool.power.as_ref();
    let under: u64 = nodes
        .filter(|n| drawing(pool, n, now))
        .map(|n| watts(power, n))
        .sum();
    under + u64::from(rack_testing) * u64::from(crate::api::node_watts(power, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_in_the_budgets_unit() {
        assert_eq!(megawatts(9_800_000, 10_000_000), "9.8 of 10 MW");
        assert_eq!(megawatts(120_000, 400_000), "120 of 400 kW");
        assert_eq!(megawatts(7_300, 5_000), "7.3 of 5 kW");
    }
}
