"""Every soundness margin of qassure, in one place, each with the reason it is sound.

A margin only ever *widens* what the engines assume the device can do (a larger rounding term, a
wider rounding cell, a larger certified bound), so a margin that is too large costs tightness,
never soundness. An auditor reads this file to see every place where exact arithmetic meets
floating point. Tuning knobs (how much work a search does) are not here: see
`toolchain.certify.settings`.
"""

from __future__ import annotations

import numpy as np

# --- the model of the device (merge) -----------------------------------------------------------

# Relative slack on every node's rounding term (noise = s_out * rho * (1 + FP_SLACK)). The merged
# network holds the device's multipliers as float64 products s_out * M * 2^(e-31) / s_in, each a
# few float64 roundings (relative error < 1e-15); 1e-9 covers them by six orders of magnitude.
FP_SLACK = 1e-9

# LSBs added to the input quantization's half-LSB rounding for float32 sensor values. The device
# computes roundf(x / s0) on a float32 x: x itself carries a relative error 2^-24 and so does the
# quotient. Only inputs within the int8 range matter (|x / s0| <= 256 LSB; beyond it the clamp
# decides), so together they move x / s0 by less than 256 * 2^-23 = 3.1e-5 LSB < 1e-4.
INPUT_FLOAT_SLACK = 1e-4

# Cells of margin on each side of an input rounding cell's edges. A box is "within one cell" of
# an input, and a cell is enumerated as [k - 1/2 - CELL_TOL, k + 1/2 + CELL_TOL] * s0, with twice
# the float32 slack above: every float input then lies in the cell of the integer the device
# picks, whatever its float32 rounding and its rounding of ties.
CELL_TOL = 2 * INPUT_FLOAT_SLACK

# Tolerance (in LSBs) when a float range is turned into the integers it may hold (ceil / floor
# of a value that is an integer up to float64 rounding of a handful of operations): widens the
# integer range by one value where the float computation sits within 1e-9 LSB of an integer.
GRID_TOL = 1e-9

# --- the engines' own floating point --------------------------------------------------------------

# Every bound an engine computes in float64 (sums of up to a few hundred thousand products, each
# with relative error 2^-53; the accumulated error stays below 1e-10 relative for any layer we
# accept) is multiplied by (1 + BOUND_REL_MARGIN) and then raised by BOUND_ABS_MARGIN, far below
# any int8 LSB (>= 1e-7 in practice). Applied once, to the final bound (`with_margin`).
BOUND_REL_MARGIN = 1e-7
BOUND_ABS_MARGIN = 1e-9

# A neuron-branched box (its constraint carried as a tightened range) is dropped as holding no input
# only where a range comes out reversed by more than the float64 rounding of the sums that made it:
# EMPTY_REL of the range's own size (ten times BOUND_REL_MARGIN, which covers the same sums) plus
# EMPTY_LSB of the node's int8 LSB. A smaller reversal is rounding and the box is kept (a kept
# empty box only costs tightness; a dropped box that holds an input would lose its error).
EMPTY_REL = 10 * BOUND_REL_MARGIN
EMPTY_LSB = 1e-6

# --- the MILP engine (HiGHS) ----------------------------------------------------------------------

# Tolerances set on HiGHS; the margins below assume them.
MILP_PRIMAL_TOL = 1e-7
MILP_DUAL_TOL = 1e-7
MILP_FEAS_TOL = 1e-6
# HiGHS accepts a point or prunes a node within its tolerances (rows scaled to O(1) LSB units,
# objective in output LSBs). The margin added to a MILP bound (real units) is
# max(MILP_ABS_MARGIN, MILP_LSB_MARGIN * s_K) + MILP_REL_MARGIN * |bound|: at least 100x the MIP
# feasibility tolerance in output LSBs (covering "node bound within feastol of the incumbent"
# pruning and LP tolerance effects on an objective of O(1..100) LSBs), and never below 1e-5.
MILP_ABS_MARGIN = 1e-5
MILP_LSB_MARGIN = 1e-4
MILP_REL_MARGIN = 1e-6
# Slack (in LSBs) when integer ranges of rounded values are derived from float ranges in the
# MILP: a float bound within 1e-6 LSB of an integer keeps that integer (only ever widens).
MILP_GRID_TOL = 1e-6

# --- checks against sampled errors (not part of a bound) ----------------------------------------------

# A sampled error counts as above a certified bound only beyond this (absolute + relative to the
# bound): the sampled float side is the same float64 reference, so 1e-6 is generous. Used by the
# gate's dense sampling and by verify-certificate; a tolerance here can hide a violation smaller
# than 1e-6 of the bound, never invent one.
SAMPLED_ABS_TOL = 1e-6
SAMPLED_REL_TOL = 1e-6


def with_margin(upper: np.ndarray) -> np.ndarray:
    """A bound computed in float64 made sound against that computation's own rounding."""
    return np.asarray(upper) * (1 + BOUND_REL_MARGIN) + BOUND_ABS_MARGIN


def milp_margin(bound: float, output_scale: float) -> float:
    """The margin added to a MILP bound (real units) for HiGHS's tolerances (see above)."""
    return max(MILP_ABS_MARGIN, MILP_LSB_MARGIN * output_scale) + MILP_REL_MARGIN * abs(bound)


def sampled_tolerance(upper: np.ndarray | float) -> np.ndarray:
    """How far above a certified bound a sampled error may lie before it is a violation."""
    return SAMPLED_ABS_TOL + SAMPLED_REL_TOL * np.abs(np.asarray(upper, dtype=np.float64))
