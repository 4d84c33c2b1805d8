"""Every tuning knob of the certify engines, in one frozen settings object.

A certificate is a function of (config, models, target, qassure version, settings), never of the
machine: every search here is bounded by a deterministic *work budget* (boxes, solver nodes,
samples), recorded in the certificate. `time_limit` is only a safety net: when it bites before
the work budget is spent, the certificate says so and its verdict is `unknown`.

Soundness margins are not knobs: they live in `toolchain.margins`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from toolchain.errors import QassureError

BRANCHINGS = ("input", "neuron", "auto")  # what branch and bound may split
SLOPES = ("fixed", "optimised", "auto")  # the float relaxations' slopes in a search's boxes


@dataclass(frozen=True)
class Settings:
    # --- work budget per region (deterministic; recorded in the certificate) ---
    max_boxes: int = 4096  # boxes bounded by branch and bound (every child box counts)
    max_work: float = 2.0**38  # multiply-adds branch and bound may spend (bounds, cell enumerations)
    round_boxes: int = 32  # worst boxes refined per round of branch and bound
    chunk_boxes: int = 32  # boxes bounded together by one job (one batched pass)
    falsify_samples: int = 1000  # uniform + vertex samples of the falsifier
    falsify_steps: int = 40  # local-search steps per searched output
    falsify_outputs: int = 8  # outputs whose incumbents are searched locally
    edge_steps: int = 20  # cell-edge attack steps per start
    edge_starts: int = 14  # random starts of the cell-edge attack per output and sign
    falsify_work: float = 2.0**35  # multiply-adds the falsifier may spend (big networks: fewer samples/steps)
    milp_nodes: int = 2000  # HiGHS branch-and-bound nodes per MILP solve
    milp_leaf_nodes: int = 200  # ... per solve on a branch-and-bound leaf
    # --- when to stop early (the answer is decided) ---
    target_ratio: float = 1.2  # auto stops once bound <= target_ratio x witness, where the witness
    #   already refutes the budget (budget 0: every search); below it the budget still decides
    # --- search strategy ---
    cell_edge_cells: float = 8.0  # cut on an input-cell edge when a side spans fewer cells
    enum_cells: int = 2**17  # a box meeting at most this many input cells is enumerated cell by cell
    enum_bytes: int = 2**20  # ... while its device outputs (int8 per output) fit in this many bytes
    split_trials: int = 1  # sides tried per split (the cut whose worse child is lowest is kept)
    split_order: str = "width"  # split the widest side first, or ("influence") the largest share of the bound
    branching: str = "input"  # split input boxes, neuron phases ("neuron"), or ("auto") by measured progress
    branching_explore: int = 8  # auto: both kinds tried on each box every this many rounds (and the first 2)
    milp_depth_per_input: int = 3  # MILP on leaves at least this many splits per input deep ...
    milp_stall: float = 0.99  # ... whose last split stalled (bound >= this x its parent's)
    milp_max_neurons: int = 2000  # networks larger than this get no MILP
    milp_rel_gap: float = 1e-2  # a MILP solve stops once bound and incumbent are this close
    milp_enum_cells: int = 2**19  # MILP boxes meeting at most this many cells get exact device ranges
    milp_cell_point_entries: int = 2**21  # ... and cell-bound starting points while cells x outputs fit
    symbolic_work_root: float = 2.0**33  # multiply-adds per box for symbolic node ranges: the region itself
    #   (2^33, root pass on 2 threads, 3 balls: ResNet-8 1.22e6 -> 4.63e5 in 19 s, DS-CNN 148.3 -> 134.9
    #   in 10.5 s, MobileNet equal at 64.1 in 14 s, against 46 / 22 / 16 s at 2^32 before this budget)
    symbolic_work_box: float = 2.0**28  # ... each box of a search (past it: forward ranges, output rows only)
    slopes: str = "auto"  # float slopes in a search's boxes: fixed, optimised (alpha.py), or ("auto") by
    #   measured progress per multiply-add (both tried on a few boxes every branching_explore rounds)
    alpha_steps: int = 20  # gradient steps on the slopes of each optimised row (alpha.float_rows_bound)
    alpha_warm_steps: int = 8  # ... where the rows start from their parent box's slopes (warm start)
    alpha_work_root: float = 2.0**31  # multiply-adds per box for optimised float ranges: the region itself
    alpha_work_box: float = 2.0**28  # ... each box of a search where slopes are optimised
    # --- memory (no effect on results) ---
    block_entries: int = 2**23  # float64 entries of one block of objective rows (boxes x rows x widest layer)
    cell_chunk: int = 8192  # input cells per executor call
    memory_bytes: float = 3 * 2.0**30  # pool workers are capped so main process + workers fit in this
    batch_neurons: int = 2**21  # boxes x neurons of one batched pass (big nets: fewer than chunk_boxes a job;
    #   recorded: a batch's shape can change the last bits of its float sums)
    leaf_ranges_bytes: float = 2.0**30  # open boxes' stored node ranges; past it the least promising boxes
    #   hand their children the region's ranges instead (sound, looser; recorded: it can change a bound)
    # --- safety net and randomness ---
    time_limit: float = 600.0  # seconds per certify call; when it bites, the verdict is unknown
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split_order not in ("influence", "width"):
            raise QassureError(f"setting split_order must be influence or width, not {self.split_order!r}")
        if self.branching not in BRANCHINGS:
            raise QassureError(f"setting branching must be auto, input or neuron, not {self.branching!r}")
        if self.slopes not in SLOPES:
            raise QassureError(f"setting slopes must be auto, fixed or optimised, not {self.slopes!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "seed":
                continue
            if isinstance(v, (int, float)) and not v > 0:
                raise QassureError(f"setting {f.name} must be positive, not {v!r}")

    def replace(self, **changes: Any) -> Settings:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise QassureError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def work_budget(self) -> dict[str, Any]:
        """The deterministic budget a certificate records (what bounded the search)."""
        keys = ("max_boxes", "max_work", "round_boxes", "chunk_boxes", "falsify_samples", "falsify_steps",
                "falsify_outputs", "edge_steps", "edge_starts", "falsify_work", "milp_nodes",
                "milp_leaf_nodes", "symbolic_work_root", "symbolic_work_box", "alpha_steps",
                "alpha_warm_steps", "alpha_work_root", "alpha_work_box", "batch_neurons", "leaf_ranges_bytes",
                "branching", "slopes", "seed")
        return {k: getattr(self, k) for k in keys}


DEFAULT = Settings()
