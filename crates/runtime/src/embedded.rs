//! Embedded mode: the stages chained in one process with the same processor code, for `make run`
//! and tests. A stage's output is handed at once to every stage whose input role it has (the
//! next one, a later one such as the notifier after the detector, or the stage itself for a
//! repartition topic it re-keys onto; side inputs too, such as the notifier's features), depth-first, so each input's effects complete before the
//! next input; every output, handed on or not, is also shown to the caller's sink. Offsets are per-topic counters and the partition is 0, so dead letters still
//! say where their record came from. Nothing is lost: every record either reaches the sink, is
//! consumed by the next stage, or becomes a dead letter that reaches the sink.

use std::collections::HashMap;

use seqmon_model::topics::TopicRole;

use crate::driver::Driver;
use crate::error::RuntimeError;
use crate::processor::{Emitted, Envelope};

/// A chain of stages.
pub struct Chain {
    stages: Vec<Driver>,
    offsets: HashMap<TopicRole, i64>,
}

impl Chain {
    /// Chains the stages in order; every stage after the first must read what an earlier stage
    /// writes.
    pub fn new(stages: Vec<Driver>) -> Result<Self, RuntimeError> {
        for (i, d) in stages.iter().enumerate().skip(1) {
            let b = d.processor();
            if !stages[..i]
                .iter()
                .any(|a| a.processor().output_roles().contains(&b.input_role()))
            {
                return Err(RuntimeError::Internal(format!(
                    "no earlier stage feeds {}",
                    b.stage()
                )));
            }
        }
        Ok(Chain {
            stages,
            offsets: HashMap::new(),
        })
    }

    /// The stages, for their metrics.
    pub fn stages(&self) -> &[Driver] {
        &self.stages
    }

    /// Feeds one record to the first stage's input; `sink` receives every record any stage
    /// produces (a tap, with its topic name), including those handed on to the next stage.
    pub fn push(
        &mut self,
        key: &str,
        value: &[u8],
        sink: &mut dyn FnMut(&str, &Emitted),
    ) -> Result<(), RuntimeError> {
        let role = self.stages[0].processor().input_role();
        self.feed(0, role, key, value, sink)
    }

    /// Feeds one record of `role` (a topic no stage of the chain writes, such as the commands
    /// a service team sends) to every stage that reads it.
    pub fn push_to(
        &mut self,
        role: TopicRole,
        key: &str,
        value: &[u8],
        sink: &mut dyn FnMut(&str, &Emitted),
    ) -> Result<(), RuntimeError> {
        let readers: Vec<usize> = (0..self.stages.len())
            .filter(|i| reads(&self.stages[*i], role))
            .collect();
        if readers.is_empty() {
            return Err(RuntimeError::Internal(format!("no stage reads {role}")));
        }
        for index in readers {
            self.feed(index, role, key, value, sink)?;
        }
        Ok(())
    }

    fn feed(
        &mut self,
        index: usize,
        role: TopicRole,
        key: &str,
        value: &[u8],
        sink: &mut dyn FnMut(&str, &Emitted),
    ) -> Result<(), RuntimeError> {
        let offset = {
            let o = self.offsets.entry(role).or_insert(0);
            *o += 1;
            *o - 1
        };
        let topic = role.spec().name;
        let env = Envelope {
            key: Some(key.as_bytes()),
            value,
            topic,
            partition: 0,
            offset,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        let mut out = Vec::new();
        self.stages[index].handle(&env, &mut out, |_| {})?;
        self.route(index, out, sink)
    }

    fn route(
        &mut self,
        index: usize,
        out: Vec<Emitted>,
        sink: &mut dyn FnMut(&str, &Emitted),
    ) -> Result<(), RuntimeError> {
        for e in out {
            sink(e.role.spec().name, &e);
            // Later stages, or this one (a repartition topic); never an earlier one, so
            // a chain cannot cycle back through another stage.
            for next in index..self.stages.len() {
                if reads(&self.stages[next], e.role) {
                    self.feed(next, e.role, &e.key, &e.value, sink)?;
                }
            }
        }
        Ok(())
    }

    /// Input ended: flushes each stage in order, feeding what it releases downstream.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&str, &Emitted)) -> Result<(), RuntimeError> {
        for index in 0..self.stages.len() {
            let mut out = Vec::new();
            self.stages[index].finish(&mut out)?;
            self.route(index, out, sink)?;
        }
        Ok(())
    }
}

/// Whether a stage reads `role`, as its input or a side input.
fn reads(stage: &Driver, role: TopicRole) -> bool {
    let p = stage.processor();
    p.input_role() == role || p.side_input_roles().contains(&role)
}
