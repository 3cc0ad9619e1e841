"""Budget-driven search: the best plan for a device within a size / speed / quality budget.

    from compress import run_search            # compress.search.run.run_search
    result = run_search(load_plan("examples/search.yaml"), "runs/search")

Stages: profiles.py (sensitivity), candidates.py (sizes, speeds, knapsack), trials.py (ordinary runs
sharing their prefixes); config.py is the plan's `search:` section, report.py the outputs. This
package's __init__ imports nothing: the plan schema imports config.py without torch.
"""
