"""Train a small, deterministic keyword-spotting DS-CNN on synthetic MFCC-like features.

The shape of the MLPerf Tiny / "Hello Edge" KWS models, scaled down: 49 frames x 10 MFCC coefficients x 1
channel in, 10 keyword classes out ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go").
No speech data is shipped; the features are synthetic and only MFCC-*like*:
  - each keyword is a fixed (seeded) sequence of three "phonemes" out of a pool of six shared by all
    keywords, each a spectral shape over the 10 coefficients (c0 is frame energy, higher coefficients have
    smaller spread, as in real MFCCs);
  - an utterance lasts 24..36 frames at a random offset in the 49-frame window, its phonemes blend linearly
    into each other; the frames outside it are silence (low c0, small coefficients);
  - per utterance a speaker/loudness factor scales the coefficients and shifts c0, then frame noise.
Values are clipped to [-8, 8] (a fixed front-end range, so the int8 input scale is 16/255 and one input LSB
is 0.0627 in feature units); the ball centres are clipped to [-7.75, 7.75] (four input LSBs inside).

Model: Conv2D(32, 10x4, stride 2)+BN+ReLU, three depthwise-separable blocks (DepthwiseConv2D 3x3+BN+ReLU,
Conv2D 1x1+BN+ReLU), average pool over the 25x5 map, Dense(10) **raw logits** (no softmax: see
train_pump_classifier.py for why a certificate on logits says more). BatchNorm is folded by the converter.

Outputs (run from the repo root: `.venv/bin/python configs/train_dscnn.py`):
  configs/models/dscnn.keras     logits model (6,442 parameters; test accuracy 0.93 on the synthetic data)
  configs/data/dscnn_samples.npy 96 held-out feature maps (96, 49, 10, 1) float32: the first three are the
                                 centres of the certified balls, all 96 calibrate the converter
Training is seeded and single-threaded with deterministic TF ops; it takes about 20 s on a CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

SEED = 20260602
HERE = Path(__file__).resolve().parent
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
FRAMES, COEFFS = 49, 10
CLIP = 8.0  # fixed front-end range of every feature
CENTER_MARGIN = 0.25  # ball centres at least four input LSBs (16/255 each) inside the range
HELD_OUT = 96
_COEFF_SPREAD = 3.0 / np.arange(1, COEFFS + 1)  # c0 ... c9: higher coefficients vary less


def phoneme_table(rng: np.random.Generator) -> np.ndarray:
    """(keywords, 3, COEFFS): each keyword's three phonemes, drawn from a pool of six spectral shapes, so
    keywords share phonemes (no two share all three in order) and differ in one or two of them."""
    pool = rng.normal(0.0, 1.0, (6, COEFFS)) * _COEFF_SPREAD
    pool[:, 0] = rng.uniform(1.0, 5.0, 6)  # c0: speech is louder than silence
    sequences: list[tuple[int, ...]] = []
    while len(sequences) < len(KEYWORDS):
        seq = tuple(int(k) for k in rng.choice(6, 3, replace=False))
        if seq not in sequences:
            sequences.append(seq)
    return pool[np.array(sequences)]


def synthesize(n: int, table: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n feature maps (n, FRAMES, COEFFS, 1) float32 in [-CLIP, CLIP] and their keyword labels."""
    labels = rng.integers(0, len(KEYWORDS), n)
    x = np.empty((n, FRAMES, COEFFS))
    for i, label in enumerate(labels):
        frames = np.zeros((FRAMES, COEFFS))
        frames[:, 0] = rng.uniform(-7.5, -5.0)  # silence
        length = int(rng.integers(24, 37))
        start = int(rng.integers(0, FRAMES - length + 1))
        # Phoneme k is centred at fraction (k + 0.5) / 3 of the utterance; frames in between blend linearly.
        pos = np.clip((np.arange(length) + 0.5) / length * 3.0 - 0.5, 0.0, 2.0)
        low = np.floor(pos).astype(int).clip(0, 1)
        w = (pos - low)[:, None]
        speech = (1.0 - w) * table[label, low] + w * table[label, low + 1]
        loudness = rng.normal(0.0, 0.8)
        speech = speech * rng.uniform(0.5, 1.5) + np.r_[loudness, np.zeros(COEFFS - 1)]
        frames[start:start + length] = speech
        x[i] = frames + rng.normal(0.0, 3.0, (FRAMES, COEFFS)) * np.r_[1.0, _COEFF_SPREAD[1:] / 2]
    return np.clip(x, -CLIP, CLIP)[..., None].astype(np.float32), labels


def build(keras):  # type: ignore[no-untyped-def]
    layers = keras.layers
    inputs = keras.Input((FRAMES, COEFFS, 1), name="mfcc")
    h = layers.Conv2D(32, (10, 4), strides=(2, 2), padding="same", use_bias=False, name="conv")(inputs)
    h = layers.ReLU(name="conv_relu")(layers.BatchNormalization(name="conv_bn")(h))
    for b in range(1, 4):
        h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{b}")(h)
        h = layers.ReLU(name=f"dw{b}_relu")(layers.BatchNormalization(name=f"dw{b}_bn")(h))
        h = layers.Conv2D(32, 1, use_bias=False, name=f"pw{b}")(h)
        h = layers.ReLU(name=f"pw{b}_relu")(layers.BatchNormalization(name=f"pw{b}_bn")(h))
    h = layers.AveragePooling2D(pool_size=(25, 5), name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    logits = layers.Dense(len(KEYWORDS), name="logits")(h)
    return keras.Model(inputs, logits, name="dscnn")


def main() -> int:
    import keras
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(SEED)

    rng = np.random.default_rng(SEED)
    table = phoneme_table(rng)
    x_train, y_train = synthesize(3000, table, rng)
    x_test, y_test = synthesize(600, table, rng)

    model = build(keras)
    model.compile(optimizer=keras.optimizers.Adam(0.005),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=12, batch_size=64, shuffle=True, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    samples = x_test[:HELD_OUT].copy()
    samples[:3] = np.clip(samples[:3], -CLIP + CENTER_MARGIN, CLIP - CENTER_MARGIN)
    (HERE / "models").mkdir(exist_ok=True)
    (HERE / "data").mkdir(exist_ok=True)
    export = build(keras)  # the same weights without the optimizer's state: a third of the file size
    export.set_weights(model.get_weights())
    export.save(HERE / "models" / "dscnn.keras")
    np.save(HERE / "data" / "dscnn_samples.npy", samples)
    sys.stdout.write(f"test accuracy {accuracy:.4f} on {len(y_test)} samples; params {model.count_params()}; "
                     f"held-out range [{samples.min():.2f}, {samples.max():.2f}]\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
