//! Everything that turns model outputs into an anomaly score (**higher = more anomalous**):
//! [`Detector`], the closed set an evaluation, a comparison or a scoring run names, which is either a
//! logit score ([`score`]: MSP, max logit, energy, entropy, cross-entropy to uniform) or a
//! feature-space detector fitted on in-distribution training features ([`feature`]: Mahalanobis,
//! k-NN). Being one enum, an evaluation cannot name a logit score and a feature detector at once.

pub mod conformal;
pub mod feature;
pub mod score;

pub use score::Score;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A feature-space detector (fitted on in-distribution training features only; see [`feature`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureDetector {
    /// Minimum class-conditional Mahalanobis distance with a shared covariance (Lee et al. 2018).
    Mahalanobis,
    /// Distance to the k-th nearest normalised training feature (Sun et al. 2022).
    Knn,
}

impl FeatureDetector {
    pub fn name(self) -> &'static str {
        match self {
            FeatureDetector::Mahalanobis => "mahalanobis",
            FeatureDetector::Knn => "knn",
        }
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
        match s.trim().to_ascii_lowercase().as_str() {
            "mahalanobis" => Ok(Detector::Feature(FeatureDetector::Mahalanobis)),
            "knn" => Ok(Detector::Feature(FeatureDetector::Knn)),
            _ => s
                .parse::<Score>()
                .map(Detector::Logit)
                .map_err(|e| format!("{e}, or a feature detector: mahalanobis, knn")),
        }
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
        assert!(e.contains("mahalanobis, knn"), "{e}");
    }
}
