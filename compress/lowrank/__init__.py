"""Low-rank factorization: the `factorize` step replaces each chosen block projection W [in, out] by two
matmuls x @ A [in, r] @ B [r, out] (+ bias), by plain truncated SVD or by SVD of the weight whitened
with the calibration inputs' covariance (SVD-LLM), ranks chosen per matrix to meet a budget.

    modules.py  LowRankLinear, the config.json record, reloading a factorized checkpoint exactly
    ranks.py    the largest useful rank, budgets (params / energy) -> ranks per matrix
    methods.py  the table of methods (one module each: svd.py, whiten.py)
    api.py      factorize(model, cfg, calib)
    config.py   FactorizeConfig and its plan-time check
    step.py     the plan step
"""
