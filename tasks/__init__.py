"""Pipeline stages, one module per dvc.yaml stage, run as `python -m tasks <stage> [item]`; two more commands that
are no DVC stage (testbed_check, frontier_report). A stage imports the library and tasks/artifacts (where every
output lives), never another stage (tests/test_stages.py)."""
