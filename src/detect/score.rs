//! Anomaly scores from classifier logits, shared by text and vision.
//!
//! Convention: **higher always means more anomalous** (more likely out-of-distribution). Every
//! function maps logits `[n, k]` to scores `[n]` (float32 on the logits' device).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::{Kind, Tensor};

/// A logit-based detector. Serialises as e.g. `{"type":"energy","temperature":1.0}`; parses from
/// `msp`, `maxlogit`, `energy`, `energy:T`, `entropy`, `xent-uniform`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Score {
    /// Negative maximum softmax probability `−max_c softmax(z)_c` (the paper's detector).
    #[default]
    Msp,
    /// Negative maximum logit `−max_c z_c`.
    MaxLogit,
    /// Energy `−T · logsumexp(z / T)` (Liu et al. 2020).
    Energy { temperature: f64 },
    /// Entropy of the softmax `−Σ_c p_c log p_c`.
    Entropy,
    /// Negative cross-entropy to uniform `mean_c z_c − logsumexp(z)` (the paper's Appendix E score).
    XentUniform,
}

impl Score {
    /// Every detector, with default parameters, in a stable order.
    pub fn all() -> Vec<Score> {
        vec![
            Score::Msp,
            Score::MaxLogit,
            Score::Energy { temperature: 1.0 },
            Score::Entropy,
            Score::XentUniform,
        ]
    }

    /// Anomaly scores. `logits`: `[n, k]` → `[n]`, higher = more anomalous.
    pub fn compute(&self, logits: &Tensor) -> Tensor {
        let z = logits.to_kind(Kind::Float);
        match *self {
            Score::Msp => -z.softmax(-1, Kind::Float).amax([-1i64].as_slice(), false),
            Score::MaxLogit => -z.amax([-1i64].as_slice(), false),
            Score::Energy { temperature } => crate::loss::energy(&z, temperature),
            Score::Entropy => {
                let logp = z.log_softmax(-1, Kind::Float);
                -(logp.exp() * &logp).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
            }
            Score::XentUniform => {
                z.mean_dim([-1i64].as_slice(), false, Kind::Float)
                    - z.logsumexp([-1i64].as_slice(), false)
            }
        }
    }

    /// Scores as a `Vec<f64>` (moves to CPU). `logits`: `[n, k]` → `n` scores; a tensor that cannot
    /// be read back is an error (it used to give an empty vector).
    pub fn compute_vec(&self, logits: &Tensor) -> crate::error::Result<Vec<f64>> {
        let s = self
            .compute(logits)
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous();
        Vec::<f64>::try_from(&s).map_err(crate::error::OeError::Torch)
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Score::Msp => write!(f, "msp"),
            Score::MaxLogit => write!(f, "maxlogit"),
            Score::Energy { temperature } if *temperature == 1.0 => write!(f, "energy"),
            Score::Energy { temperature } => write!(f, "energy:{temperature}"),
            Score::Entropy => write!(f, "entropy"),
            Score::XentUniform => write!(f, "xent-uniform"),
        }
    }
}

impl FromStr for Score {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, arg) = match lower.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (lower.as_str(), None),
        };
        let no_arg = |v: Score| match arg {
            None => Ok(v),
            Some(_) => Err(format!("score `{name}` takes no parameter")),
        };
        match name {
            "msp" => no_arg(Score::Msp),
            "maxlogit" | "max-logit" => no_arg(Score::MaxLogit),
            "entropy" => no_arg(Score::Entropy),
            "xent-uniform" | "xent" => no_arg(Score::XentUniform),
            "energy" => {
                let temperature = match arg {
                    None => 1.0,
                    Some(a) => a
                        .parse::<f64>()
                        .ok()
                        .filter(|t| *t > 0.0 && t.is_finite())
                        .ok_or_else(|| format!("energy temperature must be a positive number, got `{a}`"))?,
                };
                Ok(Score::Energy { temperature })
            }
            _ => Err(format!(
                "unknown score `{s}`; expected one of msp, maxlogit, energy[:T], entropy, xent-uniform"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Tensor {
        // Row 0 confident, row 1 uniform.
        Tensor::from_slice(&[4.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).view([2, 3])
    }

    // Reference values by hand (Python math, float64):
    //   row [4,0,0]: lse = 4 + ln(1 + 2e^-4) = 4.0359762997; softmax max = e^4/(e^4+2) = 0.9646631559
    //                entropy = 0.1773236759 ; mean - lse = 1.3333333 - 4.0359763 = -2.7026429664
    //   row [1,1,1]: lse = 1 + ln 3 = 2.0986122887; softmax max = 1/3; entropy = ln 3 = 1.0986122887
    //                mean - lse = -1.0986122887
    #[test]
    fn scores_match_hand_values() {
        let cases: Vec<(Score, [f64; 2])> = vec![
            (Score::Msp, [-0.964_663_155_9, -1.0 / 3.0]),
            (Score::MaxLogit, [-4.0, -1.0]),
            (
                Score::Energy { temperature: 1.0 },
                [-4.035_976_299_7, -2.098_612_288_7],
            ),
            (Score::Entropy, [0.177_323_675_9, 1.098_612_288_7]),
            (Score::XentUniform, [-2.702_642_966_4, -1.098_612_288_7]),
        ];
        for (score, want) in cases {
            let got = score.compute_vec(&logits()).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{score}: {g} vs {w}");
            }
            // Higher = more anomalous: the uniform row scores above the confident row (except max logit
            // and energy, which also depend on scale; here the uniform row has smaller logits too).
            assert!(
                got[1] > got[0],
                "{score} does not rank the uniform row as more anomalous"
            );
        }
    }

    #[test]
    fn energy_temperature_scales() {
        let s = Score::Energy { temperature: 2.0 }
            .compute_vec(&logits())
            .unwrap();
        // -2 * lse([2,0,0]) = -2 * (2 + ln(1 + 2e^-2)) = -4.4790895324 (Python math)
        assert!((s[0] + 2.0 * (2.0 + (1.0 + 2.0 * (-2f64).exp()).ln())).abs() < 1e-5);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in Score::all()
            .into_iter()
            .chain([Score::Energy { temperature: 0.5 }])
        {
            assert_eq!(s.to_string().parse::<Score>().unwrap(), s);
        }
        assert!("energy:-1".parse::<Score>().is_err());
        assert!("msp:3".parse::<Score>().is_err());
        assert!("foo".parse::<Score>().is_err());
    }
}
