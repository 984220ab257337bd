"""Analysis: from scored runs to verdicts.

results (the results table), intervals (seeds x items, builds as blocks), decision (the rule), claims (the
paper's claims), fronts (learning-forgetting fronts), matched (forgetting at matched utility), report and
frontier_report (tables and pictures), selection (beta for a forgetting budget).
"""
