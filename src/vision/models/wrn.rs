//! Pre-activation Wide ResNet (Zagoruyko & Komodakis), as the reference's `models/wrn.py`
//! (README, "The paper's protocol: vision").
//!
//! Channels `[16, 16w, 32w, 64w]`, `n = (depth − 4) / 6` BasicBlocks per group with strides 1, 2, 2;
//! BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, a 1x1 shortcut conv where the channel count changes
//! (fed with the pre-activated input, as the reference); final BN-ReLU, global average pooling
//! (the reference's `avg_pool2d(8)` on 32×32 inputs, `16` on 64×64), FC.
//!
//! Variable names follow the PyTorch module names (`block1.layer.0.conv1.weight`, `fc.bias`, ...),
//! so weights converted from a PyTorch state dict load directly.

use crate::error::{OeError, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, ModuleT};
use tch::Tensor;

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WrnConfig {
    pub depth: i64,
    pub widen_factor: i64,
    pub dropout: f64,
    pub num_classes: i64,
}

impl WrnConfig {
    /// WRN-40-2, dropout 0.3: CIFAR-10/100 and Tiny ImageNet.
    pub fn wrn_40_2(num_classes: i64) -> Self {
        Self {
            depth: 40,
            widen_factor: 2,
            dropout: 0.3,
            num_classes,
        }
    }

    /// WRN-16-4, dropout 0.4: SVHN (the reference code's dropout; the paper gives none).
    pub fn wrn_16_4(num_classes: i64) -> Self {
        Self {
            depth: 16,
            widen_factor: 4,
            dropout: 0.4,
            num_classes,
        }
    }

    /// `wrn-40-2`.
    pub fn name(&self) -> String {
        format!("wrn-{}-{}", self.depth, self.widen_factor)
    }

    pub fn validate(&self) -> Result<()> {
        if self.depth < 10 || (self.depth - 4) % 6 != 0 {
            return Err(OeError::Config(format!(
                "WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {}",
                self.depth
            )));
        }
        if self.widen_factor < 1 || self.num_classes < 2 || !(0.0..1.0).contains(&self.dropout) {
            return Err(OeError::Config(format!(
                "bad WRN config: widen factor {}, classes {}, dropout {}",
                self.widen_factor, self.num_classes, self.dropout
            )));
        }
        Ok(())
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        // N(0, sqrt(2 / (k·k·out_channels))), as the reference.
        ws_init: Init::Randn {
            mean: 0.0,
            stdev: (2.0 / (k * k * cout) as f64).sqrt(),
        },
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        ws_init: Init::Const(1.0),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

#[derive(Debug)]
struct BasicBlock {
    bn1: nn::BatchNorm,
    conv1: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
    dropout: f64,
}

impl BasicBlock {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64, dropout: f64) -> Self {
        let shortcut = (cin != cout).then(|| conv(p / "convShortcut", cin, cout, 1, stride));
        Self {
            bn1: bn(p / "bn1", cin),
            conv1: conv(p / "conv1", cin, cout, 3, stride),
            bn2: bn(p / "bn2", cout),
            conv2: conv(p / "conv2", cout, cout, 3, 1),
            shortcut,
            dropout,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let act = x.apply_t(&self.bn1, train).relu();
        let mut out = act.apply(&self.conv1).apply_t(&self.bn2, train).relu();
        if self.dropout > 0.0 {
            out = out.dropout(self.dropout, train);
        }
        let out = out.apply(&self.conv2);
        match &self.shortcut {
            // The reference feeds the shortcut with relu(bn1(x)) when the shape changes ...
            Some(s) => act.apply(s) + out,
            // ... and with the raw x otherwise.
            None => x + out,
        }
    }
}

/// A pre-activation Wide ResNet.
#[derive(Debug)]
pub struct WideResNet {
    pub config: WrnConfig,
    conv1: nn::Conv2D,
    blocks: Vec<BasicBlock>,
    bn1: nn::BatchNorm,
    fc: nn::Linear,
}

impl WideResNet {
    /// Builds the network under `p` (use `vs.root()`), initialised as the reference.
    pub fn new(p: &nn::Path, config: &WrnConfig) -> Result<Self> {
        config.validate()?;
        let n = (config.depth - 4) / 6;
        let w = config.widen_factor;
        let channels = [16, 16 * w, 32 * w, 64 * w];
        let conv1 = conv(p / "conv1", 3, channels[0], 3, 1);
        let mut blocks = Vec::new();
        for (g, stride) in [1i64, 2, 2].into_iter().enumerate() {
            let gp = p / format!("block{}", g + 1) / "layer";
            for i in 0..n {
                let cin = if i == 0 { channels[g] } else { channels[g + 1] };
                let s = if i == 0 { stride } else { 1 };
                blocks.push(BasicBlock::new(
                    &(&gp / i),
                    cin,
                    channels[g + 1],
                    s,
                    config.dropout,
                ));
            }
        }
        let bn1 = bn(p / "bn1", channels[3]);
        // The FC weight keeps PyTorch's default init, U(±1/sqrt(fan_in)); bias 0.
        let bound = 1.0 / (channels[3] as f64).sqrt();
        let fc = nn::linear(
            p / "fc",
            channels[3],
            config.num_classes,
            nn::LinearConfig {
                ws_init: Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                bs_init: Some(Init::Const(0.0)),
                bias: true,
            },
        );
        Ok(Self {
            config: config.clone(),
            conv1,
            blocks,
            bn1,
            fc,
        })
    }

    /// Logits `[n, classes]` for normalised images `[n, 3, h, w]` (h = w = 32 or 64).
    pub fn logits(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.conv1);
        for b in &self.blocks {
            h = b.forward_t(&h, train);
        }
        let h = h.apply_t(&self.bn1, train).relu();
        // avg_pool2d(size/4) on a (size/4)×(size/4) map is the spatial mean.
        let h = h.mean_dim([2i64, 3].as_slice(), false, tch::Kind::Float);
        h.apply(&self.fc)
    }
}

impl ModuleT for WideResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.logits(xs, train)
    }
}
