"""Train a small, deterministic pump-condition classifier on synthetic vibration features.

Classes: 0 normal, 1 cavitation, 2 bearing wear, 3 misalignment. Eight features per sample, as a
condition-monitoring node would compute from one accelerometer window:
  0 RMS, 1 peak, 2 crest factor, 3 kurtosis, 4 band energy 0–1 kHz, 5 band energy 1–5 kHz,
  6 band energy 5–10 kHz, 7 amplitude at 2× running speed.
Each class shifts some features (cavitation: broadband high-frequency energy; bearing wear: impulsive,
so kurtosis, crest factor and the high band rise; misalignment: a strong 2× component and low-band energy),
with enough overlap that the problem is not trivial.

**Input region: the box [-1, 1]^8.** Raw features are log-scaled, then mapped linearly with fixed
constants (FEATURE_LOW/FEATURE_HIGH below, the 0.5 % / 99.5 % quantiles of a reference draw) and
clipped to [-1, 1], so every input the device sees lies in that box and a certificate over it covers them all.

Model: Dense 8→16→16→4, ReLU, ending in **raw logits**. A certificate on logits is more informative than
one on softmax outputs: an int8 softmax output has a scale of 1/256, so its rounding alone dominates any
bound, and a saturated softmax hides large logit errors; the class decision (argmax) is the same on both.
A softmax variant with the same weights is saved too, for comparing the two kinds of certificate.

Outputs (run from the repo root: `.venv/bin/python configs/train_pump_classifier.py`):
  configs/models/pump_classifier.keras          logits model (< 100 KB)
  configs/models/pump_classifier_softmax.keras  same weights + Softmax
  configs/data/pump_samples.npy                 256 held-out feature vectors, float32, in [-1, 1]^8
Training is seeded and single-threaded with deterministic TF ops; it takes a few seconds on a CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

SEED = 20240601
HERE = Path(__file__).resolve().parent
CLASSES = ("normal", "cavitation", "bearing_wear", "misalignment")
FEATURES = ("rms", "peak", "crest_factor", "kurtosis", "band_0_1k", "band_1_5k", "band_5_10k", "amp_2x")

# Per class: mean of log(feature) (natural log of RMS in g, kurtosis, band energies in g², ...).
_LOG_MEANS = np.array([
    #  rms   peak  crest  kurt  b0-1k  b1-5k  b5-10k  2x
    [-1.6, -0.5, 1.10, 1.10, -3.0, -3.6, -4.6, -3.2],  # normal
    [-1.1, 0.1, 1.20, 1.30, -2.8, -2.5, -2.9, -3.1],  # cavitation
    [-1.3, 0.5, 1.75, 1.95, -2.9, -3.1, -3.2, -3.1],  # bearing wear
    [-1.0, 0.0, 1.05, 1.10, -2.1, -3.4, -4.4, -1.9],  # misalignment
])
_LOG_STD = np.array([0.35, 0.35, 0.20, 0.30, 0.45, 0.45, 0.55, 0.50])
# Normalization constants (log domain): fixed, so the [-1, 1]^8 box means the same thing forever.
FEATURE_LOW = np.array([-2.5, -1.4, 0.65, 0.45, -4.1, -4.7, -6.0, -4.5])
FEATURE_HIGH = np.array([-0.1, 1.4, 2.3, 2.7, -0.9, -1.4, -1.7, -0.6])


def synthesize(n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw log-features with a shared machine-load factor (correlates RMS, peak and band energies)."""
    xs, ys = [], []
    for c, mean in enumerate(_LOG_MEANS):
        load = rng.normal(0.0, 0.25, (n_per_class, 1))
        coupling = np.array([1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 1.0])
        xs.append(mean + load * coupling + rng.normal(0.0, 1.0, (n_per_class, 8)) * _LOG_STD)
        ys.append(np.full(n_per_class, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order], y[order]


def normalize(log_features: np.ndarray) -> np.ndarray:
    """Map log-features linearly onto [-1, 1] with the fixed constants, clipping the tails."""
    scaled = 2.0 * (log_features - FEATURE_LOW) / (FEATURE_HIGH - FEATURE_LOW) - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def main() -> int:
    import keras
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(SEED)

    rng = np.random.default_rng(SEED)
    x_train, y_train = synthesize(1500, rng)
    x_test, y_test = synthesize(400, rng)
    x_train, x_test = normalize(x_train), normalize(x_test)

    inputs = keras.Input((8,), name="features")
    h = keras.layers.Dense(16, activation="relu", name="hidden1")(inputs)
    h = keras.layers.Dense(16, activation="relu", name="hidden2")(h)
    logits = keras.layers.Dense(len(CLASSES), name="logits")(h)
    model = keras.Model(inputs, logits, name="pump_classifier")
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=40, batch_size=64, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    softmax = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits),
                          name="pump_classifier_softmax")
    (HERE / "models").mkdir(exist_ok=True)
    (HERE / "data").mkdir(exist_ok=True)
    model.save(HERE / "models" / "pump_classifier.keras")
    softmax.save(HERE / "models" / "pump_classifier_softmax.keras")
    np.save(HERE / "data" / "pump_samples.npy", x_test[:256])
    sys.stdout.write(f"test accuracy {accuracy:.4f} on {len(y_test)} samples; "
                     f"params {model.count_params()}; input box [-1, 1]^8\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
