//! A node's attributes, read by name with the node's defaults.

use super::proto::{AttributeProto, NodeProto};
use super::tensor::{OpResult, Value};

/// Typed access to one node's attributes.
pub struct Attrs<'a>(pub &'a NodeProto);

impl<'a> Attrs<'a> {
    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }

    pub fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }

    pub fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }

    pub fn strings(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn tensor(&self, name: &str) -> OpResult<Option<Value>> {
        match self.get(name).and_then(|a| a.t.as_ref()) {
            Some(t) => Value::from_proto(t).map(Some),
            None => Ok(None),
        }
    }

    /// A float list given either as `name` or as the tensor `name_as_tensor` (ONNX-ML's double
    /// form).
    pub fn floats_or_tensor(&self, name: &str) -> OpResult<Vec<f32>> {
        match self.tensor(&format!("{name}_as_tensor"))? {
            Some(t) => t.to_f32(),
            None => Ok(self.floats(name)),
        }
    }

    /// Doubles of `name_as_tensor`, or the floats of `name` widened, for values (thresholds)
    /// where the exact number matters.
    pub fn doubles_or_floats(&self, name: &str) -> OpResult<Vec<f64>> {
        if let Some(a) = self.get(&format!("{name}_as_tensor"))
            && let Some(t) = &a.t
        {
            if !t.double_data.is_empty() {
                return Ok(t.double_data.clone());
            }
            if t.data_type == super::proto::data_type::DOUBLE && !t.raw_data.is_empty() {
                if t.raw_data.len() % 8 != 0 {
                    return Err(format!("`{name}_as_tensor` has a partial double"));
                }
                return Ok(t
                    .raw_data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect());
            }
            return Ok(Value::from_proto(t)?
                .to_f32()?
                .into_iter()
                .map(f64::from)
                .collect());
        }
        Ok(self.floats(name).into_iter().map(f64::from).collect())
    }
}
