//! Template and sampling state per exporter scope, and data held for templates that
//! have not arrived yet. Everything here is bounded by [`Limits`].

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::plan::{Fields, Plan, PlanKind, TimeBase};
use super::{DecodeError, FlowRecord, Protocol};

/// Templates are scoped per exporter address, protocol and source id / observation domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub exporter: IpAddr,
    pub protocol: Protocol,
    pub source_id: u32,
}

/// Withdrawn template ids remembered per scope (to tell data for them from data that
/// merely arrived early).
const MAX_WITHDRAWN_PER_SCOPE: usize = 1024;

/// Bounds on decoder memory. The defaults hold a few hundred busy exporters.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Templates across all scopes.
    pub max_templates: usize,
    /// Exporter scopes; beyond this the least recently seen scope is forgotten.
    pub max_scopes: usize,
    /// Samplers remembered per scope.
    pub max_samplers_per_scope: usize,
    /// Data sets held for a missing template, across all scopes.
    pub max_pending_sets: usize,
    /// Bytes of held data across all scopes.
    pub max_pending_bytes: usize,
    /// How long held data waits for its template.
    pub pending_max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_templates: 4096,
            max_scopes: 4096,
            max_samplers_per_scope: 256,
            max_pending_sets: 8192,
            max_pending_bytes: 16 << 20,
            pending_max_age_ms: 60_000,
        }
    }
}

/// Held data sets that were given up on (too old, or evicted when the hold was full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredPending {
    pub scope: ScopeKey,
    pub sets: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Scope {
    templates: FxHashMap<u16, Arc<Plan>>,
    withdrawn: rustc_hash::FxHashSet<u16>,
    samplers: FxHashMap<u64, u32>,
    /// Exporter-wide sampling rate from options data without a sampler id.
    default_rate: Option<u32>,
    pub system_init_ms: Option<i64>,
    last_seen_ms: i64,
}

#[derive(Debug)]
struct Pending {
    scope: ScopeKey,
    template_id: u16,
    received_ms: i64,
    base: TimeBase,
    body: Vec<u8>,
}

/// Decoder state: one per collector worker. See the module docs of [`crate::decode`].
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    scopes: FxHashMap<ScopeKey, Scope>,
    template_count: usize,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    pending_index: FxHashMap<(ScopeKey, u16), usize>,
    expired: FxHashMap<ScopeKey, u64>,
}

/// Which templates an IPFIX withdrawal removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Withdrawal {
    One(u16),
    All(PlanKind),
}

/// State one options record asks for, applied once its whole set has decoded.
struct OptionsUpdate {
    system_init_ms: Option<i64>,
    sampler_id: Option<u64>,
    rate: Option<u32>,
}

/// What happened to one data set.
pub(crate) enum SetOutcome {
    Decoded(usize),
    Held,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            ..Default::default()
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of templates currently known across all scopes.
    pub fn template_count(&self) -> usize {
        self.template_count
    }

    /// Data sets currently held, per scope.
    pub fn pending_sets(&self) -> impl Iterator<Item = (ScopeKey, usize)> + '_ {
        self.pending_index
            .iter()
            .map(|((scope, _), n)| (*scope, *n))
            .fold(
                FxHashMap::<ScopeKey, usize>::default(),
                |mut acc, (s, n)| {
                    *acc.entry(s).or_default() += n;
                    acc
                },
            )
            .into_iter()
    }

    /// Drop held data older than the age limit and return everything given up on since
    /// the last call, so the caller can count it against its exporter.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<ExpiredPending> {
        while let Some(front) = self.pending.front() {
            if now_ms.saturating_sub(front.received_ms) <= self.limits.pending_max_age_ms {
                break;
            }
            self.drop_front_pending();
        }
        self.expired
            .drain()
            .map(|(scope, sets)| ExpiredPending { scope, sets })
            .collect()
    }

    fn drop_front_pending(&mut self) {
        if let Some(p) = self.pending.pop_front() {
            self.forget_pending(&p);
            *self.expired.entry(p.scope).or_default() += 1;
        }
    }

    fn forget_pending(&mut self, p: &Pending) {
        self.pending_bytes = self.pending_bytes.saturating_sub(p.body.len());
        let key = (p.scope, p.template_id);
        if let Some(n) = self.pending_index.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.pending_index.remove(&key);
            }
        }
    }

    /// The scope for `key`, created on first sight (evicting the least recently seen
    /// scope when the table is full).
    pub(crate) fn scope(&mut self, key: ScopeKey, now_ms: i64) -> &mut Scope {
        if !self.scopes.contains_key(&key) && self.scopes.len() >= self.limits.max_scopes {
            if let Some(victim) = self
                .scopes
                .iter()
                .min_by_key(|(_, s)| s.last_seen_ms)
                .map(|(k, _)| *k)
            {
                self.forget_scope(victim);
            }
        }
        let scope = self.scopes.entry(key).or_default();
        scope.last_seen_ms = now_ms;
        scope
    }

    fn forget_scope(&mut self, key: ScopeKey) {
        if let Some(s) = self.scopes.remove(&key) {
            self.template_count -= s.templates.len();
        }
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in std::mem::take(&mut self.pending) {
            if p.scope == key {
                self.forget_pending(&p);
                *self.expired.entry(p.scope).or_default() += 1;
            } else {
                kept.push_back(p);
            }
        }
        self.pending = kept;
    }

    /// Install (or replace) a template. Returns the held data for it, to decode now
    /// through [`Decoder::data_set`].
    pub(crate) fn add_template(
        &mut self,
        key: ScopeKey,
        template_id: u16,
        plan: Plan,
        now_ms: i64,
    ) -> Result<Vec<(TimeBase, Vec<u8>)>, DecodeError> {
        let max = self.limits.max_templates;
        let full = self.template_count >= max;
        let scope = self.scope(key, now_ms);
        let is_new = !scope.templates.contains_key(&template_id);
        if is_new && full {
            return Err(DecodeError::TemplateCacheFull { template_id, max });
        }
        scope.withdrawn.remove(&template_id);
        scope.templates.insert(template_id, Arc::new(plan));
        if is_new {
            self.template_count += 1;
        }
        Ok(self.release_pending(key, template_id))
    }

    fn release_pending(&mut self, key: ScopeKey, template_id: u16) -> Vec<(TimeBase, Vec<u8>)> {
        if !self.pending_index.contains_key(&(key, template_id)) {
            return Vec::new();
        }
        let mut released = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in std::mem::take(&mut self.pending) {
            if p.scope == key && p.template_id == template_id {
                self.forget_pending(&p);
                released.push((p.base, p.body));
            } else {
                kept.push_back(p);
            }
        }
        self.pending = kept;
        released
    }

    /// Withdraw one template, or every template of one kind in the scope (RFC 7011
    /// section 8.1: template id 2 withdraws all templates, 3 all options templates).
    pub(crate) fn withdraw(&mut self, key: ScopeKey, what: Withdrawal, now_ms: i64) {
        let max_withdrawn = MAX_WITHDRAWN_PER_SCOPE;
        let scope = self.scope(key, now_ms);
        let ids: Vec<u16> = match what {
            Withdrawal::One(id) => vec![id],
            Withdrawal::All(kind) => scope
                .templates
                .iter()
                .filter(|(_, plan)| plan.kind == kind)
                .map(|(id, _)| *id)
                .collect(),
        };
        let mut removed = 0;
        for id in ids {
            removed += usize::from(scope.templates.remove(&id).is_some());
            if scope.withdrawn.len() < max_withdrawn {
                scope.withdrawn.insert(id);
            }
        }
        self.template_count -= removed;
    }

    /// Decode one data set with its template, or hold it until the template arrives.
    pub(crate) fn data_set(
        &mut self,
        key: ScopeKey,
        template_id: u16,
        base: TimeBase,
        body: &[u8],
        now_ms: i64,
        out: &mut Vec<FlowRecord>,
    ) -> Result<SetOutcome, DecodeError> {
        let scope = self.scope(key, now_ms);
        let Some(plan) = scope.templates.get(&template_id).cloned() else {
            if scope.withdrawn.contains(&template_id) {
                return Err(DecodeError::WithdrawnTemplate { template_id });
            }
            self.hold(key, template_id, base, body, now_ms);
            return Ok(SetOutcome::Held);
        };
        self.decode_with(key, template_id, &plan, base, body, out)
            .map(SetOutcome::Decoded)
    }

    fn hold(
        &mut self,
        scope: ScopeKey,
        template_id: u16,
        base: TimeBase,
        body: &[u8],
        now_ms: i64,
    ) {
        if body.len() > self.limits.max_pending_bytes {
            *self.expired.entry(scope).or_default() += 1;
            return;
        }
        while !self.pending.is_empty()
            && (self.pending.len() >= self.limits.max_pending_sets
                || self.pending_bytes + body.len() > self.limits.max_pending_bytes)
        {
            self.drop_front_pending();
        }
        if self.limits.max_pending_sets == 0 {
            *self.expired.entry(scope).or_default() += 1;
            return;
        }
        self.pending_bytes += body.len();
        *self.pending_index.entry((scope, template_id)).or_default() += 1;
        self.pending.push_back(Pending {
            scope,
            template_id,
            received_ms: now_ms,
            base,
            body: body.to_vec(),
        });
    }

    /// Decode a set body with a known plan. Data records go to `out`; options records
    /// update the scope's sampling and time state. All or nothing per set.
    pub(crate) fn decode_with(
        &mut self,
        key: ScopeKey,
        template_id: u16,
        plan: &Plan,
        base: TimeBase,
        body: &[u8],
        out: &mut Vec<FlowRecord>,
    ) -> Result<usize, DecodeError> {
        let max_samplers = self.limits.max_samplers_per_scope;
        let Some(scope) = self.scopes.get_mut(&key) else {
            return Ok(0);
        };
        let start = out.len();
        let result = match plan.kind {
            PlanKind::Data => {
                let base = TimeBase {
                    system_init_ms: scope.system_init_ms,
                    ..base
                };
                let scope: &Scope = scope;
                plan.for_each_record(body, |f: &Fields| {
                    let rate = f
                        .own_sampling_rate()
                        .or_else(|| f.sampler_id.and_then(|id| scope.samplers.get(&id).copied()))
                        .or(scope.default_rate)
                        .unwrap_or(1);
                    out.push(f.finish(base, rate));
                })
            }
            PlanKind::Options => {
                // Collect first and apply only when the whole set decoded, so a set that
                // overruns half-way changes no sampling or time state.
                let mut updates: Vec<OptionsUpdate> = Vec::new();
                let result = plan.for_each_record(body, |f: &Fields| {
                    let rate = f.own_sampling_rate();
                    if f.system_init_ms.is_some() || rate.is_some() {
                        updates.push(OptionsUpdate {
                            system_init_ms: f.system_init_ms,
                            sampler_id: f.sampler_id,
                            rate,
                        });
                    }
                });
                if result.is_ok() {
                    for u in updates {
                        if let Some(init) = u.system_init_ms {
                            scope.system_init_ms = Some(init);
                        }
                        match (u.rate, u.sampler_id) {
                            (Some(rate), Some(id))
                                if scope.samplers.len() < max_samplers
                                    || scope.samplers.contains_key(&id) =>
                            {
                                scope.samplers.insert(id, rate);
                            }
                            (Some(rate), None) => scope.default_rate = Some(rate),
                            _ => {}
                        }
                    }
                }
                result
            }
        };
        match result {
            Ok(n) => Ok(n),
            Err(offset) => {
                out.truncate(start);
                Err(DecodeError::VariableLengthOverrun {
                    template_id,
                    offset,
                })
            }
        }
    }
}
