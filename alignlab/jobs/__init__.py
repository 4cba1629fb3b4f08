"""``alignlab train``: one run from its resolved config — the stages it needs, the method's data, the
trainer its objective's needs select, the evaluation every method shares, the summary.

The orchestration above the training engines (:mod:`alignlab.train`), below the experiment runner.
"""
