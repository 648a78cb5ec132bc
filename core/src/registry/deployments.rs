//! Deployments: how servers split a model's traffic between versions, shadow it, and batch it.
//! Stored so that a restarted server, or another kiln process, routes the same way.

use super::records::{decode, encode, now_ms};
use super::{Deployment, Registry, RegistryError};

/// The most rows a dynamic batch may hold.
pub const MAX_BATCH_ROWS: usize = 65_536;
/// The longest a request may wait for its batch to fill, in microseconds (one second).
pub const MAX_BATCH_DELAY_US: u64 = 1_000_000;

impl Registry {
    /// The deployment of `model`: the stored one, or all traffic to `champion` when none is.
    pub fn deployment(&self, model: &str) -> Result<Deployment, RegistryError> {
        self.model(model)?;
        match self.deployments.get(model.as_bytes())? {
            Some(bytes) => decode("deployment", &bytes),
            None => Ok(Deployment::default_for(model)),
        }
    }

    /// Every stored deployment, by model name.
    pub fn deployments(&self) -> Result<Vec<Deployment>, RegistryError> {
        self.deployments
            .iter()
            .values()
            .map(|v| decode("deployment", &v?))
            .collect()
    }

    /// Checks and stores a deployment: percentages of distinct targets summing to 100, every
    /// target an existing version or alias of the model, batching within bounds.
    pub fn set_deployment(
        &self,
        mut deployment: Deployment,
        by: &str,
    ) -> Result<Deployment, RegistryError> {
        let model = deployment.model.clone();
        self.model(&model)?;
        check_deployment(&deployment)?;
        for target in deployment.targets() {
            self.resolve(&model, target)?;
        }
        deployment.updated_ms = now_ms();
        deployment.updated_by = by.to_string();
        self.deployments
            .insert(model.as_bytes(), encode(&deployment))?;
        self.flush()?;
        Ok(deployment)
    }

    /// Removes a model's stored deployment, so that it is served as `champion` again.
    pub fn reset_deployment(&self, model: &str) -> Result<(), RegistryError> {
        self.deployments.remove(model.as_bytes())?;
        self.flush()
    }
}

fn check_deployment(d: &Deployment) -> Result<(), RegistryError> {
    let invalid = |m: String| Err(RegistryError::Invalid(m));
    if d.routes.is_empty() {
        return invalid(format!(
            "deployment of `{}` has no routes; give at least one target with 100%",
            d.model
        ));
    }
    // Summed wide: percentages near u32::MAX must not wrap around to 100.
    let total: u64 = d.routes.iter().map(|r| u64::from(r.percent)).sum();
    if total != 100 {
        return invalid(format!(
            "the traffic split of `{}` adds up to {total}%, not 100%",
            d.model
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &d.routes {
        if r.percent == 0 {
            return invalid(format!("route `{}` has 0%; leave it out instead", r.target));
        }
        let number = r.target.strip_prefix('v').unwrap_or(&r.target);
        let key = if number.parse::<u32>().is_ok() {
            number
        } else {
            r.target.as_str()
        };
        if !seen.insert(key) {
            return invalid(format!("route `{}` appears twice", r.target));
        }
    }
    if let Some(b) = d.batching {
        if b.max_batch == 0 || b.max_batch > MAX_BATCH_ROWS {
            return invalid(format!(
                "max_batch must be between 1 and {MAX_BATCH_ROWS}, not {}",
                b.max_batch
            ));
        }
        if b.max_delay_us > MAX_BATCH_DELAY_US {
            return invalid(format!(
                "max_delay_us must be at most {MAX_BATCH_DELAY_US} (one second), not {}",
                b.max_delay_us
            ));
        }
    }
    Ok(())
}
