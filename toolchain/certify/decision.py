"""Top-1 decision: does the int8 model pick the same class as the float model everywhere in a box?

Certified when one class c wins on both sides over the whole box: the certified lower bounds of
y_c - y_j (float) and ŷ_c - ŷ_j (int8, dequantized) are positive for every j != c. Refuted when a
sampled input gives different argmaxes. The int8 side is the certified tensor: when the model ends
in SOFTMAX, the logits before it (the int8 softmax is monotone, but it can tie two classes, and a
tie resolves to the lower index on the device).
"""

from __future__ import annotations

import numpy as np

from toolchain.certify import falsify as F
from toolchain.certify.region import Box
from toolchain.certify.symbolic import Analysis, upper_bounds
from toolchain.merge import MergedNet
from toolchain.tflite.prepare import PreparedGraph


def margins(net: MergedNet, box: Box, analysis: Analysis, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Certified lower bounds of y_c - y_j and ŷ_c - ŷ_j over the box, for every j (j = c gives 0).
    `analysis`: the differential analysis of this box alone."""
    K = net.output
    n = net.nodes[K].size
    rows = np.eye(n)
    rows[:, c] -= 1.0  # row j: y_j - y_c; its upper bound u gives y_c - y_j >= -u
    zero = np.zeros_like(rows)
    out = []
    for Lf, Lq in ((rows, zero), (zero, rows)):
        out.append(-upper_bounds(net, analysis, K, Lf, Lq)[0])
    float_margin, int8_margin = out
    float_margin[c] = int8_margin[c] = 0.0
    return float_margin, int8_margin


def top1(net: MergedNet, pg: PreparedGraph, box: Box, analysis: Analysis, samples: int = 500,
         seed: int = 0) -> dict:
    """{"kind": "top1", "certified", "refuted", "class", margins, and a counterexample if found}."""
    rng = np.random.default_rng(seed)
    center = box.center[None]
    c = int(np.argmax(net.forward_float(center)[net.output][0]))
    fm, qm = margins(net, box, analysis, c)
    others = np.arange(net.n_outputs) != c
    certified = bool(np.all(fm[others] > 0) and np.all(qm[others] > 0))
    result = {
        "kind": "top1",
        "class": c,
        "certified": certified,
        "refuted": False,
        "float_margin": float(fm[others].min(initial=np.inf)),
        "int8_margin": float(qm[others].min(initial=np.inf)),
        "tensor": net.certified_tensor,
    }
    if certified:
        return result
    xs = np.vstack([center, box.sample(samples // 2, rng), box.corners(samples // 2, rng)])
    y = net.forward_float(xs)[net.output]
    r = F.run(pg, F.quantized_input(net, pg, xs), until=net.int8_output_tensor)
    q = r.output.reshape(len(xs), -1)
    diff = np.argmax(y, axis=1) != np.argmax(q, axis=1)  # np.argmax takes the first maximum, as the device
    if diff.any():
        i = int(np.argmax(diff))
        result.update(refuted=True, counterexample=xs[i].tolist(),
                      float_class=int(np.argmax(y[i])), int8_class=int(np.argmax(q[i])))
    return result
