//! Everything that turns model outputs into an anomaly score (**higher = more anomalous**):
//! [`Detector`], the closed set an evaluation, a comparison or a scoring run names, which is either a
//! logit score ([`score`]: MSP, max logit, energy, entropy, cross-entropy to uniform) or a detector
//! stored in the model directory, fitted on in-distribution training features or tuned on validation
//! data ([`feature`]: Mahalanobis, k-NN; [`fitted`]: relative Mahalanobis, ViM, ReAct, ODIN's
//! temperature). Being one enum, an evaluation cannot name a logit score and a feature detector at
//! once.

pub mod conformal;
pub mod feature;
pub mod fitted;
pub mod score;

pub use score::Score;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A detector stored in the model directory (`detectors/`): fitted on in-distribution training
/// features only, with hyper-parameters at their defaults or chosen by `oe-text tune` on validation
/// data (see [`feature`] and [`fitted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureDetector {
    /// Minimum class-conditional Mahalanobis distance with a shared covariance (Lee et al. 2018).
    Mahalanobis,
    /// Distance to the k-th nearest normalised training feature (Sun et al. 2022).
    Knn,
    /// Relative Mahalanobis distance: the class-conditional distance minus the distance to one
    /// Gaussian of all training features (Ren et al. 2021).
    Rmd,
    /// Virtual-logit matching: the feature's residual off the training features' principal subspace,
    /// scaled, against the energy (Wang et al., CVPR 2022).
    Vim,
    /// Energy of the logits recomputed from features clipped at a percentile of the training
    /// activations (Sun et al., NeurIPS 2021).
    React,
    /// Temperature-scaled MSP (Liang et al., ICLR 2018), without ODIN's input perturbation.
    Odin,
}

impl FeatureDetector {
    pub fn name(self) -> &'static str {
        match self {
            FeatureDetector::Mahalanobis => "mahalanobis",
            FeatureDetector::Knn => "knn",
            FeatureDetector::Rmd => "rmd",
            FeatureDetector::Vim => "vim",
            FeatureDetector::React => "react",
            FeatureDetector::Odin => "odin",
        }
    }

    /// Every stored detector, in table order.
    pub fn all() -> [FeatureDetector; 6] {
        [
            FeatureDetector::Mahalanobis,
            FeatureDetector::Rmd,
            FeatureDetector::Knn,
            FeatureDetector::Vim,
            FeatureDetector::React,
            FeatureDetector::Odin,
        ]
    }

    /// Whether it reads features from a configurable [`FeatureSource`] (ViM and ReAct use the
    /// features the classification head sees; ODIN only the logits).
    pub fn has_source(self) -> bool {
        matches!(
            self,
            FeatureDetector::Mahalanobis | FeatureDetector::Knn | FeatureDetector::Rmd
        )
    }
}

/// How a token position's hidden states are pooled into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// Mean over real tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
}

/// Which features a feature-space detector reads. For pretrained encoders the best layer is often
/// not the last (Podolskiy et al. 2021; Chen et al. 2022), so any layer's pooled or `[CLS]` state and
/// the average over layers are available; other models have only [`FeatureSource::Penultimate`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FeatureSource {
    /// What the classification head sees (the GRU's last state, the encoder's pooled output).
    #[default]
    Penultimate,
    /// The hidden states after encoder layer `layer` (0 = the embeddings), pooled.
    Layer { layer: usize, pool: Pool },
    /// The pooled hidden states of every encoder layer (1..=L), averaged.
    LayerMean { pool: Pool },
}

impl fmt::Display for FeatureSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |p: &Pool| match p {
            Pool::Mean => "mean",
            Pool::Cls => "cls",
        };
        match self {
            FeatureSource::Penultimate => f.write_str("penultimate"),
            FeatureSource::Layer { layer, pool } => write!(f, "layer{layer}-{}", p(pool)),
            FeatureSource::LayerMean { pool } => write!(f, "layers-{}", p(pool)),
        }
    }
}

impl FromStr for FeatureSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("unknown feature source `{s}` (penultimate, layerN-mean, layerN-cls, layers-mean, layers-cls)")
        };
        let pool = |p: &str| match p {
            "mean" => Ok(Pool::Mean),
            "cls" => Ok(Pool::Cls),
            _ => Err(bad()),
        };
        let t = s.trim().to_ascii_lowercase();
        if t == "penultimate" {
            return Ok(FeatureSource::Penultimate);
        }
        if let Some(p) = t.strip_prefix("layers-") {
            return Ok(FeatureSource::LayerMean { pool: pool(p)? });
        }
        if let Some(rest) = t.strip_prefix("layer") {
            let (n, p) = rest.split_once('-').ok_or_else(bad)?;
            let layer = n.parse::<usize>().map_err(|_| bad())?;
            return Ok(FeatureSource::Layer {
                layer,
                pool: pool(p)?,
            });
        }
        Err(bad())
    }
}

/// What scores an input: a function of the logits, or a detector on the penultimate features.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detector {
    Logit(Score),
    Feature(FeatureDetector),
}

impl Default for Detector {
    /// MSP, the paper's score.
    fn default() -> Self {
        Detector::Logit(Score::Msp)
    }
}

impl Detector {
    /// `msp`, `energy:2`, `mahalanobis`, ...: the name in results tables and directories.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// The logit score, when this is one.
    pub fn logit(&self) -> Option<Score> {
        match self {
            Detector::Logit(s) => Some(*s),
            Detector::Feature(_) => None,
        }
    }

    /// The default grid of `oe-text compare`: MSP (the paper), max logit, energy, Mahalanobis, k-NN.
    pub fn defaults() -> Vec<Detector> {
        vec![
            Detector::Logit(Score::Msp),
            Detector::Logit(Score::MaxLogit),
            Detector::Logit(Score::Energy { temperature: 1.0 }),
            Detector::Feature(FeatureDetector::Mahalanobis),
            Detector::Feature(FeatureDetector::Knn),
        ]
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detector::Logit(s) => write!(f, "{s}"),
            Detector::Feature(d) => f.write_str(d.name()),
        }
    }
}

impl FromStr for Detector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        if let Some(d) = FeatureDetector::all().into_iter().find(|d| d.name() == t) {
            return Ok(Detector::Feature(d));
        }
        s.parse::<Score>().map(Detector::Logit).map_err(|e| {
            format!("{e}, or a detector stored in the model directory: mahalanobis, rmd, knn, vim, react, odin")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Detector::defaults()
            .into_iter()
            .chain([Detector::Logit(Score::Energy { temperature: 2.5 })])
        {
            assert_eq!(d.to_string().parse::<Detector>().unwrap(), d);
        }
        assert_eq!(Detector::default().name(), "msp");
        let names: Vec<String> = Detector::defaults().iter().map(Detector::name).collect();
        assert_eq!(names, ["msp", "maxlogit", "energy", "mahalanobis", "knn"]);
        assert!("mahalanobis:3".parse::<Detector>().is_err());
        let e = "nope".parse::<Detector>().unwrap_err();
        assert!(e.contains("mahalanobis, rmd, knn"), "{e}");
        for d in FeatureDetector::all() {
            assert_eq!(d.name().parse::<Detector>().unwrap(), Detector::Feature(d));
        }
    }

    #[test]
    fn feature_sources_round_trip() {
        for s in [
            FeatureSource::Penultimate,
            FeatureSource::Layer {
                layer: 3,
                pool: Pool::Cls,
            },
            FeatureSource::Layer {
                layer: 0,
                pool: Pool::Mean,
            },
            FeatureSource::LayerMean { pool: Pool::Mean },
        ] {
            assert_eq!(s.to_string().parse::<FeatureSource>().unwrap(), s);
        }
        assert!("layer-cls".parse::<FeatureSource>().is_err());
        assert!("layer2-max".parse::<FeatureSource>().is_err());
    }
}
