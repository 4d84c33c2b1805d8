"""The pre-flash gate: results (Check, GateResult), checks (one per step, each on the loaded model
pair) and run (make_models, certify_models, run_gate, the summary)."""
