"""Task-specific helpers that are neither datasets nor rewards: answer graders (`geometry_grader`),
task evaluations (`geometry_eval`), and the like. Each module imports its heavy dependencies
(sympy, math-verify, models) lazily, so importing `vlmgrpo.tasks` costs nothing."""
