"""Statistics over seeds for the benchmark tables: 'mean ± std' cells and paired 95 % t-intervals.

A claim rests on a seed list fixed before the runs, all of it reported: the mean and the sample std
(ddof = 1) of each row, and the paired difference of two rows over the seeds both finished, with
its 95 % Student-t interval. `benchmarks/ablation.py` and `benchmarks/regime.py` use these.
"""
import numpy as np

# Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..9 (standard tables); the 95 %
# interval of a mean over n paired seeds is mean +- t_{0.975, n-1} * sd / sqrt(n).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def cell(values, digits=4):
    """'mean ± sample std (ddof = 1)' of a list of numbers ('mean' alone for one number)."""
    if len(values) < 2:
        return f"{np.mean(values):.{digits}f}" if values else "-"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def paired_interval(values, reference):
    """Paired difference over seeds: values[i] - reference[i] -> (mean, half-width of the 95 %
    t-interval; None for fewer than 2 pairs)."""
    d = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    if len(d) < 2:
        return float(d.mean()), None
    return float(d.mean()), T_975[len(d) - 1] * float(np.std(d, ddof=1)) / np.sqrt(len(d))
