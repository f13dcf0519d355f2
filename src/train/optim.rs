//! Adam with a state that can be checkpointed.
//!
//! tch's `nn::Adam` wraps libtorch's C++ optimiser, whose moment estimates cannot be read or set from
//! Rust, so a resumed run would restart them and follow a different trajectory. This is the same
//! algorithm as `torch.optim.Adam` (betas 0.9/0.999, eps 1e-8, no weight decay, bias-corrected, the
//! single-tensor update), on tensors we own: its moments and step count go into every checkpoint, and
//! `--resume` continues exactly where an uninterrupted run would be. `tests` pins it to libtorch's
//! own Adam.

use crate::error::{OeError, Result};
use std::collections::HashMap;
use tch::{nn, Kind, Tensor};

/// Name prefix of the optimiser's tensors inside a checkpoint file.
pub const STATE_PREFIX: &str = "__adam.";

/// Whether [`oe_kernels::adam_step`] can update `p` in place: every tensor float32 on the CPU,
/// `p`, `m` and `v` contiguous, all the same size.
fn fused_ok(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let cpu_f32 = |t: &Tensor| t.device() == tch::Device::Cpu && t.kind() == Kind::Float;
    [p, g, m, v].iter().all(|t| cpu_f32(t))
        && [p, m, v].iter().all(|t| t.is_contiguous())
        && g.size() == p.size()
        && m.size() == p.size()
        && v.size() == p.size()
}

/// Adam over every trainable variable of a var store.
pub struct Adam {
    /// (name, variable), sorted by name.
    params: Vec<(String, Tensor)>,
    /// First and second moment estimates, one per parameter, same shapes.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Completed steps (PyTorch's `state['step']`).
    step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Zero moments over `vs`'s trainable variables (PyTorch's defaults).
    pub fn new(vs: &nn::VarStore) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &[(String, Tensor)]| -> Vec<Tensor> {
            p.iter().map(|(_, t)| t.zeros_like()).collect()
        };
        Self {
            m: zeros(&params),
            v: zeros(&params),
            params,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// Completed steps.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Clears the parameters' gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// `zero_grad`, `loss.backward()`, `step(lr)`.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) {
        self.zero_grad();
        loss.backward();
        self.step(lr);
    }

    /// One update with learning rate `lr`:
    /// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
    /// `p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε)`. Parameters without a gradient are skipped (their
    /// moments stay), as PyTorch does.
    pub fn step(&mut self, lr: f64) {
        self.update(lr, |p| {
            let g = p.grad();
            g.defined().then_some(g)
        });
    }

    /// [`Adam::step`] with gradients computed elsewhere (a hand-written backward pass):
    /// `grads` pairs a variable (a tensor sharing storage with one of the var store's) with its
    /// gradient. Variables not listed are skipped, as parameters without a gradient are.
    pub fn step_with_grads(&mut self, lr: f64, grads: &[(Tensor, Tensor)]) {
        let by_ptr: HashMap<usize, &Tensor> = grads
            .iter()
            .map(|(v, g)| (v.data_ptr() as usize, g))
            .collect();
        self.update(lr, |p| {
            by_ptr
                .get(&(p.data_ptr() as usize))
                .map(|g| g.shallow_clone())
        });
    }

    fn update(&mut self, lr: f64, grad_of: impl Fn(&Tensor) -> Option<Tensor>) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self
                .params
                .iter_mut()
                .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            {
                let Some(g) = grad_of(p) else {
                    continue;
                };
                if fused_ok(p, &g, m, v) {
                    // One pass over the four buffers instead of about ten (the embedding's
                    // gradient is dense, and a step's largest cost on short texts).
                    let g = g.contiguous();
                    let c = [
                        (1.0 - b1) as f32,
                        b2 as f32,
                        (1.0 - b2) as f32,
                        (1.0 / bc2_sqrt) as f32,
                        eps as f32,
                        step_size as f32,
                    ];
                    let n = p.numel();
                    // SAFETY: `fused_ok` checked that all four are contiguous float32 CPU tensors
                    // of `n` elements; `p`, `m` and `v` are distinct tensors this optimiser owns
                    // (or the var store's variable) and `g` is a separate gradient buffer, so the
                    // slices do not overlap; nothing else touches them during the call.
                    unsafe {
                        let sl = |t: &Tensor| {
                            std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n)
                        };
                        oe_kernels::adam_step(
                            sl(p),
                            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
                            sl(m),
                            sl(v),
                            &c,
                        );
                    }
                    continue;
                }
                let _ = m.lerp_(&g, 1.0 - b1);
                let _ = v.g_mul_scalar_(b2);
                let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
                let denom = v.sqrt() / bc2_sqrt + eps;
                let _ = p.g_sub_(&(&*m / denom * step_size));
            }
        });
    }

    /// The state as named tensors (`__adam.m.<var>`, `__adam.v.<var>`, `__adam.step`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for ((name, _), (m, v)) in self.params.iter().zip(self.m.iter().zip(&self.v)) {
            out.push((format!("{STATE_PREFIX}m.{name}"), m.shallow_clone()));
            out.push((format!("{STATE_PREFIX}v.{name}"), v.shallow_clone()));
        }
        out.push((
            format!("{STATE_PREFIX}step"),
            Tensor::from_slice(&[self.step]),
        ));
        out
    }

    /// Restores a state written by [`Adam::state_tensors`] (extra tensors are ignored). Returns
    /// `Ok(false)`, leaving the fresh state, when `tensors` holds no optimiser state at all (a
    /// checkpoint from before it was saved); an error when it holds a partial or mismatched one.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<bool> {
        let Some(step) = tensors.get(&format!("{STATE_PREFIX}step")) else {
            return Ok(false);
        };
        let step = step.int64_value(&[0]);
        for ((name, p), (m, v)) in self
            .params
            .iter()
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            for (kind, dst) in [("m", m), ("v", v)] {
                let key = format!("{STATE_PREFIX}{kind}.{name}");
                let src = tensors.get(&key).ok_or_else(|| {
                    OeError::Data(format!("checkpoint has no optimiser state `{key}`"))
                })?;
                if src.size() != p.size() {
                    return Err(OeError::Data(format!(
                        "checkpoint optimiser state `{key}` has shape {:?}, the variable {:?}",
                        src.size(),
                        p.size()
                    )));
                }
                *dst = src
                    .to_kind(Kind::Float)
                    .to_device(p.device())
                    .to_kind(p.kind());
            }
        }
        self.step = step;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, OptimizerConfig};
    use tch::Device;

    fn net(vs: &nn::VarStore) -> impl Module {
        let p = vs.root();
        nn::seq()
            .add(nn::linear(&p / "a", 4, 8, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(&p / "b", 8, 3, Default::default()))
    }

    /// Reference: libtorch's own `torch::optim::Adam` (tch `nn::Adam`, default betas/eps, no weight
    /// decay) on the same network, data and learning-rate schedule.
    #[test]
    fn matches_libtorchs_adam_over_a_schedule() {
        tch::manual_seed(3);
        let vs_a = nn::VarStore::new(Device::Cpu);
        let net_a = net(&vs_a);
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let net_b = net(&vs_b);
        vs_b.copy(&vs_a).unwrap();
        let x = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        let mut ours = Adam::new(&vs_a);
        let mut theirs = nn::Adam::default().build(&vs_b, 0.01).unwrap();
        for i in 0..20 {
            let lr = 0.01 * (1.0 + (i as f64 / 7.0).cos()) / 2.0;
            ours.backward_step(&net_a.forward(&x).cross_entropy_for_logits(&y), lr);
            theirs.set_lr(lr);
            theirs.backward_step(&net_b.forward(&x).cross_entropy_for_logits(&y));
        }
        let (va, vb) = (vs_a.variables(), vs_b.variables());
        for (k, a) in &va {
            let d = (a - &vb[k]).abs().max().double_value(&[]);
            assert!(d < 1e-6, "{k}: max difference {d}");
        }
        assert_eq!(ours.steps(), 20);
    }

    #[test]
    fn state_round_trips_and_resumes_exactly() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let n = net(&vs);
        let x = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1]);
        let loss = |n: &dyn Module| n.forward(&x).cross_entropy_for_logits(&y);
        let mut opt = Adam::new(&vs);
        for _ in 0..3 {
            opt.backward_step(&loss(&n), 0.01);
        }
        // Snapshot weights + state, continue 3 steps; then restore into a fresh copy and redo them.
        let state: HashMap<String, Tensor> = opt
            .state_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.copy()))
            .collect();
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let n2 = net(&vs2);
        vs2.copy(&vs).unwrap();
        for _ in 0..3 {
            opt.backward_step(&loss(&n), 0.01);
        }
        let mut opt2 = Adam::new(&vs2);
        assert!(opt2.load_state(&state).unwrap());
        assert_eq!(opt2.steps(), 3);
        for _ in 0..3 {
            opt2.backward_step(&loss(&n2), 0.01);
        }
        let (a, b) = (vs.variables(), vs2.variables());
        for (k, t) in &a {
            assert_eq!((t - &b[k]).abs().max().double_value(&[]), 0.0, "{k}");
        }
        // No state in the file: a fresh optimiser, said by the return value; a partial one: an error.
        let mut fresh = Adam::new(&vs2);
        assert!(!fresh.load_state(&HashMap::new()).unwrap());
        let mut partial = state;
        let key = partial.keys().find(|k| k.contains(".m.")).unwrap().clone();
        partial.remove(&key);
        assert!(fresh.load_state(&partial).is_err());
    }
}
