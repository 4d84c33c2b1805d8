"""Certify: bound max |f(x) - f_q(x)| over input regions, and find inputs that reach it.

certifier   per region: falsify, bound with an engine, check, name the saturating layers
settings    every tuning knob (work budgets, strategy) in one frozen object
region      input boxes
falsify     witnesses (real inputs with large errors): the certificate's lower bound
symbolic    interval (the baseline) and differential engines
relax       sound linear relaxations of clamps and their differences
cells       input-cell enumeration: the int8 side exactly on boxes with few cells
milp        the exact MILP encoding on HiGHS
split       branch and bound over the region
decision    top-1 decision certificates
"""
