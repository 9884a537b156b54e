"""Libraries the passes share: grids, target rules, the lowering plan, the evaluator, runtime
sessions."""
