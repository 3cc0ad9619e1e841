"""Weight sparsity: the `sparsify` step zeroes weights of GPT-2's block projections, unstructured or in an
N:M pattern (N weights kept of every M consecutive input weights; 2:4 is what TensorRT's sparse tensor
cores run), chosen by magnitude, Wanda or SparseGPT. The model stays a stock GPT-2 with zeros.

    pattern.py    targets, masks and measuring what a matrix holds (no calibration)
    calibrate.py  block-by-block calibration statistics (input norms, Hessians)
    methods.py    the table of methods (one module each: magnitude.py, wanda.py, sparsegpt.py)
    api.py        sparsify(model, cfg, calib)
    config.py     SparsifyConfig and its plan-time check
    step.py       the plan step
"""
