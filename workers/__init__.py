"""What runs on a Ray actor: the trial runner, memory backends and the actor itself.

Nothing here imports the planner's CLI. Workers receive ``planner.grid.TrialSpec``
and ``planner.cards.Card`` values and return ``workers.results.TrialResult``.
"""
