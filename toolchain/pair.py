"""The model pair: the float and the int8 .tflite files, read, prepared and merged once per command.

One float model. What a certificate bounds is |f(x) − f_q(x)| where f is the float32 TFLite graph
evaluated in real (float64) arithmetic: the float side of the merged network
(`MergedNet.forward_float`), the same function the certify engines bound and the falsifier
samples. f_q is the int8 graph run by the bit-exact executor with the target's rounding, fed what
the device is fed (`falsify.quantized_input`). Every check that measures an error (the gate's
sampled errors and empirical metrics, `verify`'s witness replay and sampling) evaluates this pair
through `falsify.errors`, so a measured error and a certified bound are about the same two
functions. The desktop LiteRT float32 interpreter is not a second float model: it is only run to
*measure and report* how far the float32 runtime lies from that reference (`float32_runtime_gap`),
as the quantize step reports how far Keras lies from the float .tflite.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from toolchain import ops
from toolchain.arith import Rounding
from toolchain.certify import falsify
from toolchain.certify.region import Box
from toolchain.merge import MergedNet, build
from toolchain.ops.base import Role
from toolchain.tflite import ir, prepare, reader
from toolchain.tflite.pair_check import validate_pair
from toolchain.tflite.prepare import PreparedGraph

_VALUES_PER_BATCH = 2**24  # float64 values of one evaluation batch (128 MiB)


@dataclass(frozen=True, eq=False)
class ModelPair:
    """Both graphs of one conversion, the int8 one prepared for the target's rounding, and their bytes."""

    float_path: Path
    int8_path: Path
    float_bytes: bytes  # what was parsed, hashed, and is copied into an artifact
    int8_bytes: bytes
    float_graph: ir.Graph
    int8_graph: ir.Graph
    prepared: PreparedGraph  # int8 graph with the target's M, shift (the executor's and the engines')
    input_interface: str  # "float" | "int8": what the device receives

    @cached_property
    def float_sha256(self) -> str:
        return hashlib.sha256(self.float_bytes).hexdigest()

    @cached_property
    def int8_sha256(self) -> str:
        return hashlib.sha256(self.int8_bytes).hexdigest()

    @cached_property
    def net(self) -> MergedNet:
        """The merged network (output f − f_q), built on first use; QassureError if the graphs do not pair."""
        return build(self.float_graph, self.prepared, self.input_interface)

    def device_input(self, xs: np.ndarray) -> np.ndarray:
        """What the int8 graph's input receives for float inputs xs (B, n), shaped (B, *input shape)."""
        q = falsify.quantized_input(self.net, self.prepared, np.atleast_2d(np.asarray(xs, dtype=np.float64)))
        return q.reshape(len(q), *self.int8_graph.input.shape)

    def on_input_grid(self, xs: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """For `input_interface: int8`, xs moved to the int8 input grid inside the box (as the engines
        and the falsifier do: the device can only receive those values); otherwise xs unchanged."""
        if self.input_interface != "int8":
            return xs
        return falsify.snap_to_input_grid(self.net, np.asarray(xs, dtype=np.float64), Box(low, high))

    def reference(self, xs: np.ndarray) -> np.ndarray:
        """f(x), the float reference on the certified tensor, for a batch xs (B, n): (B, k) float64."""
        return self._batched(lambda x: self.net.forward_float(x)[self.net.output], xs)

    def errors(self, xs: np.ndarray) -> np.ndarray:
        """f(x) − f_q(x) on the certified tensor for a batch xs (B, n): (B, k) float64."""
        return self._batched(lambda x: falsify.errors(self.net, self.prepared, x), xs)

    def evaluate(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f, f_q) on the certified tensor, each (B, k) float64 (f_q = f − (f − f_q))."""
        f = self.reference(xs)
        return f, f - self.errors(xs)

    def _batched(self, fn: Callable[[np.ndarray], np.ndarray], xs: np.ndarray) -> np.ndarray:
        """fn over xs in batches: the float pass keeps every node's values, so a batch holds at most
        _VALUES_PER_BATCH of them (a 96x96x3 conv net would otherwise need gigabytes for 1000 inputs)."""
        xs = np.atleast_2d(np.asarray(xs, dtype=np.float64))
        values = sum(node.size for node in self.net.nodes)
        step = int(np.clip(_VALUES_PER_BATCH // values, 1, 1024))
        parts = [fn(xs[i:i + step]) for i in range(0, len(xs), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.net.n_outputs))


def load_pair(float_path: Path | str, int8_path: Path | str, rounding: Rounding,
              input_interface: str = "float") -> ModelPair:
    """Read both .tflite files and prepare the int8 graph, once; ModelError naming a bad file, or
    saying how the two files fail to be a float graph and the full-int8 graph of the same model
    (tflite.pair_check)."""
    float_path, int8_path = Path(float_path), Path(int8_path)
    float_graph = reader.read_model(float_path)  # validates the file (one ModelError line) and parses it
    int8_graph = reader.read_model(int8_path)
    validate_pair(float_graph, int8_graph)
    # the bytes for the hashes and the artifact: read again right after the parse (not parsed again)
    return ModelPair(float_path, int8_path, float_path.read_bytes(), int8_path.read_bytes(), float_graph,
                     int8_graph, prepare.prepare(int8_graph, rounding), input_interface)


def _float_certified_tensor(pair: ModelPair) -> int:
    """The float graph's tensor holding what the certificate bounds: the input of a final op the merge
    skips (Role.TERMINAL: SOFTMAX, LOGISTIC, TANH; as `merge.build` chooses on the int8 side), else the
    float graph's output."""
    certified = pair.net.int8_output_tensor
    skipped = [op.opcode for op in pair.int8_graph.operators if op.inputs and op.inputs[0] == certified
               and ops.lookup(op.opcode, op.index).role is Role.TERMINAL]
    if skipped:
        last = [op for op in pair.float_graph.operators if op.opcode == skipped[-1]]
        return last[-1].inputs[0]
    return pair.float_graph.outputs[0]


def float32_runtime_gap(pair: ModelPair, xs: np.ndarray) -> float:
    """max |float32 LiteRT runtime − float64 reference| on the certified tensor over xs (B, n).

    A measurement for the report, not part of any bound: the LiteRT interpreter (reference kernels,
    no delegates) runs the float .tflite bytes in float32.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from toolchain.oracle import quiet_fds

    tensor = _float_certified_tensor(pair)
    inner = tensor not in pair.float_graph.outputs
    with quiet_fds():
        it = Interpreter(model_content=pair.float_bytes, num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                         experimental_preserve_all_tensors=inner)
        it.allocate_tensors()
    inp = it.get_input_details()[0]
    xs = np.atleast_2d(np.asarray(xs, dtype=np.float32))
    runtime = []
    for x in xs:
        it.set_tensor(inp["index"], x.reshape(inp["shape"]))
        it.invoke()
        runtime.append(np.array(it.get_tensor(tensor), dtype=np.float64).reshape(-1))
    if not runtime:
        return 0.0
    return float(np.max(np.abs(np.stack(runtime) - pair.reference(xs))))
